"""Querybank normalisation at search time (models/query_bank.py): a view of a gallery whose similarities
have each query's hub penalty subtracted, so every ranking works on it unchanged."""
from __future__ import annotations

import numpy as np

from models.query_bank import QueryBank
from search.index.gallery_index import GalleryIndex
from search.types import GalleryItem, Hit

MIN_POOL = 200  # hits re-scored per query: a penalty only reorders the cosine ranking, it seldom lifts a far item


def hub_penalties(gallery: GalleryIndex, bank: QueryBank | None, style_weights: np.ndarray | None) -> np.ndarray | None:
    """(Q, N) amounts to subtract from the queries' similarities, or None when nothing is subtracted."""
    if bank is None or style_weights is None or not np.any(style_weights):
        return None
    return bank.penalty(gallery.hubness(bank), style_weights)


class HubCorrected:
    """`gallery` as the rankings see it, for queries with these (Q, N) penalties (in the queries' order).

    Its `index` returns the corrected scores as arrays, so a ranking that reads candidates as arrays (the
    aligned one) builds items only for the hits it returns, not for its whole pool."""

    def __init__(self, gallery: GalleryIndex, penalties: np.ndarray, min_pool: int = MIN_POOL) -> None:
        self.gallery, self.penalties, self.min_pool = gallery, penalties, min_pool
        self.index = _CorrectedIndex(self)

    def __len__(self) -> int:
        return len(self.gallery)

    def corrected(self, query_vecs: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (rows, corrected scores as float64) of its k best, best first. The `min_pool` (at least 4 k)
        nearest by cosine are re-scored; ties keep the cosine order."""
        pool = min(len(self.gallery), max(4 * k, self.min_pool))
        scores, rows = self.gallery.index.search(query_vecs, pool)
        out = []
        for srow, rrow, pen in zip(scores, rows, self.penalties):
            ok = rrow >= 0
            r = rrow[ok].astype(np.int64)
            s = srow[ok].astype(np.float64) - pen[r].astype(np.float64)
            order = np.argsort(-s, kind="stable")[:k]
            out.append((r[order], s[order]))
        return out

    def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        return [[Hit(self.gallery.item(int(r)), float(s), n, int(r), float(s))
                 for n, (r, s) in enumerate(zip(rows, scores), start=1)]
                for rows, scores in self.corrected(query_vecs, k)]

    def item(self, row: int) -> GalleryItem:
        return self.gallery.item(row)

    def vectors(self, rows: list[int]) -> np.ndarray:
        return self.gallery.vectors(rows)

    def aesthetic_direction(self) -> np.ndarray | None:
        return self.gallery.aesthetic_direction()


class _CorrectedIndex:
    """A HubCorrected view's search as a VectorIndex answers: (Q, k) scores and rows, padded with -1 rows."""

    def __init__(self, view: HubCorrected) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def search(self, query_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.view.corrected(query_vecs, k)
        scores = np.full((len(found), k), -np.inf, np.float64)
        rows = np.full((len(found), k), -1, np.int64)
        for i, (r, s) in enumerate(found):
            rows[i, : len(r)], scores[i, : len(s)] = r, s
        return scores, rows
