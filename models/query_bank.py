"""Querybank normalisation (Bogolin et al., CVPR 2022) for style-conditioned queries.

Across a style gap, some gallery photos are *hubs*: close to many drawings or paintings whatever they show
(on the dev split, PACS horse photos came up for most dog sketches). A bank of training queries of each
style measures that: a photo's hub score for style s is its mean cosine to its k nearest bank queries of
style s (CSLS, Conneau et al., ICLR 2018). A query of mixture m then scores a photo by

    cos(q, g) - beta * sum_s m_s hub_s(g)

Photos have no bank, so photo and text queries rank exactly as before. The bank holds query vectors of the
encoder that built it (`python -m search query-bank`); a retrained encoder needs a new bank.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .style import STYLES


@dataclass(frozen=True)
class QueryBank:
    vectors: dict[str, np.ndarray]  # style -> (M, dim) unit query vectors of training queries of that style
    k: int = 10                     # a photo's hub score: mean cosine to its k nearest bank queries
    beta: float = 0.75              # weight of the hub score (k and beta chosen on the dev split)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.vectors) - set(STYLES))
        if unknown:
            raise ValueError(f"query bank styles {unknown} are not among {STYLES}")
        if "photo" in self.vectors:
            raise ValueError("a query bank has no photo queries: photo queries are never normalised")
        dims = {v.shape[1] for v in self.vectors.values()}
        if len(dims) > 1:
            raise ValueError(f"query bank vectors differ in size: {sorted(dims)}")

    @property
    def dim(self) -> int:
        return next(iter(self.vectors.values())).shape[1]

    def hubness(self, gallery: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """(N, D >= dim) gallery vectors -> (N, len(STYLES)) hub scores; 0 for styles without a bank.
        Dimensions past the bank's (e.g. an aesthetic gate's, where queries are 0) do not count."""
        out = np.zeros((len(gallery), len(STYLES)), np.float32)
        for s, bank in self.vectors.items():
            k = min(self.k, len(bank))
            b = bank.astype(np.float32)
            for i in range(0, len(gallery), chunk):
                sims = np.asarray(gallery[i : i + chunk, : self.dim], np.float32) @ b.T
                out[i : i + chunk, STYLES.index(s)] = -np.partition(-sims, k - 1, axis=1)[:, :k].mean(1)
        return out

    def penalty(self, hub: np.ndarray, mixtures: np.ndarray) -> np.ndarray:
        """(N, n_styles) hub scores, (Q, n_styles) style mixtures -> (Q, N) amounts to subtract from cosines."""
        return (self.beta * np.asarray(mixtures, np.float32) @ hub.T).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """float16 (the file is committed)."""
        path = Path(path)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, k=self.k, beta=self.beta, **{s: v.astype(np.float16) for s, v in self.vectors.items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> QueryBank:
        with np.load(path) as z:
            return cls({s: z[s] for s in z.files if s not in ("k", "beta")}, int(z["k"]), float(z["beta"]))
