"""The only module that knows Milvus: a gallery's vectors and metadata in a Milvus collection.

    milvus:PATH.db                  Milvus Lite: embedded, one file, no server (pip install milvus-lite)
    milvus://HOST:PORT/COLLECTION   a Milvus standalone or distributed cluster (sharded, replicated)

The same `pymilvus.MilvusClient` code serves both. One row per image: `row` (int64 primary key, the image's row
number, as a FAISS id), its metadata as fields (id, path, key, caption, label, aesthetic, style, safety,
flagged, width, height, bytes, thumbnail) and `vector` (FLOAT_VECTOR, inner product = cosine on unit
vectors), so a filter such as `style == "photo" and aesthetic > 0.5` runs inside the database.

Build (`build_milvus`) reads the embedding shards (search/index/shards.py) and is incremental: rows whose
identity (`key`: path, size, mtime) is already in the collection are kept, new ones inserted, gone ones
deleted, so a re-run adds only new or changed images. Index types (FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW)
stay a setting (`MilvusSpec`), with a default chosen by size (`auto_milvus_spec`). What the collection was
built with (encoder, dimension, index, the folder holding thumbnails) is kept in a collection property.

Serving (`open_gallery`) gives a `GalleryIndex` whose `index` searches Milvus with the VectorIndex contract,
`search(queries, k) -> (scores, rows)`, plus an optional filter expression (`MilvusGallery.filtered`).
pymilvus is imported lazily: the default app (FAISS) never loads it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.index.faiss_index import EXACT_MAX
from search.index.gallery_index import GalleryIndex, IndexMeta, IndexMismatchError
from search.types import GalleryItem, ImageFilter

if TYPE_CHECKING:
    from models import Encoder
    from search.index.shards import ShardSet

log = logging.getLogger(__name__)

PREFIX = "milvus:"
DEFAULT_COLLECTION = "gallery"
META_PROPERTY = "visual_search.meta"
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")
# Milvus Lite (3.2: a Python engine over FAISS) accepts these types but cannot build them: mapped, for Lite only
LITE_UNSUPPORTED = {"IVF_PQ": "IVF_SQ8"}
HNSW_MAX = 10_000_000      # past this, the default index is IVF_SQ8 (1 byte per dimension, no graph)
INSERT_BATCH = 1_000
# metadata fields returned with each hit (everything but the vector)
ROW_FIELDS = ("id", "path", "key", "caption", "label", "aesthetic", "style", "safety", "flagged", "width",
              "height", "bytes", "thumbnail")


def is_milvus(spec: str | Path | None) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class MilvusTarget:
    """Where a collection lives: a Milvus Lite file or a server, and the collection's name."""

    uri: str                        # PATH.db (absolute) or http://HOST:PORT
    collection: str = DEFAULT_COLLECTION

    @classmethod
    def parse(cls, spec: str) -> MilvusTarget:
        """milvus:PATH.db[#COLLECTION] or milvus://HOST:PORT/COLLECTION."""
        if not is_milvus(spec):
            raise ValueError(f"not a Milvus index: {spec!r} (milvus:PATH.db or milvus://HOST:PORT/COLLECTION)")
        rest = spec[len(PREFIX):]
        if rest.startswith("//"):
            host, _, collection = rest[2:].partition("/")
            if not host:
                raise ValueError(f"{spec!r}: no host (milvus://HOST:PORT/COLLECTION)")
            return cls(f"http://{host}", collection.strip("/") or DEFAULT_COLLECTION)
        path, _, collection = rest.partition("#")
        if not path.endswith(".db"):
            raise ValueError(f"{spec!r}: a Milvus Lite file ends in .db (milvus:PATH.db)")
        return cls(str(Path(path).expanduser().resolve()), collection or DEFAULT_COLLECTION)

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    def __str__(self) -> str:
        return f"{PREFIX}{self.uri}#{self.collection}" if self.lite else \
            f"{PREFIX}//{self.uri.split('://', 1)[1]}/{self.collection}"


@dataclass(frozen=True)
class MilvusSpec:
    """A Milvus vector index: its type, build parameters and search parameters (JSON objects)."""

    index_type: str = "FLAT"
    build: str = "{}"               # e.g. {"M": 16, "efConstruction": 200}
    search: str = "{}"              # e.g. {"ef": 128}

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown Milvus index type {self.index_type!r}: one of {', '.join(INDEX_TYPES)}")

    @property
    def exact(self) -> bool:
        return self.index_type == "FLAT"


def milvus_spec(index_type: str, n: int, dim: int) -> MilvusSpec:
    """`index_type` with parameters for `n` vectors of size `dim` (IVF: ~4 sqrt(n) lists, 32 probed)."""
    nlist = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1))))))
    nprobe = min(nlist, 32)
    if index_type == "FLAT":
        return MilvusSpec("FLAT")
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        return MilvusSpec(index_type, json.dumps({"nlist": nlist}), json.dumps({"nprobe": nprobe}))
    if index_type == "IVF_PQ":  # m sub-vectors of ~8 dimensions, 8 bits each: dim/8 bytes per vector
        m = _divisor_near(dim, max(1, dim // 8))
        return MilvusSpec("IVF_PQ", json.dumps({"nlist": nlist, "m": m, "nbits": 8}), json.dumps({"nprobe": nprobe}))
    if index_type == "HNSW":
        return MilvusSpec("HNSW", json.dumps({"M": 16, "efConstruction": 200}), json.dumps({"ef": 128}))
    return MilvusSpec(index_type)  # raises


def auto_milvus_spec(n: int, dim: int) -> MilvusSpec:
    """The default index for `n` vectors: exact up to EXACT_MAX (as FAISS), HNSW up to HNSW_MAX, then IVF_SQ8."""
    kind = "FLAT" if n <= EXACT_MAX else "HNSW" if n <= HNSW_MAX else "IVF_SQ8"
    return milvus_spec(kind, n, dim)


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


def connect(target: MilvusTarget):  # noqa: ANN201 (pymilvus is imported here only)
    """A MilvusClient for `target` (a Milvus Lite file's folder is created)."""
    from pymilvus import MilvusClient

    # query iterators ask the server for a timestamp Milvus Lite does not implement: the client falls back to its
    # own (fine), but the embedded server logs a traceback and the client a warning for each iterator
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    if target.lite:
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(target.uri)


def release(target: MilvusTarget, client=None) -> None:  # noqa: ANN001
    """Close `client`; for Milvus Lite, stop the embedded server this process runs for the file."""
    if client is not None:
        client.close()
    if target.lite:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(target.uri)


def read_collection_meta(client, collection: str) -> dict | None:
    if not client.has_collection(collection):
        return None
    props = client.describe_collection(collection).get("properties") or {}
    return json.loads(props[META_PROPERTY]) if META_PROPERTY in props else None


# ---------------------------------------------------------------- building from shards
@dataclass
class MilvusReport:
    added: int = 0               # rows inserted (new or changed images)
    kept: int = 0                # rows already there
    updated: int = 0             # rows whose metadata changed (caption, label, ...) but not their image
    removed: int = 0             # rows of images no longer in the shards
    count: int = 0
    index: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"added {self.added}, kept {self.kept}, updated {self.updated}, removed {self.removed}: "
                f"{self.count} rows, index {self.index}, in {self.seconds:.1f} s")


def _schema(client, dim: int):  # noqa: ANN202
    from pymilvus import DataType

    s = client.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("row", DataType.INT64, is_primary=True)
    s.add_field("id", DataType.VARCHAR, max_length=1024)
    s.add_field("path", DataType.VARCHAR, max_length=4096)
    s.add_field("key", DataType.VARCHAR, max_length=4200)
    s.add_field("caption", DataType.VARCHAR, max_length=8192, nullable=True)
    s.add_field("label", DataType.VARCHAR, max_length=1024, nullable=True)
    s.add_field("aesthetic", DataType.FLOAT, nullable=True)
    s.add_field("style", DataType.VARCHAR, max_length=32, nullable=True)
    s.add_field("safety", DataType.VARCHAR, max_length=1024, nullable=True)
    s.add_field("flagged", DataType.BOOL)
    s.add_field("width", DataType.INT32, nullable=True)
    s.add_field("height", DataType.INT32, nullable=True)
    s.add_field("bytes", DataType.INT64, nullable=True)
    s.add_field("thumbnail", DataType.VARCHAR, max_length=4096, nullable=True)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    return s


def _index_params(client, spec: MilvusSpec):  # noqa: ANN202
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type=spec.index_type, metric_type="IP",
                     params=json.loads(spec.build))
    return params


def _existing(client, collection: str, fields: Sequence[str]) -> Iterator[dict]:
    it = client.query_iterator(collection, batch_size=4096, filter="", output_fields=list(fields))
    try:
        while batch := it.next():
            yield from batch
    finally:
        it.close()


def build_milvus(shards: ShardSet, target: MilvusTarget | str, index_type: str | None = None,
                 rebuild: bool = False) -> tuple[MilvusGallery, MilvusReport]:
    """Create or update `target`'s collection from a finished embedding run: insert only new or changed
    images, delete gone ones. `index_type` None keeps the collection's index if it was chosen by hand, else
    picks one by size; another type than the collection's rebuilds the vector index (not the rows)."""
    t0 = time.perf_counter()
    target = MilvusTarget.parse(target) if isinstance(target, str) else target
    m = shards.manifest
    client = connect(target)
    name = target.collection
    old = read_collection_meta(client, name)
    if old is not None and not rebuild and old["fingerprint"] != m.fingerprint:
        raise IndexMismatchError(f"{target} holds vectors of encoder {old['fingerprint']}, not {m.fingerprint}; "
                                 f"rebuild it with --rebuild (or embed with --encoder {old['encoder']})")
    if old is None and client.has_collection(name) and not rebuild:
        raise ValueError(f"{target}: collection {name!r} exists but was not built by visual-search; pass "
                         f"--rebuild to replace it, or choose another collection")
    if rebuild and client.has_collection(name):
        client.drop_collection(name)
        old = None
    n = len(shards.rows)
    auto = old is None or old.get("auto", True)
    if index_type and index_type.upper() in LITE_UNSUPPORTED and target.lite:
        log.warning("%s: Milvus Lite has no %s index; using %s (a Milvus server builds %s)", target,
                    index_type.upper(), LITE_UNSUPPORTED[index_type.upper()], index_type.upper())
        index_type = LITE_UNSUPPORTED[index_type.upper()]
    if index_type:
        spec, auto = milvus_spec(index_type.upper(), n, m.dim), False
    elif old is not None and not auto:
        spec = MilvusSpec(old["index_type"], old["build"], old["search"])
    else:
        spec = auto_milvus_spec(n, m.dim)
    if old is None:
        client.create_collection(name, schema=_schema(client, m.dim), index_params=_index_params(client, spec))
    client.load_collection(name)  # a collection is released when its (Milvus Lite) server restarts

    report = MilvusReport()
    have = {r["key"]: r for r in _existing(client, name, ("key", "id", "path", "caption", "label"))}
    next_row = max((int(r["row"]) for r in have.values()), default=-1) + 1
    wanted = {r["key"] for r in shards.rows}
    gone = [int(r["row"]) for k, r in have.items() if k not in wanted]
    for start in range(0, len(gone), INSERT_BATCH):
        client.delete(name, filter=f"row in {gone[start:start + INSERT_BATCH]}")
    report.removed = len(gone)
    root = shards.root.resolve()
    batch: list[dict] = []
    for r, v in zip(shards.rows, shards.vectors):
        prev = have.get(r["key"])
        if prev is not None:
            if all(prev.get(f) == r.get(f) for f in ("id", "path", "caption", "label")):
                report.kept += 1
                continue
            row, report.updated = int(prev["row"]), report.updated + 1
        else:
            row, next_row, report.added = next_row, next_row + 1, report.added + 1
        batch.append(_entity(row, r, v, root))
        if len(batch) >= INSERT_BATCH:
            client.upsert(name, batch)
            batch = []
    if batch:
        client.upsert(name, batch)
    client.flush(name)
    if old is not None and (old["index_type"], old["build"]) != (spec.index_type, spec.build):
        log.info("%s: re-indexing vectors: %s -> %s", target, old["index_type"], spec.index_type)
        client.release_collection(name)
        client.drop_index(name, "vector")
        client.create_index(name, _index_params(client, spec))
    client.load_collection(name)
    meta = {"encoder": m.encoder, "fingerprint": m.fingerprint, "dim": m.dim, "index_type": spec.index_type,
            "build": spec.build, "search": spec.search, "auto": auto, "root": str(root), "source": m.source,
            "scorer": m.scorer, "size": next_row, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    client.alter_collection_properties(name, properties={META_PROPERTY: json.dumps(meta)})
    report.count = len(have) - len(gone) + report.added
    report.index = spec.index_type
    report.seconds = time.perf_counter() - t0
    log.info("%s: %s", target, report.summary())
    return open_gallery(target, client=client), report


def _entity(row: int, r: dict, v: np.ndarray, root: Path) -> dict:
    thumb = r.get("thumbnail")
    return {"row": row, "id": r["id"], "path": r["path"], "key": r["key"], "caption": r.get("caption"),
            "label": r.get("label"), "aesthetic": r.get("aesthetic"), "style": r.get("style"),
            "safety": r.get("safety"), "flagged": r.get("safety") is not None,
            "width": r.get("width"), "height": r.get("height"), "bytes": r.get("bytes"),
            "thumbnail": str(root / thumb) if thumb else None, "vector": np.asarray(v, np.float32).tolist()}


# ---------------------------------------------------------------- serving
class MilvusRows(Sequence[dict]):
    """The collection's rows by row number, fetched on demand and remembered (hits fill it as they come)."""

    def __init__(self, client, collection: str, size: int) -> None:
        self.client, self.collection, self.size = client, collection, size
        self.cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range ({len(self)} rows in {self.collection})")
        if i not in self.cache:
            self.fetch([i])
        return self.cache.get(i, {})  # {}: a removed image's row number (a gap), as in __iter__

    def fetch(self, rows: Sequence[int]) -> None:
        missing = [int(r) for r in rows if int(r) not in self.cache and r >= 0]
        if missing:
            for r in self.client.get(self.collection, ids=missing, output_fields=list(ROW_FIELDS)):
                self.remember(r)

    def remember(self, r: dict) -> None:
        self.cache[int(r["row"])] = {f: r.get(f) for f in ("row", *ROW_FIELDS)}

    def __iter__(self) -> Iterator[dict]:
        """Every row in row order, read in batches; where an image was removed (a gap in the row numbers), an
        empty dict, so that the i-th row is row i as for an index directory's rows."""
        if len(self.cache) < self.size:
            for r in _existing(self.client, self.collection, ROW_FIELDS):
                self.remember(r)
        for i in range(self.size):
            yield self.cache.get(i, {})


class MilvusVectors:
    """The `vectors` of a VectorIndex (row i = the vector of row i), read from the collection: `vectors[rows]`
    fetches those rows (zeros where there is none); a whole-matrix use (`np.asarray(vectors)`, slices) reads
    every vector once and keeps them (fine for a demo gallery; at scale only `vectors[rows]` is cheap)."""

    def __init__(self, client, collection: str, dim: int, size: int) -> None:
        self.client, self.collection, self.dim, self.size = client, collection, dim, size
        self._all: np.ndarray | None = None
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.size

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.dim)

    @property
    def ndim(self) -> int:
        return 2

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001
        out = self.all()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index) -> np.ndarray:  # noqa: ANN001
        if isinstance(index, tuple):  # vectors[rows, cols]
            first, rest = index[0], index[1:]
            return self[first][(slice(None), *rest)] if not np.isscalar(first) else self[first][rest]
        if isinstance(index, slice):
            return self.all()[index]
        if np.isscalar(index):
            return self._rows(np.array([int(index)]))[0]
        return self._rows(np.asarray(index, np.int64))

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(rows)
        if self._all is not None:
            return self._all[rows]
        out = np.zeros((len(rows), self.dim), np.float32)
        wanted = sorted({int(r) for r in rows if r >= 0})
        found = {}
        for start in range(0, len(wanted), INSERT_BATCH):
            for r in self.client.get(self.collection, ids=wanted[start:start + INSERT_BATCH],
                                     output_fields=["vector"]):
                found[int(r["row"])] = np.asarray(r["vector"], np.float32)
        for i, r in enumerate(rows):
            if int(r) in found:
                out[i] = found[int(r)]
        return out

    def all(self) -> np.ndarray:
        if self._all is None:
            out = np.zeros((self.size, self.dim), np.float32)
            for r in _existing(self.client, self.collection, ("vector",)):
                out[int(r["row"])] = r["vector"]
            self._all = out
        return self._all


class MilvusIndex:
    """The VectorIndex contract over a collection: search(queries, k) -> (scores, rows), best first, padded
    with -1; rows a safety filter flagged are never returned; `filter` narrows every search (a Milvus
    boolean expression over the metadata fields, e.g. 'style == "photo" and aesthetic > 0.5')."""

    def __init__(self, client, collection: str, spec: MilvusSpec, dim: int, count: int, size: int,
                 rows: MilvusRows | None = None, filter: str | None = None, hidden: int = 0) -> None:
        self.client, self.collection, self.spec, self.dim = client, collection, spec, dim
        self.count, self.rows, self.filter, self.hidden = count, rows, filter, hidden  # hidden: flagged rows
        self.vectors = MilvusVectors(client, collection, dim, size)

    def __len__(self) -> int:
        return self.count

    def expression(self) -> str:
        """The filter of every search ("" none): flagged rows out (if any), and `filter`."""
        parts = (["flagged == false"] if self.hidden else []) + ([f"({self.filter})"] if self.filter else [])
        return " and ".join(parts)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {queries.shape}")
        k = max(0, min(k, self.count - self.hidden, 16_384))  # 16,384: Milvus' topk limit
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        if k == 0 or len(queries) == 0:
            return scores, rows
        fields = list(ROW_FIELDS) if self.rows is not None else []
        res = self.client.search(self.collection, data=queries.tolist(), limit=k, filter=self.expression(),
                                 output_fields=fields, search_params={"metric_type": "IP",
                                                                       "params": json.loads(self.spec.search)})
        for i, hits in enumerate(res):
            for j, h in enumerate(hits):
                rows[i, j], scores[i, j] = int(h["row"]), float(h["distance"])
                if self.rows is not None:
                    self.rows.remember({"row": h["row"], **h["entity"]})
        return scores, rows


class MilvusGallery(GalleryIndex):
    """A GalleryIndex served from Milvus: `index` is a MilvusIndex, rows and vectors are read on demand.

    `root` is the shards folder whose thumbs/ holds the previews (what the app may serve)."""

    def __init__(self, target: MilvusTarget, client, meta: IndexMeta, spec: MilvusSpec, root: Path, size: int,
                 flagged: Sequence[int] = (), filter: str | None = None) -> None:
        self.target, self.client, self.spec, self.filter_expr = target, client, spec, filter
        rows = MilvusRows(client, target.collection, size)
        index = MilvusIndex(client, target.collection, spec, meta.dim, meta.count, size, rows, filter,
                            hidden=len(flagged))
        super().__init__(root, meta, rows, index, [], dirs=None, flagged=())
        self.flagged_rows = frozenset(int(r) for r in flagged)  # hidden by the index's expression, not a view

    def __len__(self) -> int:
        return self.meta.count

    def item(self, row: int) -> GalleryItem:
        r = self.rows[row]
        extra = {"style": r["style"]} if r.get("style") else {}
        return GalleryItem(r["id"], Path(r["path"]), r.get("caption"), r.get("label"), extra,
                           size=(r["width"], r["height"]) if r.get("width") else None, bytes=r.get("bytes"),
                           thumbnail=Path(r["thumbnail"]) if r.get("thumbnail") else None,
                           aesthetic=r.get("aesthetic"))

    def folders(self) -> list[str]:
        return [str(self.root)]

    def row_of(self, item_id: str) -> int | None:
        found = self.client.query(self.target.collection, filter=f"id == {json.dumps(item_id)}",
                                  output_fields=list(ROW_FIELDS), limit=1)
        if not found:
            return None
        self.rows.remember(found[0])
        return int(found[0]["row"])

    def vectors(self, rows: list[int]) -> np.ndarray:
        return self.index.vectors[np.asarray(rows, np.int64)]

    def hubness(self, bank) -> np.ndarray:  # noqa: ANN001
        """Hub scores need every vector: read once (fine for a demo gallery; at scale, precompute them)."""
        if self._hub is None or self._hub[0] is not bank:
            self._hub = (bank, bank.hubness(self.index.vectors.all()))
        return self._hub[1]

    def aesthetic_direction(self) -> np.ndarray | None:
        if self._direction is None:
            scored = [(int(r["row"]), r["aesthetic"]) for r in _existing(
                self.client, self.target.collection, ("aesthetic",)) if r.get("aesthetic") is not None]
            if len(scored) < 2:
                return None
            from search.index.gallery_index import aesthetic_direction

            rows = [r for r, _ in scored]
            self._direction = aesthetic_direction(self.vectors(rows), np.array([s for _, s in scored]))
        return self._direction

    def close(self) -> None:
        """Disconnect; for Milvus Lite also stop this process's embedded server, which holds the file's lock
        (one process at a time opens a Milvus Lite file: build, then serve)."""
        release(self.target, self.client)

    def filtered(self, expression: str | None) -> MilvusGallery:
        """The same collection, every search narrowed by a Milvus filter expression (None: no filter)."""
        return MilvusGallery(self.target, self.client, self.meta, self.spec, self.root, len(self.rows),
                             self.flagged_rows, expression)

    def where(self, image_filter: ImageFilter) -> MilvusGallery:
        """Searches narrowed by `image_filter` inside the database (with this gallery's own filter, if any)."""
        if not image_filter.active:
            return self
        return self.filtered(" and ".join(f"({e})" for e in (self.filter_expr, image_filter.expression()) if e))


def open_gallery(target: MilvusTarget | str, encoder: Encoder | None = None, client=None) -> MilvusGallery:  # noqa: ANN001
    """A built collection as a GalleryIndex; with `encoder`, refuse one built by a different encoder."""
    target = MilvusTarget.parse(target) if isinstance(target, str) else target
    client = client or connect(target)
    meta = read_collection_meta(client, target.collection)
    if meta is None:
        raise FileNotFoundError(f"{target} has no visual-search collection {target.collection!r}; build one with: "
                                f"python -m search index SHARDS_DIR --out {target}")
    client.load_collection(target.collection)
    count = int(client.query(target.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
    size = meta.get("size")  # the largest row number + 1 (rows of removed images leave gaps)
    if size is None:
        size = max((int(r["row"]) for r in _existing(client, target.collection, ())), default=-1) + 1
    flagged = [int(r["row"]) for r in client.query(target.collection, filter="flagged == true",
                                                   output_fields=["row"])]
    spec = MilvusSpec(meta["index_type"], meta["build"], meta["search"])
    imeta = IndexMeta(meta["encoder"], meta["fingerprint"], f"milvus:{spec.index_type}", meta["search"], 0,
                      int(meta["dim"]), count, f"{target.collection}@{meta['updated']}", meta.get("source"),
                      meta["updated"], scorer=meta.get("scorer"))
    if encoder is not None and imeta.fingerprint != encoder.fingerprint:
        raise IndexMismatchError(f"{target} was built with encoder {imeta.fingerprint}, not {encoder.fingerprint}; "
                                 f"use --encoder {imeta.encoder} or rebuild it")
    return MilvusGallery(target, client, imeta, spec, Path(meta["root"]), size, flagged)
