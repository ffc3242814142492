"""Named rankings: how query vectors become ranked gallery hits. `baseline` is plain kNN."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .gallery_index import GalleryIndex
from .types import Hit

Ranking = Callable[[np.ndarray, GalleryIndex, int], list[list[Hit]]]


def baseline(query_vecs: np.ndarray, gallery: GalleryIndex, k: int) -> list[list[Hit]]:
    """Nearest neighbours by cosine similarity: per query, the k best hits."""
    return gallery.search(query_vecs, k)


RANKINGS: dict[str, Ranking] = {"baseline": baseline}


def get_ranking(name: str) -> Ranking:
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; known rankings: {', '.join(RANKINGS)}")
    return RANKINGS[name]
