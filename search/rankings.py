"""Named rankings: how query vectors become ranked gallery hits.

* `baseline`: plain kNN by cosine similarity, the single-stage ranking of the encoder.
* `aligned`: the aesthetic re-ranking of arXiv 2406.09397 / clip-retrieval: top-K candidates by
  relevance, re-scored by relevance and aesthetic score (each min-max normalised over the candidates,
  mixed by the weight lambda), near-duplicates (cosine >= 0.94, clip-retrieval's threshold) pushed out
  of the top, then the rest of the gallery in baseline order so a full ranking stays complete.
  Its query text is rephrased by the engine before encoding (see search/rephrase.py).
* `shift`: clip-retrieval's "aesthetic query shift": the query vector moved toward the direction of
  beautiful images (here, of the gallery's best-scored images), then plain kNN.

Re-scoring, de-duplication and shifting are pure functions over typed hits and arrays.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .gallery_index import GalleryIndex
from .types import Hit


@dataclass(frozen=True)
class RankSettings:
    k: int = 12                       # hits wanted per query
    aesthetic_weight: float = 0.5     # lambda: share of the aesthetic score in the aligned score (0..1)
    candidates: int = 100             # K: how many relevance candidates the aligned ranking re-scores
    dedup: bool = True                # push near-duplicates of better-ranked hits out of the top
    dedup_threshold: float = 0.94     # cosine similarity at which two gallery images are near-duplicates
    shift: float = 0.3                # `shift` ranking: step toward the aesthetic direction
    expand: int = 5                   # image queries: alpha-QE over this many top gallery vectors (0: off)
    expand_alpha: float = 3.0         # their weight is similarity ** alpha

    def __post_init__(self) -> None:
        if self.k < 1 or self.candidates < 1:
            raise ValueError(f"k and candidates must be >= 1, got k={self.k}, candidates={self.candidates}")
        if not 0.0 <= self.aesthetic_weight <= 1.0:
            raise ValueError(f"aesthetic_weight must be in 0..1, got {self.aesthetic_weight}")
        if self.expand < 0 or self.expand_alpha < 0:
            raise ValueError(f"expand and expand_alpha must be >= 0, got {self.expand}, {self.expand_alpha}")


Ranking = Callable[[np.ndarray, GalleryIndex, RankSettings], list[list[Hit]]]


def expand_queries(vectors: np.ndarray, gallery: GalleryIndex, k: int, alpha: float) -> np.ndarray:
    """alpha-weighted average query expansion (Radenovic et al., TPAMI 2018): each query vector plus its
    top-k gallery vectors weighted by similarity ** alpha, renormalised. A sketch or painting query is moved
    towards the photos it found first, across the gap between its style and the gallery's. Dimensions where
    a query is 0 (e.g. an aesthetic gate's, models/aesthetic_gate.py) stay 0."""
    k = min(k, len(gallery))
    if k < 1 or not len(vectors):
        return vectors
    scores, rows = gallery.index.search(vectors, k)
    weights = np.where(rows >= 0, np.clip(scores, 0, None) ** alpha, 0.0).astype(np.float32)   # (Q, k)
    neighbours = gallery.vectors(np.clip(rows, 0, None).ravel()).reshape(*rows.shape, -1)     # (Q, k, dim)
    out = np.where(vectors != 0, vectors + np.einsum("qk,qkd->qd", weights, neighbours), 0.0)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- pure functions over hits
def minmax(values: Sequence[float | None]) -> np.ndarray:
    """Scale to 0..1 over the list; missing values (None) sit at the middle, a constant list at 0.5."""
    x = np.array([np.nan if v is None else v for v in values], np.float64)
    if len(x) == 0 or np.all(np.isnan(x)):
        return np.full(len(x), 0.5)
    lo, hi = np.nanmin(x), np.nanmax(x)
    out = (x - lo) / (hi - lo) if hi > lo else np.full(len(x), 0.5)
    return np.where(np.isnan(out), 0.5, out)


def renumber(hits: Sequence[Hit]) -> list[Hit]:
    return [replace(h, rank=n) for n, h in enumerate(hits, start=1)]


def rescore(hits: Sequence[Hit], aesthetic_weight: float) -> list[Hit]:
    """Hits re-ranked by (1 - w) * relevance + w * aesthetic, both min-max normalised over `hits`."""
    rel = [h.score if h.relevance is None else h.relevance for h in hits]
    combined = (1 - aesthetic_weight) * minmax(rel) + aesthetic_weight * minmax([h.item.aesthetic for h in hits])
    order = np.argsort(-combined, kind="stable")
    return renumber([replace(hits[i], score=float(combined[i]), relevance=rel[i]) for i in order])


def demote_near_duplicates(hits: Sequence[Hit], vectors: np.ndarray, threshold: float = 0.94) -> list[Hit]:
    """Keep order, but move every hit whose vector is within `threshold` cosine of a better-ranked
    kept hit to the end (so a top-k shows no near-duplicates and a full ranking loses nothing)."""
    if len(hits) == 0:
        return []
    sims = vectors @ vectors.T
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(len(hits)):
        (dropped if kept and sims[i, kept].max() >= threshold else kept).append(i)
    return renumber([hits[i] for i in kept + dropped])


def shift_query(query_vecs: np.ndarray, direction: np.ndarray, step: float) -> np.ndarray:
    """Move unit query vectors toward a unit direction and re-normalise (clip-retrieval's aesthetic shift)."""
    q = query_vecs + step * direction[None, :]
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def aesthetic_direction(vectors: np.ndarray, scores: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Unit vector from the gallery's worst-scored `share` of images to its best-scored share."""
    order = np.argsort(scores)
    n = max(1, int(len(order) * share))
    d = vectors[order[-n:]].mean(0) - vectors[order[:n]].mean(0)
    return (d / (np.linalg.norm(d) + 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- rankings over an index
def baseline(query_vecs: np.ndarray, gallery: GalleryIndex, settings: RankSettings) -> list[list[Hit]]:
    """Nearest neighbours by cosine similarity: per query, the k best hits."""
    return gallery.search(query_vecs, settings.k)


def aligned(query_vecs: np.ndarray, gallery: GalleryIndex, settings: RankSettings) -> list[list[Hit]]:
    """Relevance candidates re-scored with aesthetics, near-duplicates demoted; then the rest in baseline order."""
    pool = max(settings.k, settings.candidates)
    out = []
    for row in gallery.search(query_vecs, pool):
        head, tail = row[: settings.candidates], row[settings.candidates :]
        head = rescore(head, settings.aesthetic_weight)
        if settings.dedup:
            head = demote_near_duplicates(head, gallery.vectors([h.row for h in head]), settings.dedup_threshold)
        out.append(renumber([*head, *tail])[: settings.k])
    return out


def shift(query_vecs: np.ndarray, gallery: GalleryIndex, settings: RankSettings) -> list[list[Hit]]:
    """kNN of the query moved toward the gallery's aesthetic direction (needs aesthetic scores)."""
    direction = gallery.aesthetic_direction()
    if direction is None:
        raise ValueError("the `shift` ranking needs aesthetic scores in the index; rebuild it with a scorer")
    return gallery.search(shift_query(query_vecs, direction, settings.shift), settings.k)


RANKINGS: dict[str, Ranking] = {"baseline": baseline, "aligned": aligned, "shift": shift}


def get_ranking(name: str) -> Ranking:
    if name not in RANKINGS:
        raise ValueError(f"unknown ranking {name!r}; known rankings: {', '.join(RANKINGS)}")
    return RANKINGS[name]
