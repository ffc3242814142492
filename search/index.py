"""The one module that touches FAISS: vectors in, (row, score) arrays out."""
from __future__ import annotations

import faiss
import numpy as np

DEFAULT_FACTORY = "Flat"


class VectorIndex:
    """Inner-product index over L2-normalised float32 vectors (cosine similarity)."""

    def __init__(self, dim: int, factory: str = DEFAULT_FACTORY) -> None:
        self.dim = dim
        self.factory = factory
        self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        vectors = self._check(vectors)
        if not self.index.is_trained:
            self.index.train(vectors)
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores, rows), each (Q, min(k, len)); best first."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = self.index.search(self._check(queries), k)
        return scores, rows

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors
