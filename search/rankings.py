"""Named rankings: how query vectors become ordered gallery rows. `baseline` is plain kNN."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .index import VectorIndex

Ranking = Callable[[np.ndarray, VectorIndex, int], tuple[np.ndarray, np.ndarray]]


def baseline(query_vecs: np.ndarray, index: VectorIndex, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbours by cosine similarity -> (scores, rows), each (Q, k)."""
    return index.search(query_vecs, k)


RANKINGS: dict[str, Ranking] = {"baseline": baseline}


def get_ranking(name: str) -> Ranking:
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; known rankings: {', '.join(RANKINGS)}")
    return RANKINGS[name]
