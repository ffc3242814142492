"""Named rankings: how query vectors become ranked gallery hits.

* `baseline`: plain kNN by cosine similarity, the single-stage ranking of the encoder.
* `aligned`: aesthetics order relevant images and never lift irrelevant ones. The top-K candidates by
  relevance are re-scored by relevance + lambda * margin * aesthetic percentile (the image's rank among the
  gallery's aesthetic scores, 0..1), so a candidate can pass a more relevant one only if their relevance
  differs by less than lambda * margin (a per-encoder constant chosen on train data, `CALIBRATIONS`).
  Near-duplicates (versions of one picture: cosine >= the encoder's calibrated threshold, or pixel signatures
  alike, search/index/pixel_signature.py) are collapsed to their best-looking version, which takes the
  group's place. Then the rest of the gallery in baseline order so a full ranking stays complete. Its query
  text is rephrased by the engine before encoding (see search/rephrase.py). Method and figures:
  docs/aligned_ranking.md.
* `shift`: clip-retrieval's "aesthetic query shift": the query vector moved toward the direction of
  beautiful images (here, of the gallery's best-scored images), then plain kNN.

Re-scoring, de-duplication and shifting are pure functions over typed hits and arrays.
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from search.index.gallery_index import GalleryIndex
from search.index.pixel_signature import DUPLICATE_THRESHOLD, signatures
from search.types import Hit


@dataclass(frozen=True)
class Calibration:
    """Per-encoder constants of the aligned ranking, chosen on `train` data only (benchmarks/aligned_dev.py)."""

    margin: float            # relevance (cosine) margin at aesthetic_weight 1: aesthetics never bridge a wider gap
    dedup_threshold: float   # cosine at which two gallery images are versions of one photo
    rephrase_weight: float = 1.0  # the aligned side's text vector: (1 - w) * as typed + w * rephrased


# `lite`: margin by the dev rule (the largest whose R@1 stays within 0.02 and R@10 within 0.01 of the baseline on
# the plain dev benchmarks, ImageNet / Sketchy train classes): 0, since lite's relevance near the top is too
# compressed for any margin to be free (sketchy-dev R@1 0.850 -> 0.811 at 0.01), so aesthetics act through the
# near-duplicate collapse only; threshold: 1 % of train photos have a distinct photo that close
# (docs/aligned_ranking.md, benchmarks/aligned_dev.py); rephrase weight: the largest of 0, 0.5, 1 whose dev R@1 and
# R@10 stay within half those limits (the template's added words cost sketchy-dev R@1 0.015 at weight 1)
CALIBRATIONS: dict[str, Calibration] = {
    "lite": Calibration(margin=0.0, dedup_threshold=0.78, rephrase_weight=0.5),
}
DEFAULT_CALIBRATION = Calibration(margin=0.06, dedup_threshold=0.94)  # 0.94: clip-retrieval's CLIP threshold


@dataclass(frozen=True)
class RankSettings:
    k: int = 12                       # hits wanted per query
    aesthetic_weight: float = 0.5     # lambda (0..1): aesthetics may lift a candidate over a more relevant one
    #                                   only if their relevance differs by less than lambda * margin
    candidates: int = 100             # K: how many relevance candidates the aligned ranking re-scores
    dedup: bool = True                # near-duplicates: the best-looking version takes the group's first place
    dedup_threshold: float | None = None  # cosine at which two gallery images are near-duplicates (None: calibrated)
    margin: float | None = None       # relevance margin at lambda 1, in cosine (None: the encoder's calibrated one)
    rephrase_weight: float | None = None  # weight of the rephrased text (None: the encoder's calibrated one)
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
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


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
def renumber(hits: Sequence[Hit]) -> list[Hit]:
    return [replace(h, rank=n) for n, h in enumerate(hits, start=1)]


def relevance_of(hit: Hit) -> float:
    return hit.score if hit.relevance is None else hit.relevance


def percentiles(scores: Sequence[float | None]) -> np.ndarray:
    """Each score's mid-rank percentile among the scores (0 = worst, 1 = best); missing (None) and a lone
    score sit at 0.5. A scale-free aesthetic: any scorer's units become the same 0..1."""
    x = np.array([np.nan if v is None else v for v in scores], np.float64)
    known = np.sort(x[~np.isnan(x)])
    out = np.full(len(x), 0.5)
    if len(known) > 1:
        ok = ~np.isnan(x)
        lo, hi = np.searchsorted(known, x[ok], "left"), np.searchsorted(known, x[ok], "right")
        out[ok] = ((lo + hi - 1) / 2) / (len(known) - 1)
    return out


def margin_order(relevance: np.ndarray, quality: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, combined score) of candidates by relevance + margin * quality (quality clipped to 0..1)."""
    combined = np.asarray(relevance, np.float64) + margin * np.clip(np.asarray(quality, np.float64), 0.0, 1.0)
    return np.argsort(-combined, kind="stable"), combined


def collapse_groups(vectors: np.ndarray, quality: np.ndarray, threshold: float, pixels: np.ndarray | None = None,
                    pixel_threshold: float = DUPLICATE_THRESHOLD) -> tuple[list[int], list[int]]:
    """(kept, dropped) positions of candidates (rows of `vectors`, best first) after collapsing near-duplicates:
    in order, each candidate not yet grouped opens a group with every later ungrouped one that close to it
    (cosine >= `threshold`, or with `pixels`, their pixel signatures, search/index/pixel_signature.py, that
    close); the group's best-looking member (highest `quality`, the earliest on ties) is kept in its place."""
    n = len(vectors)
    close = (vectors @ vectors.T) >= threshold
    if pixels is not None:
        close |= (pixels @ pixels.T) >= pixel_threshold
    quality = np.asarray(quality, np.float64)
    alone = close.sum(1) <= 1   # close to nothing but itself (most candidates): its own group, no search
    grouped = np.zeros(n, bool)
    kept: list[int] = []
    dropped: list[int] = []
    for i in range(n):
        if grouped[i]:
            continue
        if alone[i]:
            kept.append(i)
            continue
        group = np.flatnonzero(close[i] & ~grouped)
        group = group[group >= i]
        grouped[group] = True
        best = int(group[np.argmax(quality[group])])   # argmax: the earliest among equals
        kept.append(best)
        dropped += [int(j) for j in group if j != best]
    return kept, sorted(dropped)


def collapse_order(vectors: np.ndarray, quality: np.ndarray, threshold: float,
                   pixels: np.ndarray | None = None) -> np.ndarray:
    """Positions of candidates after collapsing near-duplicates (`collapse_groups`): the kept, then the rest."""
    kept, dropped = collapse_groups(vectors, quality, threshold, pixels)
    return np.array(kept + dropped, np.int64)


def margin_rescore(hits: Sequence[Hit], quality: Sequence[float], margin: float) -> list[Hit]:
    """Hits re-ranked by relevance + margin * quality, `quality` in 0..1 (e.g. the gallery percentile of the
    aesthetic score). Aesthetics order hits whose relevance is within `margin` of each other and can never
    lift a hit above one more than `margin` more relevant (ties keep the relevance order)."""
    rel = np.array([relevance_of(h) for h in hits], np.float64)
    order, combined = margin_order(rel, np.asarray(quality), margin)
    return renumber([replace(hits[i], score=float(combined[i]), relevance=float(rel[i])) for i in order])


def collapse_near_duplicates(hits: Sequence[Hit], vectors: np.ndarray, quality: Sequence[float],
                             threshold: float, pixels: np.ndarray | None = None) -> list[Hit]:
    """Near-duplicates (cosine >= `threshold`, or pixel signatures `DUPLICATE_THRESHOLD` close when `pixels`
    are given) are versions of one picture: in order, each hit not yet grouped
    opens a group with every later ungrouped hit that close to it; the group's best-looking version (highest
    `quality`; the earliest on ties) takes the group's place and the others go to the end (a top-k shows one
    version of each picture, the best one, and a full ranking loses nothing)."""
    if len(hits) == 0:
        return []
    return renumber([hits[i] for i in collapse_order(vectors, np.asarray(quality), threshold, pixels)])


def demote_near_duplicates(hits: Sequence[Hit], vectors: np.ndarray, threshold: float = 0.94) -> list[Hit]:
    """Keep order, but move every hit within `threshold` cosine of a better-ranked kept hit to the end
    (`collapse_near_duplicates` with no aesthetic preference)."""
    return collapse_near_duplicates(hits, vectors, np.zeros(len(hits)), threshold)


def blend_rephrasing(typed: np.ndarray, rephrased: np.ndarray, weight: float) -> np.ndarray:
    """The aligned side's text vector(s): the rephrased text's, weighted against the text as typed (the
    visitor's own words keep a share, so expectations added by a rephraser cannot replace the subject)."""
    v = (1 - weight) * typed + weight * rephrased
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def rephrase_weight(gallery: GalleryIndex, settings: RankSettings) -> float:
    return calibration(gallery).rephrase_weight if settings.rephrase_weight is None else settings.rephrase_weight


def shift_query(query_vecs: np.ndarray, direction: np.ndarray, step: float) -> np.ndarray:
    """Move unit query vectors toward a unit direction and re-normalise (clip-retrieval's aesthetic shift)."""
    q = query_vecs + step * direction[None, :]
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- rankings over an index
def baseline(query_vecs: np.ndarray, gallery: GalleryIndex, settings: RankSettings) -> list[list[Hit]]:
    """Nearest neighbours by cosine similarity: per query, the k best hits."""
    return gallery.search(query_vecs, settings.k)


def calibration(gallery: GalleryIndex) -> Calibration:
    """The aligned ranking's constants for the encoder that built `gallery` (a `HubCorrected` view included)."""
    meta = getattr(getattr(gallery, "gallery", gallery), "meta", None)
    return CALIBRATIONS.get(getattr(meta, "encoder", None), DEFAULT_CALIBRATION)


_PERCENTILES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PIXELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ALL_PIXELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# versions of a candidate are looked for among every image of galleries up to this size (the first 2k candidates
# against every signature: ~6 ms at 20k on one core); a larger gallery collapses versions among its candidates
VERSIONS_SEARCH_MAX = 20_000


def aesthetic_percentiles(gallery: GalleryIndex) -> np.ndarray:
    """(N,) each gallery image's aesthetic percentile within its gallery (0.5 where unscored); computed once."""
    base = getattr(gallery, "gallery", gallery)
    out = _PERCENTILES.get(base)
    if out is None or len(out) != len(base):
        out = percentiles([r.get("aesthetic") for r in base.rows])
        _PERCENTILES[base] = out
    return out


def pixel_signatures(gallery: GalleryIndex, rows: Sequence[int]) -> np.ndarray:
    """(len(rows), 256) pixel signatures of gallery rows, each read (or, for an older index, made from its
    thumbnail) once per gallery."""
    base = getattr(gallery, "gallery", gallery)
    known = _PIXELS.setdefault(base, {})
    missing = [r for r in dict.fromkeys(rows) if r not in known]
    if missing:
        known.update(zip(missing, signatures([base.rows[r] for r in missing], base.root)))
    return np.stack([known[r] for r in rows]) if len(rows) else np.zeros((0, 256), np.float32)


def versions_elsewhere(gallery: GalleryIndex, rows: Sequence[int]) -> np.ndarray:
    """Gallery rows, other than `rows`, whose pixel signature matches one of theirs: other versions of those
    pictures (a degraded copy can be far from its original in meaning, so the original need not be a
    candidate). Galleries over VERSIONS_SEARCH_MAX images are not searched (it reads every signature)."""
    base = getattr(gallery, "gallery", gallery)
    if not len(rows) or len(base) > VERSIONS_SEARCH_MAX:
        return np.zeros(0, np.int64)
    every = _ALL_PIXELS.get(base)
    if every is None or len(every) != len(base):
        every = _ALL_PIXELS[base] = pixel_signatures(base, range(len(base)))
    found = np.flatnonzero(((every[np.asarray(rows)] @ every.T) >= DUPLICATE_THRESHOLD).any(0))
    given = set(rows)
    return np.array([r for r in found.tolist() if r not in given and not base.is_flagged(r)], np.int64)


def aligned(query_vecs: np.ndarray, gallery: GalleryIndex, settings: RankSettings) -> list[list[Hit]]:
    """The top `candidates` by relevance, re-ranked by relevance + lambda * margin * aesthetic percentile (so
    aesthetics only order candidates within lambda * margin of each other's relevance), near-duplicates
    collapsed to their best-looking version (for the first candidates, found in the whole gallery); then the
    rest of the gallery in baseline order."""
    cal = calibration(gallery)
    margin = settings.aesthetic_weight * (cal.margin if settings.margin is None else settings.margin)
    threshold = cal.dedup_threshold if settings.dedup_threshold is None else settings.dedup_threshold
    quality = aesthetic_percentiles(gallery)
    base = getattr(gallery, "gallery", gallery)
    out = []
    pool = max(settings.k, settings.candidates)
    for q, (rows, rel, item) in zip(query_vecs, _candidates(query_vecs, gallery, pool)):
        head = min(settings.candidates, len(rows))
        order, combined = margin_order(rel[:head], quality[rows[:head]], margin)
        # (gallery row, score, relevance, item maker) in the aligned order; items are made for shown hits only
        ranked = [(int(rows[i]), float(combined[i]), float(rel[i]), functools.partial(item, int(i))) for i in order]
        if settings.dedup and head:
            # other versions of the pictures that may be shown (the first 2k), from anywhere in the gallery
            extra = versions_elsewhere(gallery, [r for r, *_ in ranked[: 2 * settings.k]])
            every = np.array([r for r, *_ in ranked] + extra.tolist(), np.int64)
            vectors = gallery.vectors(every.tolist())
            ranked += [(int(r), float(v + margin * quality[r]), float(v), functools.partial(base.item, int(r)))
                       for r, v in zip(extra, vectors[head:] @ q)]
            kept, dropped = collapse_groups(vectors, quality[every], threshold,
                                            pixel_signatures(gallery, every.tolist()))
            ranked = [ranked[i] for i in kept] + [ranked[i] for i in dropped if i < head]  # an extra copy: never
        shown = {r for r, *_ in ranked}
        ranked += [(int(rows[i]), float(rel[i]), float(rel[i]), functools.partial(item, i))
                   for i in range(head, len(rows)) if int(rows[i]) not in shown][: max(0, settings.k - len(ranked))]
        out.append([Hit(make(), score, n, row, relevance)
                    for n, (row, score, relevance, make) in enumerate(ranked[: settings.k], start=1)])
    return out


def _candidates(query_vecs: np.ndarray, gallery: GalleryIndex, pool: int):
    """Per query: (gallery rows, relevance, position -> GalleryItem) of its `pool` best candidates. A plain
    index is read as arrays (items are built only for the hits returned); any other view through `search`."""
    index = getattr(gallery, "index", None)
    if index is None or not hasattr(gallery, "item"):
        for hits in gallery.search(query_vecs, pool):
            yield (np.array([h.row for h in hits], np.int64), np.array([relevance_of(h) for h in hits]),
                   lambda i, hits=hits: hits[i].item)
        return
    scores, rows = index.search(query_vecs, min(pool, len(gallery)))
    for srow, rrow in zip(scores, rows):
        ok = rrow >= 0
        r = rrow[ok].astype(np.int64)
        yield r, srow[ok].astype(np.float64), lambda i, r=r: gallery.item(int(r[i]))


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
