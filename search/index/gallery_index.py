"""An index directory on disk: a gallery's vectors, FAISS index, per-image metadata and thumbnails.

Layout of INDEX_DIR:
    index.json          encoder fingerprint, index spec, dimension, count, and the current snapshot
    <snapshot>/         vectors.npy (float32, row i = item i), items.jsonl, faiss.index, skipped.jsonl,
                        folders.json (the folders of the items' paths, so a server need not read every row),
                        flagged.json (the rows a safety filter flagged: kept, never returned by a search)
    thumbs/             small JPEG previews, named by the image's identity
    partial/            vectors embedded by an unfinished run (resumed, then removed)
    index.log           what each run added, re-used, removed and skipped

Every run writes a fresh snapshot and then switches `index.json` to it with an atomic rename, so an
interrupted run (even `kill -9`) leaves the previous index intact and its work is re-used next time.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from models import Encoder

if TYPE_CHECKING:
    from models.aesthetic import AestheticScorer
    from models.query_bank import QueryBank
    from models.safety import SafetyFilter

from search.index import pixel_signature
from search.index.faiss_index import IndexSpec, VectorIndex, auto_spec
from search.index.images import iter_batches
from search.types import GalleryItem, Hit, ImageFilter, Skipped

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "index.json"
FOLDERS_FILE = "folders.json"
FLAGGED_FILE = "flagged.json"
THUMB_SIZE = 256


class IndexMismatchError(ValueError):
    """An index directory built by another encoder (its vectors mean nothing to this one)."""


@dataclass(frozen=True)
class IndexMeta:
    encoder: str              # encoder name, as given to the registry
    fingerprint: str          # encoder name@weights hash
    factory: str              # FAISS index_factory string
    params: str               # FAISS search parameters
    rerank: int               # exact re-ranking shortlist (0 = none)
    dim: int
    count: int
    snapshot: str             # sub-folder holding this version's files
    source: str | None = None
    updated: str = ""
    version: int = FORMAT_VERSION
    scorer: str | None = None  # aesthetic scorer fingerprint, if images were scored
    safety: str | None = None  # safety filter fingerprint, if images were checked (models/safety.py)

    @property
    def spec(self) -> IndexSpec:
        return IndexSpec(self.factory, self.params, self.rerank)


@dataclass
class BuildReport:
    added: int = 0            # images embedded by this run
    reused: int = 0           # images whose vectors were kept (unchanged, or embedded by an interrupted run)
    removed: int = 0          # images of the previous index no longer in the source
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    flagged: int | None = None  # items the safety filter flagged (kept, hidden from search); None: no filter

    def summary(self) -> str:
        rate = f" ({self.added / self.seconds:.1f} images/s)" if self.added and self.seconds else ""
        flagged = f", flagged {self.flagged} as unsafe (hidden)" if self.flagged is not None else ""
        lines = [f"added {self.added}{rate}, re-used {self.reused}, removed {self.removed}, "
                 f"skipped {len(self.skipped)} in {self.seconds:.1f} s{flagged}"]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def identity(path: Path) -> str:
    """What must stay equal for a file's vector to be re-used: its absolute path, size and mtime."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class Rows(Sequence[dict]):
    """The lines of items.jsonl, each parsed on first access: a search reads a few hundred of them, and
    parsing all of a 100k-item index takes ~1 s of its cold start."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: list[dict | None] = [None] * len(lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i):  # an int or a slice, as a list takes
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self._parsed[i]
        if row is None:
            row = self._parsed[i] = json.loads(self._lines[i])
        return row


class GalleryIndex:
    """A loaded index directory: items, their vectors in a FAISS index, searchable by vector.

    Rows a safety filter flagged stay in the index (with their reason in the row's "safety") but are never
    returned: `index` is then a view of the FAISS index that leaves them out (`UnflaggedIndex`), so
    `search` and anything else that searches `index` (query expansion) do not see them."""

    _direction: np.ndarray | None = None
    _rows_by_id: dict[str, int] | None = None
    _hub: tuple[QueryBank, np.ndarray] | None = None
    _views: dict[ImageFilter, GalleryIndex] | None = None  # filtered views (`where`)

    def __init__(self, root: Path, meta: IndexMeta, rows: Sequence[dict], index: VectorIndex,
                 skipped: list[Skipped], dirs: list[str] | None = None, flagged: Sequence[int] = ()) -> None:
        """`dirs`: the folders of the rows' paths, as stored (relative to `root` or absolute); None: read
        them from the rows. `flagged`: the rows a safety filter flagged (hidden from searches)."""
        self.root, self.meta, self.rows, self.skipped = root, meta, rows, skipped
        self.flagged_rows: frozenset[int] = frozenset(int(r) for r in flagged)
        self.index: VectorIndex = UnflaggedIndex(index, self.flagged_rows) if self.flagged_rows else index
        self._dirs = dirs

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, image_filter: ImageFilter) -> GalleryIndex:
        """This gallery as searches see it when they may return only images that pass `image_filter`: the
        others are hidden as flagged rows are (UnflaggedIndex). Views are kept, one per filter."""
        if not image_filter.active:
            return self
        if self._views is None:
            self._views = {}
        if image_filter not in self._views:
            view = copy.copy(self)
            view.flagged_rows = self.flagged_rows | {i for i, r in enumerate(self.rows) if not image_filter.allows(r)}
            inner = self.index.inner if isinstance(self.index, UnflaggedIndex) else self.index
            view.index = UnflaggedIndex(inner, view.flagged_rows) if view.flagged_rows else inner
            view._views = None
            self._views[image_filter] = view
        return self._views[image_filter]

    @property
    def flagged_count(self) -> int:
        """How many items the safety filter flagged (kept in the index, never returned by a search)."""
        return len(self.flagged_rows)

    def is_flagged(self, row: int) -> bool:
        return row in self.flagged_rows

    def safety(self, row: int) -> str | None:
        """Why the safety filter flagged this row, e.g. "nudity (FEMALE_BREAST_EXPOSED 0.81)"; None if not."""
        return self.rows[row].get("safety") if row in self.flagged_rows else None

    def item(self, row: int) -> GalleryItem:
        return _item_from_row(self.rows[row], self.root)

    @property
    def items(self) -> list[GalleryItem]:
        """Every item, flagged ones too (built on demand: a 100k-image index loads faster without them)."""
        return [self.item(i) for i in range(len(self.rows))]

    @property
    def visible_items(self) -> list[GalleryItem]:
        """The items a visitor may see: every item but those the safety filter flagged."""
        return [self.item(i) for i in range(len(self.rows)) if i not in self.flagged_rows]

    def folders(self) -> list[str]:
        """The top-most folders holding the gallery's files (e.g. what a web server may serve)."""
        stored = self._dirs if self._dirs is not None else _dirs_of(self.rows)
        dirs = sorted({os.path.join(self.root, d) if d else str(self.root) for d in stored} | {str(self.root)})
        top: list[str] = []
        for d in dirs:  # sorted, so a parent comes right before its sub-folders
            if not top or not (d + os.sep).startswith(top[-1].rstrip(os.sep) + os.sep):
                top.append(d)
        return top

    @classmethod
    def load(cls, root: str | Path, encoder: Encoder | None = None) -> GalleryIndex:
        """Open an index directory; with `encoder`, refuse one built by a different encoder."""
        root = Path(root)
        meta = read_meta(root)
        if meta is None:
            raise FileNotFoundError(f"{root} is not an index directory ({META_FILE} is missing); "
                                    f"build one with: python -m search index SOURCE --out {root}")
        if encoder is not None:
            check_encoder(meta, encoder, root)
        snap = root / meta.snapshot
        vectors = np.load(snap / "vectors.npy", mmap_mode="r")
        rows = Rows([line for line in (snap / "items.jsonl").read_bytes().split(b"\n") if line.strip()])
        index = VectorIndex.load(snap / "faiss.index", meta.spec, vectors)
        if not (len(rows) == len(vectors) == len(index) == meta.count):
            raise ValueError(f"{root}: index files disagree ({len(rows)} items, {len(vectors)} vectors, "
                             f"{len(index)} indexed, {meta.count} expected); rebuild it")
        skipped = [Skipped(**json.loads(line)) for line in _lines(snap / "skipped.jsonl")]
        dirs = json.loads((snap / FOLDERS_FILE).read_text()) if (snap / FOLDERS_FILE).is_file() else None
        flagged = json.loads((snap / FLAGGED_FILE).read_text()) if (snap / FLAGGED_FILE).is_file() else []
        if any(not 0 <= r < len(rows) for r in flagged):
            raise ValueError(f"{root}: {FLAGGED_FILE} names rows outside the index; rebuild it")
        # an index written before folders.json: dirs None; before flagged.json: no filter ran, no flags
        return cls(root, meta, rows, index, skipped, dirs, flagged)

    def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        """(Q, dim) unit vectors -> per query, the k best items as typed hits (never a flagged one)."""
        scores, rows = self.index.search(query_vecs, k)
        return [[Hit(self.item(r), float(s), n, int(r), float(s))
                 for n, (s, r) in enumerate(zip(srow, rrow), start=1) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def row_of(self, item_id: str) -> int | None:
        """The row of the item with this id (None if there is none)."""
        if self._rows_by_id is None:
            self._rows_by_id = {r["id"]: i for i, r in enumerate(self.rows)}
        return self._rows_by_id.get(item_id)

    def vectors(self, rows: list[int]) -> np.ndarray:
        """(len(rows), dim) float32 gallery vectors (read from the memory-mapped file)."""
        return np.asarray(self.index.vectors[np.asarray(rows, dtype=np.int64)], np.float32)

    def hubness(self, bank: QueryBank) -> np.ndarray:
        """(N, n_styles) hub scores of the gallery's images for `bank`'s query styles (computed once)."""
        if self._hub is None or self._hub[0] is not bank:
            self._hub = (bank, bank.hubness(self.index.vectors))
        return self._hub[1]

    def aesthetic_direction(self) -> np.ndarray | None:
        """Unit vector from the worst- to the best-scored images (None without aesthetic scores)."""
        if self._direction is None:
            scored = [i for i, r in enumerate(self.rows) if r.get("aesthetic") is not None]
            if len(scored) < 2:
                return None
            self._direction = aesthetic_direction(self.vectors(scored),
                                                  np.array([self.rows[i]["aesthetic"] for i in scored]))
        return self._direction


class UnflaggedIndex:
    """A VectorIndex as seen by searches when some rows are flagged: `search` asks the index for more
    neighbours than wanted and drops the flagged ones, so k rows still come back whenever the index finds
    them (an approximate index may find fewer: then rows are padded with -1, as FAISS pads). Everything
    else (`vectors`, `len`, `spec`, ...) is the wrapped index's."""

    def __init__(self, index: VectorIndex, flagged: frozenset[int]) -> None:
        self.inner = index
        self.hidden = np.zeros(len(index), bool)
        self.hidden[np.fromiter(flagged, np.int64, len(flagged))] = True
        self.n_hidden = int(self.hidden.sum())

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores, rows), each (Q, min(k, unflagged rows)); best first, no flagged row."""
        n = len(self.inner)
        k = max(0, min(k, n - self.n_hidden))
        wide = min(n, k + min(self.n_hidden, max(k, 16)))  # a few flagged among the top: one search
        while True:
            scores, rows = self.inner.search(queries, wide)
            keep = (rows >= 0) & ~self.hidden[np.clip(rows, 0, None)]
            if wide >= n or bool(np.all(keep.sum(axis=1) >= k)):
                break
            wide = min(n, wide * 4)
        out_scores = np.full((len(rows), k), -np.inf, np.float32)
        out_rows = np.full((len(rows), k), -1, np.int64)
        for i in range(len(rows)):
            sel = np.flatnonzero(keep[i])[:k]
            out_scores[i, : len(sel)], out_rows[i, : len(sel)] = scores[i, sel], rows[i, sel]
        return out_scores, out_rows


def read_meta(root: Path) -> IndexMeta | None:
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    return IndexMeta(**json.loads(path.read_text()))


def check_encoder(meta: IndexMeta, encoder: Encoder, root: Path) -> None:
    if meta.fingerprint != encoder.fingerprint:
        raise IndexMismatchError(
            f"{root} was built with encoder {meta.fingerprint}, not {encoder.fingerprint}; its vectors cannot be "
            f"searched with this encoder. Rebuild it: python -m search index SOURCE --out {root} "
            f"--encoder {encoder.name} --rebuild (or use --encoder {meta.encoder})")


def build_index(items: list[GalleryItem], out: str | Path, encoder: Encoder, *, spec: IndexSpec | None = None,
                source: str | None = None, skipped: list[Skipped] | None = None, rebuild: bool = False,
                checkpoint_seconds: float = 30.0, progress: bool = True,
                scorer: AestheticScorer | None = None,
                safety: SafetyFilter | None = None) -> tuple[GalleryIndex, BuildReport]:
    """Create or update the index directory `out` for `items`: embed only new or changed files.

    `spec` None keeps the previous index's spec if it was chosen by hand, else picks one by size.
    `skipped` are entries the source already left out (they go into the summary and the log).
    `scorer` gives each image an aesthetic score (in the decoding threads); another scorer than the
    previous run's means a rebuild.
    `safety` checks each image (in the decoding threads): a flagged item is kept, its row's "safety" says
    why, and searches never return it. Re-runs with the same filter keep the flags of unchanged images;
    with another filter, unchanged images are re-checked (not re-embedded); without one, no row is flagged.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport(skipped=list(skipped or []))
    old = read_meta(out)
    if old is not None and not rebuild:
        check_encoder(old, encoder, out)
    scorer_id = scorer.fingerprint if scorer else None
    if old is not None and old.scorer != scorer_id:
        log.info("%s: aesthetic scorer changed (%s -> %s): re-indexing every image", out, old.scorer, scorer_id)
        rebuild = True
    safety_id = safety.fingerprint if safety else None
    prev_rows = [] if old is None or rebuild else _previous_rows(out, old)
    known = _previous_vectors(out, old, prev_rows) if prev_rows else {}
    partial = out / "partial"
    resumed = _partial_vectors(partial, _partial_id(encoder, scorer, safety))  # checked by this filter
    known.update(resumed)

    ids = [_identity_or_none(it.path) for it in items]
    todo = [i for i, key in enumerate(ids) if key is not None and key not in known]
    report.skipped += [Skipped(str(items[i].path), "no such file") for i, key in enumerate(ids) if key is None]
    report.reused = sum(key is not None and key in known for key in ids)
    if safety is not None and prev_rows and old.safety != safety_id:  # kept images, not checked by this filter
        recheck = [i for i, key in enumerate(ids) if key is not None and key in known and key not in resumed]
        _recheck_safety(items, ids, recheck, known, safety, progress, report)
    elif safety is None:
        dropped = sum(info.get("safety") is not None for _, info in known.values())
        if dropped:
            log.warning("%s: indexing without a safety filter: %d flagged image(s) of the previous run are no "
                        "longer hidden", out, dropped)
        for _, info in known.values():
            info["safety"] = None
    fresh = _embed(items, ids, todo, encoder, out, partial, checkpoint_seconds, progress, report, scorer, safety)
    known.update(fresh)
    report.added = len(fresh)

    keep = [i for i, key in enumerate(ids) if key in known]
    report.removed = len({r["key"] for r in prev_rows} - {ids[i] for i in keep})
    rows = [_item_row(items[i], ids[i], known[ids[i]][1], out) for i in keep]
    if safety is not None:
        report.flagged = sum(r["safety"] is not None for r in rows)
    if spec is None:
        spec = old.spec if old is not None and not _is_auto(old) else auto_spec(len(keep), encoder.dim)
    if (old is not None and not rebuild and spec == old.spec and old.safety == safety_id
            and rows == prev_rows):
        index = GalleryIndex.load(out, encoder)  # nothing changed: keep the current snapshot
    else:
        vectors = np.stack([known[ids[i]][0] for i in keep]) if keep else np.zeros((0, encoder.dim), np.float32)
        index = _commit(out, encoder, spec, vectors, rows, report.skipped, source, old, scorer_id, safety_id)
    shutil.rmtree(partial, ignore_errors=True)
    report.seconds = time.perf_counter() - t0
    log.info("%s: %s", out, report.summary().splitlines()[0])
    _log_run(out, report)
    return index, report


def write_index(out: str | Path, encoder: Encoder, items: list[GalleryItem], vectors: np.ndarray,
                spec: IndexSpec | None = None, source: str | None = None,
                thumbnails: Sequence[str | None] | None = None,
                flags: Sequence[str | None] | None = None) -> GalleryIndex:
    """An index directory from vectors computed elsewhere (row i = items[i]), e.g. by a separate
    inference stage; no images are decoded, so items carry no thumbnails unless a later run adds them
    (or `thumbnails` names each item's preview already under `out`, e.g. "thumbs/NAME.jpg"). `flags`: why a
    safety filter flagged each item (None: not flagged), as the embedding stage found."""
    out = Path(out)
    if vectors.shape != (len(items), encoder.dim):
        raise ValueError(f"expected vectors of shape ({len(items)}, {encoder.dim}), got {vectors.shape}")
    out.mkdir(parents=True, exist_ok=True)
    thumbnails = thumbnails or [None] * len(items)
    rows = [_item_row(it, identity(it.path), {"width": it.size[0] if it.size else None,
                                             "height": it.size[1] if it.size else None, "thumbnail": thumb,
                                             "aesthetic": it.aesthetic, "safety": flag}, out)
            for it, thumb, flag in zip(items, thumbnails, flags or [None] * len(items))]
    return _commit(out, encoder, spec or auto_spec(len(items), encoder.dim), vectors, rows, [], source,
                   read_meta(out), None, None)


# ---------------------------------------------------------------- embedding with checkpoints
def _embed(items: list[GalleryItem], ids: list[str | None], todo: list[int], encoder: Encoder, out: Path,
           partial: Path, checkpoint_seconds: float, progress: bool, report: BuildReport,
           scorer: AestheticScorer | None = None,
           safety: SafetyFilter | None = None) -> dict[str, tuple[np.ndarray, dict]]:
    """Embed items[todo]; every `checkpoint_seconds` the vectors so far go to `partial/` (resumable)."""
    fresh: dict[str, tuple[np.ndarray, dict]] = {}
    if not todo:
        return fresh
    thumbs = out / "thumbs"
    thumbs.mkdir(exist_ok=True)
    info: dict[int, dict] = {}

    def on_image(pos: int, im) -> None:  # decoding thread: remember the size, write the thumbnail, check
        thumb = write_thumbnail(thumbs, ids[todo[pos]], im)
        info[pos] = {"width": im.width, "height": im.height, "thumbnail": thumb.relative_to(out).as_posix(),
                     "aesthetic": float(scorer.score_images([im])[0]) if scorer else None,
                     "safety": safety_flag(safety, im), "pixels": pixel_signature.encode(pixel_signature.signature(im))}

    pending: list[tuple[str, np.ndarray, dict]] = []
    last = time.monotonic()
    paths = [items[i].path for i in todo]
    with tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress) as bar:
        for pos, pixels, failed in iter_batches(paths, encoder.preprocess, encoder.batch_size, on_image=on_image):
            if pos:
                vecs = encoder.encode_image_tensors(pixels)
                pending += [(ids[todo[p]], v, info.pop(p)) for p, v in zip(pos, vecs)]
            report.skipped += [Skipped(str(paths[p]), reason) for p, reason in failed]
            bar.update(len(pos) + len(failed))
            if pending and time.monotonic() - last >= checkpoint_seconds:
                _write_partial(partial, _partial_id(encoder, scorer, safety), pending)
                fresh.update((k, (v, m)) for k, v, m in pending)
                pending, last = [], time.monotonic()
    fresh.update((k, (v, m)) for k, v, m in pending)
    return fresh


def write_thumbnail(thumbs: Path, key: str, im) -> Path:  # noqa: ANN001 (a PIL image)
    """The image's JPEG thumbnail in `thumbs`, named by the digest of its identity `key` (written once, atomically)."""
    thumb = thumbs / f"{_digest(key)}.jpg"
    if not thumb.is_file():
        small = im.copy()
        small.thumbnail((THUMB_SIZE, THUMB_SIZE))
        tmp = thumb.with_name(f"{thumb.stem}.{uuid.uuid4().hex}.tmp")
        small.save(tmp, "JPEG", quality=85)
        os.replace(tmp, thumb)
    return thumb


def _partial_id(encoder: Encoder, scorer: AestheticScorer | None, safety: SafetyFilter | None = None) -> str:
    """What checkpointed vectors, scores and safety flags depend on."""
    return encoder.fingerprint + (f"+{scorer.fingerprint}" if scorer else "") + (
        f"+safety:{safety.fingerprint}" if safety else "")


def safety_flag(safety: SafetyFilter | None, im) -> str | None:
    """A row's "safety": None (not flagged, or no filter) or why the filter flagged the image."""
    return safety.check(im).reason if safety is not None else None


def _recheck_safety(items: list[GalleryItem], ids: list[str | None], rows: list[int],
                    known: dict[str, tuple[np.ndarray, dict]], safety: SafetyFilter, progress: bool,
                    report: BuildReport) -> None:
    """Check kept images with a filter that did not check them (their vectors stay): known[key]'s
    "safety" is set; an image that can no longer be decoded is left out (skipped)."""
    from search.index.images import ImageLoadError, load_image

    def check(i: int) -> tuple[int, str | None, str | None]:
        try:
            return i, safety_flag(safety, load_image(items[i].path)), None
        except ImageLoadError as e:
            return i, None, e.reason

    if not rows:
        return
    log.info("safety filter changed (%s): checking %d kept image(s)", safety.fingerprint, len(rows))
    with ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(rows), desc="safety check", unit="img", disable=not progress) as bar:
        for i, reason, failed in pool.map(check, rows):
            if failed is None:
                known[ids[i]][1]["safety"] = reason
            else:
                known.pop(ids[i])
                report.reused -= 1
                report.skipped.append(Skipped(str(items[i].path), failed))
            bar.update(1)


def _write_partial(partial: Path, fingerprint: str, pending: list[tuple[str, np.ndarray, dict]]) -> None:
    partial.mkdir(exist_ok=True)
    name = f"{time.time_ns()}"
    tmp = partial / f"{name}.tmp.npz"
    np.savez(tmp, keys=np.array([k for k, _, _ in pending]), vectors=np.stack([v for _, v, _ in pending]),
             info=np.array([json.dumps(m) for _, _, m in pending]), fingerprint=np.array(fingerprint))
    os.replace(tmp, partial / f"{name}.npz")


def _partial_vectors(partial: Path, fingerprint: str) -> dict[str, tuple[np.ndarray, dict]]:
    found = {}
    for f in sorted(partial.glob("*.npz")) if partial.is_dir() else []:
        if f.name.endswith(".tmp.npz"):
            continue
        try:
            z = np.load(f)
            if str(z["fingerprint"]) != fingerprint:
                continue
            found.update((k, (v, json.loads(m))) for k, v, m in zip(z["keys"].tolist(), z["vectors"], z["info"]))
        except (OSError, ValueError, KeyError) as e:  # a checkpoint cut short: redo its images
            log.warning("ignoring unreadable checkpoint %s (%s)", f, e)
    if found:
        log.info("resuming: %d images embedded by an interrupted run", len(found))
    return found


# ---------------------------------------------------------------- snapshots
def _previous_vectors(out: Path, meta: IndexMeta, rows: list[dict]) -> dict[str, tuple[np.ndarray, dict]]:
    vectors = np.load(out / meta.snapshot / "vectors.npy", mmap_mode="r")
    keys = ("width", "height", "thumbnail", "aesthetic", "safety", "pixels")  # what embedding an image wrote
    return {r["key"]: (v, {k: r[k] for k in keys if k in r}) for r, v in zip(rows, vectors)}


def _previous_rows(out: Path, meta: IndexMeta) -> list[dict]:
    return [json.loads(line) for line in _lines(out / meta.snapshot / "items.jsonl")]


def _is_auto(meta: IndexMeta) -> bool:
    return meta.spec == auto_spec(meta.count, meta.dim)


def _commit(out: Path, encoder: Encoder, spec: IndexSpec, vectors: np.ndarray, rows: list[dict],
            skipped: list[Skipped], source: str | None, old: IndexMeta | None, scorer: str | None,
            safety: str | None) -> GalleryIndex:
    """Write a new snapshot, then point index.json at it (atomic rename), then drop older snapshots."""
    snapshot = f"snapshot-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    snap = out / snapshot
    snap.mkdir()
    np.save(snap / "vectors.npy", vectors.astype(np.float32))
    _write_lines(snap / "items.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    _write_lines(snap / "skipped.jsonl", [json.dumps(asdict(s), ensure_ascii=False) for s in skipped])
    (snap / FOLDERS_FILE).write_text(json.dumps(_dirs_of(rows), ensure_ascii=False) + "\n", encoding="utf-8")
    flagged = [i for i, r in enumerate(rows) if r.get("safety") is not None]
    (snap / FLAGGED_FILE).write_text(json.dumps(flagged) + "\n", encoding="utf-8")
    index = VectorIndex.build(vectors.astype(np.float32), spec) if len(vectors) else VectorIndex(encoder.dim, spec)
    index.save(snap / "faiss.index")
    meta = IndexMeta(encoder.name, encoder.fingerprint, spec.factory, spec.params, spec.rerank, encoder.dim,
                     len(rows), snapshot, source or (old.source if old else None),
                     datetime.now(timezone.utc).isoformat(timespec="seconds"), scorer=scorer, safety=safety)
    _fsync_dir(snap)
    tmp = out / f"{META_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    os.replace(tmp, out / META_FILE)
    for d in out.glob("snapshot-*"):
        if d.name != snapshot:
            shutil.rmtree(d, ignore_errors=True)
    used = {r["thumbnail"] for r in rows}
    for t in (out / "thumbs").glob("*") if (out / "thumbs").is_dir() else []:
        if f"thumbs/{t.name}" not in used:
            t.unlink(missing_ok=True)
    return GalleryIndex.load(out, encoder)


def _fsync_dir(snap: Path) -> None:
    """Flush the snapshot's files to disk before index.json points at them."""
    for f in snap.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _item_row(item: GalleryItem, key: str, info: dict, out: Path) -> dict:
    return {"id": item.id, "path": _relative_to(item.path, out), "key": key,
            "bytes": int(key.rsplit("|", 2)[1]), "aesthetic": None, "safety": None, **info, "caption": item.caption,
            "label": item.label, **({"extra": item.extra} if item.extra else {})}


def _item_from_row(row: dict, root: Path) -> GalleryItem:
    path = Path(row["path"])
    return GalleryItem(row["id"], path if path.is_absolute() else root / path, row.get("caption"), row.get("label"),
                       row.get("extra") or {}, size=(row["width"], row["height"]) if row["width"] else None,
                       bytes=row["bytes"], thumbnail=root / row["thumbnail"] if row["thumbnail"] else None,
                       aesthetic=row.get("aesthetic"))


def _dirs_of(rows: Sequence[dict]) -> list[str]:
    """The distinct folders of the rows' paths, as stored: relative to the index directory or absolute."""
    return sorted({os.path.dirname(r["path"]) for r in rows})


def _relative_to(path: Path, root: Path) -> str:
    """Paths inside the index directory (extracted zips) are stored relative, so the folder can move."""
    path, root = Path(path).resolve(), root.resolve()
    return path.relative_to(root).as_posix() if root in path.parents else str(path)


def _identity_or_none(path: Path) -> str | None:
    try:
        return identity(path)
    except OSError:
        return None


def _lines(path: Path) -> list[str]:
    """Non-blank lines, split at "\\n" only: json.dumps leaves U+2028 and U+0085 in strings unescaped, and
    str.splitlines() would cut a row at them."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()] if path.is_file() else []


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _log_run(out: Path, report: BuildReport) -> None:
    with open(out / "index.log", "a", encoding="utf-8") as f:
        f.write(f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n{report.summary()}\n")


def aesthetic_direction(vectors: np.ndarray, scores: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Unit vector from the gallery's worst-scored `share` of images to its best-scored share."""
    order = np.argsort(scores)
    n = max(1, int(len(order) * share))
    d = vectors[order[-n:]].mean(0) - vectors[order[:n]].mean(0)
    return (d / (np.linalg.norm(d) + 1e-12)).astype(np.float32)
