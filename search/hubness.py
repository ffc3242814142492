"""Querybank normalisation at search time (models/query_bank.py): a view of a gallery whose similarities
have each query's hub penalty subtracted, so every ranking works on it unchanged."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.query_bank import QueryBank
from search.index.gallery_index import GalleryIndex
from search.types import Hit

MIN_POOL = 200  # hits re-scored per query: a penalty only reorders the cosine ranking, it seldom lifts a far item


def hub_penalties(gallery: GalleryIndex, bank: QueryBank | None, style_weights: np.ndarray | None) -> np.ndarray | None:
    """(Q, N) amounts to subtract from the queries' similarities, or None when nothing is subtracted."""
    if bank is None or style_weights is None or not np.any(style_weights):
        return None
    return bank.penalty(gallery.hubness(bank), style_weights)


class HubCorrected:
    """`gallery` as the rankings see it, for queries with these (Q, N) penalties (in the queries' order)."""

    def __init__(self, gallery: GalleryIndex, penalties: np.ndarray) -> None:
        self.gallery, self.penalties = gallery, penalties

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        pool = min(len(self.gallery), max(4 * k, MIN_POOL))
        out = []
        for hits, pen in zip(self.gallery.search(query_vecs, pool), self.penalties):
            scores = [h.score - float(pen[h.row]) for h in hits]
            order = sorted(range(len(hits)), key=lambda i: -scores[i])[:k]  # stable: ties keep the cosine order
            out.append([replace(hits[i], score=scores[i], relevance=scores[i], rank=n)
                        for n, i in enumerate(order, start=1)])
        return out

    def vectors(self, rows: list[int]) -> np.ndarray:
        return self.gallery.vectors(rows)

    def aesthetic_direction(self) -> np.ndarray | None:
        return self.gallery.aesthetic_direction()
