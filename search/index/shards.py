"""Embedding shards: the Parquet files between the embedding stage and the index stage.

    python -m search embed SOURCE --out SHARDS_DIR [--engine local|ray]   writes them
    python -m search index SHARDS_DIR --out FAISS_DIR|milvus:...          reads them

As clip-retrieval's inference -> index, the two stages share nothing but these files, so the embedding can run
on many machines (search/index/ray_embed.py) and the index on another (FAISS, or Milvus: milvus_index.py).

Layout of SHARDS_DIR:
    shards.json                 the manifest of the last finished run (encoder, dim, source, shard names, skipped)
    shard-NNNNN-<digest>.parquet one shard: columns SHARD_COLUMNS, `vector` a fixed-size list of float32
    thumbs/                     small JPEG previews (named by the image's identity), as an index directory's

The gallery is cut into shards of `shard_size` images in source order; a shard's name is a digest of its
images' identities (path, size, mtime) and of the encoder and scorer, so a finished shard is never written
again. A run writes only the shards whose files are missing (each atomically: temporary file, then rename),
so a run killed at any moment is finished by the next; an image already embedded in an older shard (e.g. one
re-cut because an image was added before it) is copied from there, not embedded again. Shards no longer in
the plan are removed once the run has finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.types import GalleryItem, Skipped

if TYPE_CHECKING:
    import pyarrow as pa

    from models import Encoder
    from models.aesthetic import AestheticScorer
    from models.safety import SafetyFilter

log = logging.getLogger(__name__)

MANIFEST = "shards.json"
SHARD_SIZE = 1_024        # images per shard (a multiple of the batch size): ~8 MB of lite vectors
# (name, meaning): the columns of every shard, in this order
SHARD_COLUMNS = (
    ("id", "the item's id, unique within the gallery"),
    ("path", "the image file (absolute)"),
    ("key", "identity: absolute path|size|mtime (what must stay equal for the vector to be re-used)"),
    ("caption", "human description, if known"),
    ("label", "class name, if known"),
    ("vector", "L2-normalised float32 embedding"),
    ("aesthetic", "aesthetic score (higher = better), when a scorer ran"),
    ("style", "detected style (photo, sketch, doodle, painting, cartoon, lowres) for style-aware encoders"),
    ("safety", "why a safety filter flagged the image; null if not flagged or not checked"),
    ("width", "pixels, upright"),
    ("height", "pixels, upright"),
    ("bytes", "file size"),
    ("thumbnail", "preview, relative to SHARDS_DIR"),
)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its file name and the images it holds, in order."""

    name: str
    items: tuple[dict, ...]     # {"id", "path", "key", "caption", "label"} per image

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "items": list(self.items)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ShardTask:
        d = json.loads(text)
        return cls(d["name"], tuple(d["items"]))


@dataclass(frozen=True)
class ShardManifest:
    encoder: str                # encoder name, as given to the registry
    fingerprint: str            # encoder name@weights hash
    dim: int
    shards: tuple[str, ...]     # file names, in gallery order
    count: int                  # images in the shards
    scorer: str | None = None   # aesthetic scorer fingerprint, if images were scored
    source: str | None = None
    skipped: tuple[Skipped, ...] = ()
    updated: str = ""

    def write(self, out: Path) -> None:
        d = asdict(self)
        tmp = out / f"{MANIFEST}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / MANIFEST)

    @classmethod
    def read(cls, out: Path) -> ShardManifest | None:
        path = Path(out) / MANIFEST
        if not path.is_file():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        d["shards"] = tuple(d["shards"])
        d["skipped"] = tuple(Skipped(**s) for s in d.get("skipped", ()))
        return cls(**d)


@dataclass
class EmbedReport:
    written: list[str] = field(default_factory=list)   # shards written by this run
    kept: int = 0               # shards already finished (by an earlier or interrupted run)
    embedded: int = 0           # images that went through the model
    copied: int = 0             # images copied from older shards (already embedded)
    removed: int = 0            # stale shards deleted
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = f" ({self.embedded / self.seconds:.1f} images/s)" if self.embedded and self.seconds else ""
        return (f"wrote {len(self.written)} shard(s), kept {self.kept}, removed {self.removed}; embedded "
                f"{self.embedded} image(s){rate}, copied {self.copied}, skipped {len(self.skipped)} "
                f"in {self.seconds:.1f} s")


# ---------------------------------------------------------------- planning
def identity(path: str | Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def digest(text: str, n: int = 20) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def plan_shards(items: Sequence[GalleryItem], run_id: str, shard_size: int = SHARD_SIZE
                ) -> tuple[list[ShardTask], list[Skipped]]:
    """Cut the gallery into shards (source order) named by their images and `run_id` (encoder + scorer)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    rows, skipped = [], []
    for it in items:
        try:
            key = identity(it.path)
        except OSError:
            skipped.append(Skipped(str(it.path), "no such file"))
            continue
        rows.append({"id": it.id, "path": str(Path(it.path).resolve()), "key": key, "caption": it.caption,
                     "label": it.label})
    tasks = []
    for n, start in enumerate(range(0, len(rows), shard_size)):
        chunk = tuple(rows[start:start + shard_size])
        name = f"shard-{n:05d}-{digest(run_id + chr(0) + chr(0).join(r['key'] for r in chunk))}.parquet"
        tasks.append(ShardTask(name, chunk))
    return tasks, skipped


def run_id(encoder: Encoder, scorer: AestheticScorer | None, style: bool = True,
           safety: SafetyFilter | None = None) -> str:
    """What a shard's vectors, scores, styles and safety flags depend on."""
    return _run(encoder.fingerprint, scorer.fingerprint if scorer else None, style,
                safety.fingerprint if safety else None)


def _run(fingerprint: str, scorer: str | None, style: bool, safety: str | None) -> str:
    return fingerprint + (f"+{scorer}" if scorer else "") + ("" if style else "+nostyle") + (
        f"+safety:{safety}" if safety else "")


# ---------------------------------------------------------------- one shard
def schema(dim: int, meta: dict | None = None) -> pa.Schema:
    import pyarrow as pa

    types = {"vector": pa.list_(pa.float32(), dim), "aesthetic": pa.float32(), "width": pa.int32(),
             "height": pa.int32(), "bytes": pa.int64()}
    fields = [pa.field(name, types.get(name, pa.string())) for name, _ in SHARD_COLUMNS]
    return pa.schema(fields, metadata={b"visual_search": json.dumps(meta or {}).encode()})


def write_shard(path: Path, rows: list[dict], vectors: np.ndarray, meta: dict) -> None:
    """rows (one dict of SHARD_COLUMNS but `vector` per image) + their vectors -> one Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(meta["dim"])
    sch = schema(dim, meta)
    vectors = np.ascontiguousarray(vectors, np.float32).reshape(len(rows), dim)
    cols = {}
    for f in sch:
        if f.name == "vector":
            cols[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
        else:
            cols[f.name] = pa.array([r.get(f.name) for r in rows], f.type)
    table = pa.Table.from_pydict(cols, schema=sch)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_shard(path: Path) -> tuple[list[dict], np.ndarray]:
    """-> (rows without `vector`, (n, dim) float32 vectors)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    dim = table.schema.field("vector").type.list_size
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, np.float32).reshape(table.num_rows, dim)
    rows = table.drop_columns(["vector"]).to_pylist()
    return rows, vectors


def embed_shard(task: ShardTask, out: Path, encoder: Encoder, scorer: AestheticScorer | None,
                known: Callable[[str], tuple[dict, np.ndarray] | None] = lambda key: None,
                batch_size: int | None = None, style: bool = True,
                safety: SafetyFilter | None = None) -> tuple[int, int, list[Skipped]]:
    """Write shard `task` under `out`: images `known` (key -> row, vector from an older shard) are copied, the
    others embedded (decoded in threads, thumbnails written, scored, checked by `safety`; with `style`, their
    style detected, which costs a style-aware encoder ~45 % more time). -> (embedded, copied, skipped)."""
    from search.index.gallery_index import safety_flag, write_thumbnail
    from search.index.images import iter_batches

    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    found: dict[int, tuple[dict, np.ndarray]] = {}
    todo = []
    for pos, it in enumerate(task.items):
        old = known(it["key"])
        if old is not None:
            found[pos] = ({**old[0], **it}, old[1])
        else:
            todo.append(pos)
    copied, skipped = len(found), []
    info: dict[int, dict] = {}

    def on_image(i: int, im) -> None:  # decoding thread: size, thumbnail, aesthetic score, safety flag
        thumb = write_thumbnail(thumbs, task.items[todo[i]]["key"], im)
        info[i] = {"width": im.width, "height": im.height, "thumbnail": f"thumbs/{thumb.name}",
                   "aesthetic": float(scorer.score_images([im])[0]) if scorer else None,
                   "safety": safety_flag(safety, im)}

    paths = [task.items[p]["path"] for p in todo]
    for got, pixels, failed in iter_batches(paths, encoder.preprocess, batch_size or encoder.batch_size,
                                            on_image=on_image):
        if got:
            vecs = encoder.encode_image_tensors(pixels)
            styles = _styles(encoder.style_probs(pixels) if style else None, len(got))
            for i, v, style in zip(got, vecs, styles):
                it = task.items[todo[i]]
                found[todo[i]] = ({**it, **info.pop(i), "style": style, "bytes": int(it["key"].rsplit("|", 2)[1])},
                                  v)
        skipped += [Skipped(paths[i], reason) for i, reason in failed]
    order = sorted(found)
    rows = [found[p][0] for p in order]
    dim = encoder.dim
    vectors = np.stack([found[p][1] for p in order]) if order else np.zeros((0, dim), np.float32)
    meta = {"encoder": encoder.name, "fingerprint": encoder.fingerprint, "dim": dim,
            "scorer": scorer.fingerprint if scorer else None, "style": style,
            "safety": safety.fingerprint if safety else None,
            "skipped": [asdict(s) for s in skipped]}
    write_shard(out / task.name, rows, vectors, meta)
    return len(found) - copied, copied, skipped


def _styles(probs: np.ndarray | None, n: int) -> list[str | None]:
    if probs is None:
        return [None] * n
    from models.style import STYLES

    return [STYLES[int(i)] for i in np.argmax(probs, axis=1)]


def shard_skipped(path: Path) -> list[Skipped]:
    """The images a finished shard left out (recorded in its metadata)."""
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(path).metadata.get(b"visual_search", b"{}"))
    return [Skipped(**s) for s in meta.get("skipped", [])]


class OldVectors:
    """Rows and vectors of shards that are no longer in the plan (an earlier cut of the gallery), by key,
    read lazily: an image whose identity is unchanged is copied from there instead of embedded again."""

    def __init__(self, out: Path, stale: Iterable[str], run: str) -> None:
        self.out, self.files, self.run = out, [out / n for n in stale], run
        self._by_key: dict[str, tuple[dict, np.ndarray]] | None = None

    def __call__(self, key: str) -> tuple[dict, np.ndarray] | None:
        if self._by_key is None:
            self._by_key = {}
            for f in self.files:
                try:
                    rows, vectors = read_shard(f)
                except (OSError, ValueError) as e:  # a damaged leftover: its images are embedded again
                    log.warning("ignoring unreadable shard %s (%s)", f, e)
                    continue
                if _shard_run(f) != self.run:
                    continue
                self._by_key.update((r["key"], (r, v)) for r, v in zip(rows, vectors))
        return self._by_key.get(key)


def _shard_run(path: Path) -> str:
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(path).metadata.get(b"visual_search", b"{}"))
    return _run(meta.get("fingerprint", ""), meta.get("scorer"), meta.get("style", True), meta.get("safety"))


# ---------------------------------------------------------------- a run
def embed_to_shards(items: Sequence[GalleryItem], out: str | Path, encoder: str = "lite", *,
                    engine: str = "local", scorer: str | None = "auto", shard_size: int = SHARD_SIZE,
                    batch_size: int | None = None, actors: int = 2, cpus_per_actor: float = 1.0,
                    gpus_per_actor: float = 0.0, address: str | None = None, source: str | None = None,
                    skipped: Sequence[Skipped] = (), progress: bool = True, style: bool = True,
                    safety: SafetyFilter | str | None = None) -> tuple[ShardManifest, EmbedReport]:
    """Embed `items` into Parquet shards under `out`, writing only the shards that are missing.

    `engine` "local" embeds in this process; "ray" runs the missing shards on a Ray cluster (`address`: None
    starts a local one, "auto" joins the running one, "ray://HOST:PORT" a remote one), `actors` actors each
    holding one model (`cpus_per_actor`, `gpus_per_actor` each). Both write the same files. `style` False
    leaves the style column empty (the single-process indexer does not detect styles either). `safety`: a
    SafetyFilter or "on" (models/safety.py): flagged images get their reason in the safety column, and every
    index built from the shards hides them."""
    from models import get_encoder
    from models.safety import as_safety_filter
    from search.engine import make_scorer

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(encoder)
    sc = make_scorer(scorer, enc)
    sf = as_safety_filter(safety)
    run = run_id(enc, sc, style, sf)
    tasks, missing_files = plan_shards(items, run, shard_size)
    report = EmbedReport(skipped=[*skipped, *missing_files])
    names = {t.name for t in tasks}
    todo = [t for t in tasks if not (out / t.name).is_file()]
    report.kept = len(tasks) - len(todo)
    stale = sorted(f.name for f in out.glob("shard-*.parquet") if f.name not in names)
    log.info("%s: %d shard(s) planned, %d finished, %d to write (engine %s)", out, len(tasks), report.kept,
             len(todo), engine)
    if todo:
        if engine == "local":
            known = OldVectors(out, stale, run)
            from tqdm import tqdm

            for t in tqdm(todo, desc="shards", unit="shard", disable=not progress):
                n_new, n_old, _ = embed_shard(t, out, enc, sc, known, batch_size, style, sf)
                report.embedded += n_new
                report.copied += n_old
                report.written.append(t.name)
        elif engine == "ray":
            from search.index.ray_embed import RayOptions, embed_with_ray

            opts = RayOptions(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                              batch_size=batch_size, address=address)
            for name, n_new, n_old in embed_with_ray(todo, out, encoder, scorer, stale, opts, style, sf):
                report.embedded += n_new
                report.copied += n_old
                report.written.append(name)
        else:
            raise ValueError(f"unknown engine {engine!r}: local or ray")
    for t in tasks:
        report.skipped += shard_skipped(out / t.name)
    count = sum(_rows_in(out / t.name) for t in tasks)
    from datetime import datetime, timezone

    manifest = ShardManifest(enc.name, enc.fingerprint, enc.dim, tuple(t.name for t in tasks), count,
                             sc.fingerprint if sc else None, source, tuple(report.skipped),
                             datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest.write(out)
    for name in stale:
        (out / name).unlink(missing_ok=True)
        report.removed += 1
    _remove_unused_thumbs(out, tasks)
    report.seconds = time.perf_counter() - t0
    log.info("%s: %s", out, report.summary())
    return manifest, report


def _rows_in(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _remove_unused_thumbs(out: Path, tasks: Sequence[ShardTask]) -> None:
    used = {f"{digest(r['key'])}.jpg" for t in tasks for r in t.items}
    for t in (out / "thumbs").glob("*.jpg") if (out / "thumbs").is_dir() else []:
        if t.name not in used:
            t.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading a finished run
@dataclass(frozen=True)
class ShardSet:
    """A finished run's shards, read whole: rows (SHARD_COLUMNS but `vector`) and their vectors."""

    root: Path
    manifest: ShardManifest
    rows: tuple[dict, ...]
    vectors: np.ndarray


def read_shards(root: str | Path) -> ShardSet:
    root = Path(root)
    manifest = ShardManifest.read(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} has no {MANIFEST}: not a shards directory, or its embedding run has "
                                f"not finished (run `python -m search embed SOURCE --out {root}` again)")
    rows: list[dict] = []
    vectors = [np.zeros((0, manifest.dim), np.float32)]
    for name in manifest.shards:
        r, v = read_shard(root / name)
        rows += r
        vectors.append(v)
    return ShardSet(root, manifest, tuple(rows), np.concatenate(vectors))


def is_shards_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_faiss_index(shards: ShardSet, out: str | Path, spec=None):  # noqa: ANN001, ANN201
    """A FAISS index directory (search/index/gallery_index.py) from a finished embedding run: no image is
    decoded; the shards' thumbnails are copied beside it. -> GalleryIndex."""
    import shutil

    from models import get_encoder
    from search.index.gallery_index import IndexMismatchError, read_meta, write_index

    out = Path(out)
    m = shards.manifest
    encoder = get_encoder(m.encoder)
    if encoder.fingerprint != m.fingerprint:
        raise IndexMismatchError(f"{shards.root} was embedded with {m.fingerprint}, but encoder {m.encoder} is now "
                                 f"{encoder.fingerprint}: embed again")
    old = read_meta(out)
    if old is not None and old.fingerprint != m.fingerprint:
        raise IndexMismatchError(f"{out} holds vectors of {old.fingerprint}, not {m.fingerprint}: choose another "
                                 f"--out or delete it")
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    thumbs = []
    for r in shards.rows:
        thumb = r.get("thumbnail")
        if thumb and (shards.root / thumb).is_file():
            dst = out / "thumbs" / Path(thumb).name
            if not dst.is_file():
                shutil.copyfile(shards.root / thumb, dst)
            thumbs.append(f"thumbs/{dst.name}")
        else:
            thumbs.append(None)
    items = [GalleryItem(r["id"], Path(r["path"]), r.get("caption"), r.get("label"),
                         {"style": r["style"]} if r.get("style") else {},
                         size=(r["width"], r["height"]) if r.get("width") else None, bytes=r.get("bytes"),
                         aesthetic=r.get("aesthetic")) for r in shards.rows]
    return write_index(out, encoder, items, shards.vectors, spec, m.source or str(shards.root), thumbs,
                       [r.get("safety") for r in shards.rows])
