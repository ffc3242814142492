"""Retrieval metrics over ranked lists. Pure functions; every value is a fraction in 0..1."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

METRICS = ("R@1", "R@5", "R@10", "mAP", "P@10")
AESTHETIC_METRICS = ("aes@10", "orig@10")  # mean aesthetic score and share of originals in the top 10


def query_metrics(ranked: Sequence[str], relevant: Iterable[str]) -> dict[str, float]:
    """Metrics of one query.

    ranked: gallery ids, best first (the full ranking, so AP sees every relevant item).
    relevant: the ids that count as hits. R@k is 1 if any relevant id is in the top k;
    mAP is the average precision over all relevant ids (a relevant id never ranked counts 0);
    P@10 is the fraction of the top 10 that is relevant.
    """
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one relevant id")
    hits = np.array([r in rel for r in ranked], dtype=bool)
    positions = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant items found
    precision_at_hits = np.arange(1, len(positions) + 1) / positions
    return {
        "R@1": float(hits[:1].any()),
        "R@5": float(hits[:5].any()),
        "R@10": float(hits[:10].any()),
        "mAP": float(precision_at_hits.sum() / len(rel)),
        "P@10": float(hits[:10].sum() / 10),
    }


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-query metrics; `n` is the number of queries."""
    out = {m: float(np.mean([q[m] for q in per_query])) if per_query else 0.0 for m in METRICS}
    out.update({m: float(np.mean([q[m] for q in per_query])) for m in AESTHETIC_METRICS
                if per_query and all(m in q for q in per_query)})
    out["n"] = len(per_query)
    return out


def rank_all(query_vecs: np.ndarray, gallery_vecs: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Full rankings (Q, G) of gallery rows by inner product, best first; ties keep gallery order."""
    out = np.empty((len(query_vecs), len(gallery_vecs)), dtype=np.int64)
    for i in range(0, len(query_vecs), chunk):
        scores = query_vecs[i : i + chunk] @ gallery_vecs.T
        out[i : i + chunk] = np.argsort(-scores, axis=1, kind="stable")
    return out
