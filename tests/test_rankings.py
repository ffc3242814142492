"""Rankings: pure re-scoring / de-duplication / shift functions, and the aligned ranking over a real index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import get_encoder
from search.gallery_index import write_index
from search.rankings import (
    RankSettings,
    aesthetic_direction,
    aligned,
    baseline,
    demote_near_duplicates,
    expand_queries,
    get_ranking,
    minmax,
    rescore,
    shift,
    shift_query,
)
from search.types import GalleryItem, Hit


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def hit(i: int, score: float, aesthetic: float | None) -> Hit:
    return Hit(GalleryItem(f"g{i}", Path(f"/x/{i}.jpg"), aesthetic=aesthetic), score, i + 1, i, score)


def test_minmax_scales_to_unit_range_and_centres_missing_values() -> None:
    assert minmax([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert minmax([1.0, None, 3.0]).tolist() == [0.0, 0.5, 1.0]
    assert minmax([5.0, 5.0]).tolist() == [0.5, 0.5]
    assert minmax([None, None]).tolist() == [0.5, 0.5]


def test_rescore_trades_relevance_for_aesthetics_by_the_weight() -> None:
    hits = [hit(0, 0.9, 1.0), hit(1, 0.8, 9.0), hit(2, 0.1, 10.0)]
    assert [h.item.id for h in rescore(hits, 0.0)] == ["g0", "g1", "g2"]   # relevance only
    assert [h.item.id for h in rescore(hits, 1.0)] == ["g2", "g1", "g0"]   # aesthetics only
    mixed = rescore(hits, 0.5)
    # g1: 0.5 * (0.7/0.8) + 0.5 * (8/9) is the best mix; g0 and g2 tie at 0.5 and keep their order
    assert [h.item.id for h in mixed] == ["g1", "g0", "g2"]
    assert [h.rank for h in mixed] == [1, 2, 3]
    assert mixed[0].relevance == pytest.approx(0.8)
    assert mixed[0].score == pytest.approx(0.5 * 0.7 / 0.8 + 0.5 * 8 / 9)


def test_near_duplicates_are_moved_behind_the_rest_not_lost() -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal(16)), unit(rng.standard_normal(16))
    near_a = unit(a + 0.05 * rng.standard_normal(16))
    vectors = np.stack([a, near_a, b])
    assert float(a @ near_a) > 0.94 > float(a @ b)
    out = demote_near_duplicates([hit(0, 0.9, None), hit(1, 0.8, None), hit(2, 0.7, None)], vectors, 0.94)
    assert [h.item.id for h in out] == ["g0", "g2", "g1"]
    assert [h.rank for h in out] == [1, 2, 3]
    assert demote_near_duplicates([], np.zeros((0, 16), np.float32)) == []


def test_shift_moves_the_query_toward_the_direction() -> None:
    rng = np.random.default_rng(1)
    q, d = unit(rng.standard_normal((3, 8))), unit(rng.standard_normal(8))
    moved = shift_query(q, d, 0.5)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, rtol=1e-5)
    assert np.all(moved @ d > q @ d)


def test_aesthetic_direction_points_from_worst_to_best() -> None:
    rng = np.random.default_rng(2)
    good = unit(rng.standard_normal(32))
    vecs = unit(rng.standard_normal((200, 32)))
    scores = vecs @ good + 0.05 * rng.standard_normal(200)   # score grows along `good`
    assert float(aesthetic_direction(vecs, scores) @ good) > 0.8


@pytest.fixture(scope="module")
def scored_index(tmp_path_factory: pytest.TempPathFactory):
    """A real index (lite's dimension, FAISS Flat) of 300 random vectors with known aesthetic scores."""
    enc = get_encoder("lite")
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((300, enc.dim)))
    scores = rng.uniform(0, 10, 300)
    folder = tmp_path_factory.mktemp("scored")
    items = []
    for i in range(300):
        path = folder / f"{i}.jpg"
        path.write_bytes(b"x")  # the index only needs an identity (path, size, mtime) for each item
        items.append(GalleryItem(f"g{i}", path, aesthetic=float(scores[i])))
    return write_index(folder / "index", enc, items, vectors), vectors, scores


def test_aligned_ranking_matches_a_numpy_oracle(scored_index) -> None:
    index, vectors, scores = scored_index
    rng = np.random.default_rng(4)
    queries = unit(vectors[:5] + 0.5 * rng.standard_normal(vectors[:5].shape))
    settings = RankSettings(k=10, aesthetic_weight=0.3, candidates=50, dedup=False)
    got = aligned(queries, index, settings)
    for q, row in zip(queries, got):
        sims = vectors @ q
        cand = np.argsort(-sims, kind="stable")[:50]
        rel = (sims[cand] - sims[cand].min()) / (sims[cand].max() - sims[cand].min())
        aes = (scores[cand] - scores[cand].min()) / (scores[cand].max() - scores[cand].min())
        want = cand[np.argsort(-(0.7 * rel + 0.3 * aes), kind="stable")][:10]
        assert [h.row for h in row] == want.tolist()
        assert [h.rank for h in row] == list(range(1, 11))


def test_aligned_raises_the_aesthetics_of_the_top_and_baseline_ignores_them(scored_index) -> None:
    index, vectors, scores = scored_index
    queries = vectors[:20]
    base = baseline(queries, index, RankSettings(k=10))
    al = aligned(queries, index, RankSettings(k=10, aesthetic_weight=0.7))
    assert np.mean([h.item.aesthetic for r in al for h in r]) > np.mean([h.item.aesthetic for r in base for h in r]) + 1
    assert all(r[0].item.id == f"g{i}" for i, r in enumerate(base))  # each vector finds itself first


def test_shift_ranking_needs_scores_and_uses_them(scored_index, tmp_path: Path) -> None:
    index, vectors, _ = scored_index
    assert len(shift(vectors[:2], index, RankSettings(k=5))[0]) == 5
    bare = write_index(tmp_path / "bare", get_encoder("lite"),
                       [GalleryItem(it.id, it.path) for it in index.items[:10]], vectors[:10])
    with pytest.raises(ValueError, match="needs aesthetic scores"):
        shift(vectors[:1], bare, RankSettings(k=5))


def test_query_expansion_matches_a_numpy_oracle_and_keeps_zero_dimensions(scored_index) -> None:
    index, vectors, _ = scored_index
    rng = np.random.default_rng(5)
    queries = unit(vectors[:4] + 0.8 * rng.standard_normal(vectors[:4].shape))
    queries[:, -1] = 0.0                      # e.g. the aesthetic gate's dimension, empty in queries
    queries = unit(queries)
    got = expand_queries(queries, index, k=5, alpha=3.0)
    for q, g in zip(queries, got):
        sims = vectors @ q
        top = np.argsort(-sims)[:5]
        want = q + (np.clip(sims[top], 0, None)[:, None] ** 3 * vectors[top]).sum(0)
        want[-1] = 0.0
        np.testing.assert_allclose(g, want / np.linalg.norm(want), atol=1e-5)
    assert np.all(got[:, -1] == 0)
    # the expanded query is closer to the neighbours it was expanded with, and k=0 changes nothing
    assert float(got[0] @ vectors[0]) > float(queries[0] @ vectors[0])
    np.testing.assert_array_equal(expand_queries(queries, index, k=0, alpha=3.0), queries)


def test_settings_and_names_are_validated() -> None:
    with pytest.raises(ValueError, match="aesthetic_weight must be in 0..1"):
        RankSettings(aesthetic_weight=1.5)
    with pytest.raises(ValueError, match="k and candidates must be >= 1"):
        RankSettings(k=0)
    with pytest.raises(ValueError, match="expand and expand_alpha must be >= 0"):
        RankSettings(expand=-1)
    with pytest.raises(ValueError, match="unknown ranking 'best'; known rankings: baseline, aligned, shift"):
        get_ranking("best")
