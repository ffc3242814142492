"""Example queries a visitor can try with one click: a few texts, and the images under assets/examples/
(line drawings, a painting-like and a low-res picture) listed in assets/examples/examples.json, which
assets/make_examples.py draws and writes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from search.config import PROJECT_ROOT

ASSETS_DIR = PROJECT_ROOT / "assets"
KINDS = ("text", "sketch", "painting", "lowres", "sketch+text")
TEXT_EXAMPLES = ("a cat", "a cup of coffee", "a rocket launch")


@dataclass(frozen=True)
class ExampleQuery:
    text: str | None               # text of the query, if any
    image: Path | None             # query image file, if any
    kind: str                      # one of KINDS
    caption: str = ""              # what the visitor is shown
    provenance: str = ""           # who made the image and from what (licence of any source photo)


def load_examples(assets_dir: str | Path = ASSETS_DIR) -> list[ExampleQuery]:
    """The text examples, then the image examples in the order of `assets_dir`/examples/examples.json.

    Raises ValueError for a malformed manifest and FileNotFoundError for a listed file that is missing."""
    examples = [ExampleQuery(t, None, "text", t, "") for t in TEXT_EXAMPLES]
    folder = Path(assets_dir) / "examples"
    manifest = folder / "examples.json"
    try:
        rows = json.loads(manifest.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{manifest}: not valid JSON ({e})") from e
    if not isinstance(rows, list):
        raise ValueError(f"{manifest}: expected a list of examples")
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("file"), str) or row.get("kind") not in KINDS[1:]:
            raise ValueError(f"{manifest}: entry {n} needs a 'file' and a 'kind' in {KINDS[1:]}")
        path = folder / row["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{manifest}: entry {n} lists {row['file']}, which does not exist")
        text = (row.get("text") or "").strip() or None
        examples.append(ExampleQuery(text, path, row["kind"], row.get("caption") or row["file"],
                                     row.get("provenance") or ""))
    return examples


def make_examples(items: object = None, out_dir: object = None) -> list[ExampleQuery]:
    """Deprecated (the examples no longer depend on the gallery): `load_examples()`; arguments are ignored."""
    return load_examples()
