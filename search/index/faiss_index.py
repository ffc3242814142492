"""The one module that touches FAISS: vectors in, (scores, rows) arrays out.

An index is described by a FAISS `index_factory` string (e.g. "Flat", "HNSW32",
"PCAR256,IVF1024,PQ64x4fs"), FAISS search parameters (e.g. "nprobe=32") and an optional exact
re-ranking of a shortlist against the original float32 vectors (which may be a memory-mapped file,
so compressed indexes keep RAM low and still return exact scores).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

EXACT_MAX = 10_000  # up to this many vectors, brute force is exact and fast enough (< 10 ms)


@dataclass(frozen=True)
class IndexSpec:
    factory: str = "Flat"     # faiss.index_factory string (inner-product metric)
    params: str = ""          # faiss.ParameterSpace string applied after loading, e.g. "nprobe=32"
    rerank: int = 0           # if > 0: fetch this many candidates, re-score them exactly, keep the best k

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"


def auto_spec(n: int, dim: int) -> IndexSpec:
    """The default index for `n` vectors of size `dim`.

    Small galleries: exact search. Larger: an IVF index over PCA-reduced vectors with 4-bit PQ
    fast-scan codes (32 bytes per vector), whose shortlist is re-scored exactly against the stored
    vectors, so memory stays small (1M vectors < 1 GB) and scores stay exact.
    """
    if n <= EXACT_MAX:
        return IndexSpec("Flat")
    reduced = min(256, dim - dim % 4)
    nlist = 2 ** round(math.log2(max(64.0, 4 * math.sqrt(n))))
    return compressed_spec(dim, nlist, reduced)


def compressed_spec(dim: int, nlist: int, reduced: int = 256, nprobe: int = 32, rerank: int = 200) -> IndexSpec:
    pca = f"PCAR{reduced}," if reduced < dim else ""
    return IndexSpec(f"{pca}IVF{nlist},PQ{reduced // 4}x4fs", f"nprobe={nprobe}", rerank)


class VectorIndex:
    """Inner-product index over L2-normalised float32 vectors (cosine similarity)."""

    def __init__(self, dim: int, spec: IndexSpec | None = None, vectors: np.ndarray | None = None) -> None:
        self.dim = dim
        self.spec = spec or IndexSpec()
        self.index = faiss.index_factory(dim, self.spec.factory, faiss.METRIC_INNER_PRODUCT)
        self.vectors = vectors  # originals for exact re-ranking (row i = FAISS id i); may be a memmap
        self._apply_params()

    @classmethod
    def build(cls, vectors: np.ndarray, spec: IndexSpec | None = None, train_size: int = 100_000,
              seed: int = 0) -> VectorIndex:
        """Index `vectors` (kept as the re-ranking originals); approximate indexes train on a sample."""
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ValueError(f"expected a float32 matrix, got {vectors.dtype} {vectors.shape}")
        index = cls(vectors.shape[1], spec or auto_spec(len(vectors), vectors.shape[1]), vectors)
        if not index.index.is_trained:
            ivf = faiss.try_extract_index_ivf(index.index)
            train_size = max(train_size, 40 * ivf.nlist) if ivf else train_size  # k-means wants ~40 per list
            rows = np.random.default_rng(seed).permutation(len(vectors))[:train_size]
            index.index.train(np.ascontiguousarray(vectors[np.sort(rows)]))
        for start in range(0, len(vectors), 100_000):  # bounded memory for memmapped inputs
            index.index.add(np.ascontiguousarray(vectors[start:start + 100_000], dtype=np.float32))
        return index

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def nbytes(self) -> int:
        """Size of the FAISS structure (≈ its RAM), not counting the re-ranking originals."""
        return int(faiss.serialize_index(self.index).nbytes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores, rows), each (Q, min(k, len)); best first."""
        queries = _as_matrix(queries, self.dim)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if not self.spec.rerank or self.vectors is None:
            return self.index.search(queries, k)
        _, cand = self.index.search(queries, min(max(self.spec.rerank, k), len(self)))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for i, (q, c) in enumerate(zip(queries, cand)):
            c = c[c >= 0]
            order = np.sort(c)                  # sorted reads are kinder to a memmap
            exact = np.asarray(self.vectors[order], np.float32) @ q
            best = np.argsort(-exact, kind="stable")[:k]
            scores[i, :len(best)], rows[i, :len(best)] = exact[best], order[best]
        return scores, rows

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, spec: IndexSpec, vectors: np.ndarray | None = None) -> VectorIndex:
        self = cls.__new__(cls)
        self.index = faiss.read_index(str(path))
        self.dim, self.spec, self.vectors = self.index.d, spec, vectors
        self._apply_params()
        return self

    def _apply_params(self) -> None:
        if self.spec.params:
            faiss.ParameterSpace().set_index_parameters(self.index, self.spec.params)


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors
