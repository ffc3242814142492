"""search.evaluation.metrics: per-query metrics on hand-computed rankings; rank_all against a brute-force oracle."""
from __future__ import annotations

import numpy as np
import pytest

from search.evaluation.metrics import METRICS, mean_metrics, query_metrics, rank_all

IDS = [f"g{i:02d}" for i in range(1, 21)]  # a ranking of 20 gallery ids; IDS[k - 1] is at rank k


def at(*ranks: int) -> list[str]:
    """The ids at these 1-based ranks of IDS."""
    return [IDS[r - 1] for r in ranks]


# ---------------------------------------------------------------- query_metrics, by hand
@pytest.mark.parametrize(("relevant", "expected"), [
    # one relevant id at rank 1: a perfect query
    (at(1), {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": 1.0, "P@10": 0.1}),
    # at rank 5: still inside the top 5
    (at(5), {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP": 1 / 5, "P@10": 0.1}),
    # at rank 6: only the top 10 catches it
    (at(6), {"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "mAP": 1 / 6, "P@10": 0.1}),
    # at rank 10: the last place that counts for R@10 and P@10
    (at(10), {"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "mAP": 1 / 10, "P@10": 0.1}),
    # at rank 11: a miss for every cut-off, but AP still sees it
    (at(11), {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP": 1 / 11, "P@10": 0.0}),
    # ranks 3 and 8, plus one id the ranking never contains: AP = (1/3 + 2/8) / 3
    ([*at(3, 8), "never-ranked"], {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP": (1 / 3 + 2 / 8) / 3, "P@10": 0.2}),
    # ranks 1, 2, 4, 12: AP = (1/1 + 2/2 + 3/4 + 4/12) / 4; three of them in the top 10
    (at(12, 4, 2, 1), {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": (1 + 1 + 3 / 4 + 4 / 12) / 4, "P@10": 0.3}),
    # the whole top 10 relevant, and two more further down at 15 and 20
    (at(*range(1, 11), 15, 20),
     {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": (10 + 11 / 15 + 12 / 20) / 12, "P@10": 1.0}),
    # only ids that are never ranked: everything is 0
    (["x", "y"], {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP": 0.0, "P@10": 0.0}),
])
def test_query_metrics_by_hand(relevant: list[str], expected: dict[str, float]) -> None:
    got = query_metrics(IDS, relevant)
    assert set(got) == set(METRICS)
    assert got == pytest.approx(expected, abs=1e-12)
    assert all(isinstance(v, float) for v in got.values())


def test_query_metrics_takes_any_iterable_and_ignores_duplicate_relevant_ids() -> None:
    # AP divides by the number of *distinct* relevant ids: {g03, g08} at ranks 3 and 8.
    expected = {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP": (1 / 3 + 2 / 8) / 2, "P@10": 0.2}
    assert query_metrics(IDS, iter(["g03", "g08", "g03"])) == pytest.approx(expected)
    assert query_metrics(tuple(IDS), frozenset({"g03", "g08"})) == pytest.approx(expected)


def test_p_at_10_divides_by_10_even_for_a_short_ranking() -> None:
    # A gallery of 3 images, all relevant: P@10 is 3/10 (the fixed-k convention), AP is 1.
    got = query_metrics(["a", "b", "c"], ["a", "b", "c"])
    assert got == pytest.approx({"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": 1.0, "P@10": 0.3})


def test_query_metrics_on_an_empty_ranking_is_all_zero() -> None:
    assert query_metrics([], ["a"]) == {m: 0.0 for m in METRICS}


def test_query_without_relevant_ids_is_an_error() -> None:
    with pytest.raises(ValueError, match="a query needs at least one relevant id"):
        query_metrics(IDS, [])


# ---------------------------------------------------------------- mean_metrics
def test_mean_metrics_averages_each_metric_and_counts_queries() -> None:
    per_query = [query_metrics(IDS, at(1)), query_metrics(IDS, at(6)), query_metrics(IDS, at(11))]
    got = mean_metrics(per_query)
    assert got == pytest.approx({"R@1": 1 / 3, "R@5": 1 / 3, "R@10": 2 / 3, "mAP": (1 + 1 / 6 + 1 / 11) / 3,
                                 "P@10": 0.2 / 3, "n": 3})
    assert got["n"] == 3 and isinstance(got["n"], int)


def test_mean_metrics_of_no_queries_is_zero_with_n_0() -> None:
    assert mean_metrics([]) == {**{m: 0.0 for m in METRICS}, "n": 0}


# ---------------------------------------------------------------- rank_all vs a brute-force oracle
def oracle_rankings(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Each row: gallery indices sorted by descending inner product, ties by ascending index.

    Works in exact integer arithmetic, so ties are real ties (the inputs are integer-valued).
    """
    q, g = queries.astype(np.int64), gallery.astype(np.int64)
    rows = []
    for qv in q:
        scores = [int(qv @ gv) for gv in g]
        rows.append(sorted(range(len(g)), key=lambda j: (-scores[j], j)))
    return np.array(rows, dtype=np.int64).reshape(len(q), len(g))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_rank_all_matches_brute_force_oracle_including_ties(chunk: int) -> None:
    rng = np.random.default_rng(0)
    # Small integer entries make every inner product exact in float32, so ties are exact and the
    # tie rule (gallery order) is tested for real: duplicate gallery rows tie with each other.
    gallery = rng.integers(-3, 4, size=(40, 8)).astype(np.float32)
    gallery[[5, 17, 33]] = gallery[11]          # four identical rows -> tied scores for every query
    gallery[29] = 0                             # a zero row ties with anything scoring 0
    queries = rng.integers(-3, 4, size=(23, 8)).astype(np.float32)
    queries[4] = gallery[11]                    # a query equal to the duplicated rows
    got = rank_all(queries, gallery, chunk=chunk)
    assert got.shape == (23, 40) and got.dtype == np.int64
    np.testing.assert_array_equal(got, oracle_rankings(queries, gallery))
    # for every query the four identical rows (equal scores) come out in gallery order
    for row in got.tolist():
        assert [j for j in row if j in (5, 11, 17, 33)] == [5, 11, 17, 33]


def test_rank_all_orders_unit_vectors_by_score() -> None:
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((300, 64)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = rng.standard_normal((50, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    got = rank_all(queries, gallery, chunk=16)
    assert (np.sort(got, axis=1) == np.arange(300)).all()  # every row is a permutation of the gallery
    # Brute force in float64: the scores read along each ranking are the scores sorted best first
    # (to float32 rounding; near-ties may legitimately swap, so compare scores, not indices).
    scores = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    along = np.take_along_axis(scores, got, axis=1)
    np.testing.assert_allclose(along, -np.sort(-scores, axis=1), atol=1e-6)
    assert got[:, 0].tolist() == scores.argmax(1).tolist()


def test_rank_all_with_no_queries_or_no_gallery() -> None:
    assert rank_all(np.zeros((0, 4), np.float32), np.ones((5, 4), np.float32)).shape == (0, 5)
    assert rank_all(np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32)).shape == (3, 0)
