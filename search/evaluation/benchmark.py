"""Reading a benchmark folder: `gallery.jsonl` + `queries.jsonl`, paths relative to the folder.

Gallery rows: `id`, `path`, optional `label`, `captions`/`caption`, `style`.
Query rows: `id`, `style`, `text` or `path`, `relevant` (gallery ids).
Bad rows are collected as `Problem`s (file, line, reason) and skipped, never raised.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from search.types import GalleryItem


@dataclass(frozen=True)
class Problem:
    file: str       # "gallery.jsonl" or "queries.jsonl"
    line: int       # 1-based line number
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class BenchQuery:
    id: str
    style: str                # text | sketch | painting | cartoon | lowres | ...
    text: str | None          # a text query, or
    path: Path | None         # an image query
    relevant: frozenset[str]  # gallery ids that count as hits
    line: int                 # line in queries.jsonl, for error reports


@dataclass
class Benchmark:
    root: Path
    gallery: list[GalleryItem]
    gallery_lines: list[int]
    queries: list[BenchQuery]
    problems: list[Problem]

    @property
    def name(self) -> str:
        return self.root.resolve().name


def _rows(path: Path, problems: list[Problem]):
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            yield n, row
        except ValueError as e:
            problems.append(Problem(path.name, n, f"invalid JSON ({e})"))


def load_benchmark(root: str | Path) -> Benchmark:
    root = Path(root)
    for name in ("gallery.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root} is not a benchmark folder: {name} is missing")
    problems: list[Problem] = []
    gallery, lines, seen = [], [], set()
    for n, row in _rows(root / "gallery.jsonl", problems):
        gid, rel = row.get("id"), row.get("path")
        if not isinstance(gid, str) or not isinstance(rel, str):
            problems.append(Problem("gallery.jsonl", n, "needs string fields 'id' and 'path'"))
        elif gid in seen:
            problems.append(Problem("gallery.jsonl", n, f"duplicate id {gid!r}"))
        elif not (root / rel).is_file():
            problems.append(Problem("gallery.jsonl", n, f"image {rel} not found"))
        else:
            seen.add(gid)
            captions = row.get("captions") or ([row["caption"]] if row.get("caption") else [])
            extra = {k: v for k, v in row.items() if k not in ("id", "path", "caption", "captions", "label")}
            gallery.append(GalleryItem(gid, root / rel, captions[0] if captions else None, row.get("label"), extra))
            lines.append(n)
    queries = []
    for n, row in _rows(root / "queries.jsonl", problems):
        qid, text, rel, relevant = row.get("id"), row.get("text"), row.get("path"), row.get("relevant")
        if not isinstance(qid, str):
            problems.append(Problem("queries.jsonl", n, "needs a string field 'id'"))
        elif (text is None) == (rel is None):
            problems.append(Problem("queries.jsonl", n, "needs exactly one of 'text' or 'path'"))
        elif not isinstance(relevant, list) or not relevant:
            problems.append(Problem("queries.jsonl", n, "needs a non-empty list 'relevant'"))
        elif rel is not None and not (root / rel).is_file():
            problems.append(Problem("queries.jsonl", n, f"image {rel} not found"))
        else:
            queries.append(BenchQuery(qid, str(row.get("style") or ("text" if text is not None else "image")),
                                      text, root / rel if rel else None, frozenset(map(str, relevant)), n))
    return Benchmark(root, gallery, lines, queries, problems)
