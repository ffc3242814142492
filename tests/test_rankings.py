"""Rankings: pure re-scoring / de-duplication / shift functions, and the aligned ranking over a real index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import get_encoder
from search.engine import SearchEngine
from search.examples import TEXT_EXAMPLES
from search.index.gallery_index import aesthetic_direction, write_index
from search.index.sources import default_gallery
from search.rankings import (
    CALIBRATIONS,
    RankSettings,
    aligned,
    baseline,
    collapse_near_duplicates,
    demote_near_duplicates,
    expand_queries,
    get_ranking,
    margin_rescore,
    percentiles,
    shift,
    shift_query,
)
from search.types import GalleryItem, Hit, Query


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def hit(i: int, score: float, aesthetic: float | None) -> Hit:
    return Hit(GalleryItem(f"g{i}", Path(f"/x/{i}.jpg"), aesthetic=aesthetic), score, i + 1, i, score)


def test_percentiles_are_scale_free_and_centre_missing_values() -> None:
    assert percentiles([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert percentiles([20.0, 400.0, 30.0]).tolist() == [0.0, 1.0, 0.5]      # any scorer's units
    assert percentiles([1.0, None, 3.0]).tolist() == [0.0, 0.5, 1.0]
    assert percentiles([5.0, 5.0, 1.0]).tolist() == [0.75, 0.75, 0.0]         # ties share their mid-rank
    assert percentiles([None, None]).tolist() == [0.5, 0.5]
    assert percentiles([7.0]).tolist() == [0.5]


def test_margin_rescore_orders_near_ties_by_aesthetics_only() -> None:
    hits = [hit(0, 0.90, None), hit(1, 0.88, None), hit(2, 0.50, None)]
    quality = [0.0, 1.0, 1.0]
    assert [h.item.id for h in margin_rescore(hits, quality, 0.0)] == ["g0", "g1", "g2"]  # relevance only
    out = margin_rescore(hits, quality, 0.05)
    assert [h.item.id for h in out] == ["g1", "g0", "g2"]   # 0.02 apart: the better-looking first
    assert [h.rank for h in out] == [1, 2, 3]
    assert out[0].relevance == pytest.approx(0.88) and out[0].score == pytest.approx(0.93)
    # g2 is 0.40 below g0: no margin under that lifts it, however good it looks
    assert [h.item.id for h in margin_rescore(hits, quality, 0.39)][-1] == "g2"


@pytest.mark.parametrize("seed", range(5))
def test_an_irrelevant_beautiful_candidate_outside_the_margin_is_never_lifted(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rel = rng.uniform(0, 1, 60)
    quality = rng.uniform(0, 1, 60)
    margin = float(rng.uniform(0.01, 0.3))
    out = margin_rescore([hit(i, float(r), None) for i, r in enumerate(rel)], quality, margin)
    pos = {h.row: n for n, h in enumerate(out)}
    for i in range(60):
        for j in range(60):
            if rel[i] - rel[j] >= margin:          # i clearly more relevant: j never comes first
                assert pos[i] < pos[j], (i, j)
    # the gallery's prettiest image, far less relevant than the best match, stays below it
    hits = [hit(0, 0.60, None), hit(1, 0.30, None), hit(2, 0.29, None)]
    assert [h.item.id for h in margin_rescore(hits, [0.0, 0.5, 1.0], 0.3)][0] == "g0"


def test_near_duplicates_collapse_to_their_best_looking_version() -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal(16)), unit(rng.standard_normal(16))
    near_a = unit(a + 0.05 * rng.standard_normal(16))
    vectors = np.stack([a, b, near_a])
    hits = [hit(0, 0.9, None), hit(1, 0.8, None), hit(2, 0.7, None)]
    # g2 is a better-looking version of g0: it takes g0's place, g0 goes to the end
    out = collapse_near_duplicates(hits, vectors, [0.1, 0.5, 0.9], 0.94)
    assert [h.item.id for h in out] == ["g2", "g1", "g0"]
    assert [h.rank for h in out] == [1, 2, 3]
    # distinct pictures are never swapped, however they look
    assert [h.item.id for h in collapse_near_duplicates(hits, vectors, [0.1, 0.9, 0.0], 0.94)] == ["g0", "g1", "g2"]


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
    settings = RankSettings(k=10, aesthetic_weight=0.5, margin=0.1, candidates=50, dedup=False)
    got = aligned(queries, index, settings)
    pct = (np.argsort(np.argsort(scores)) / (len(scores) - 1))   # distinct scores: rank / (N - 1)
    for q, row in zip(queries, got):
        sims = vectors @ q
        cand = np.argsort(-sims, kind="stable")[:50]
        want = cand[np.argsort(-(sims[cand] + 0.05 * pct[cand]), kind="stable")][:10]
        assert [h.row for h in row] == want.tolist()
        assert [h.rank for h in row] == list(range(1, 11))


def test_aligned_raises_the_aesthetics_of_near_ties_and_keeps_the_clear_match_first(scored_index) -> None:
    index, vectors, scores = scored_index
    queries = vectors[:20]
    base = baseline(queries, index, RankSettings(k=10))
    al = aligned(queries, index, RankSettings(k=10, aesthetic_weight=1.0, margin=0.2))
    mean_aesthetic = lambda rows: np.mean([h.item.aesthetic for r in rows for h in r[1:]])  # noqa: E731
    assert mean_aesthetic(al) > mean_aesthetic(base) + 1
    assert all(r[0].item.id == f"g{i}" for i, r in enumerate(base))  # each vector finds itself first
    assert all(r[0].item.id == f"g{i}" for i, r in enumerate(al))    # ... on the aligned side too


def test_the_encoder_calibration_applies_unless_settings_override_it(scored_index) -> None:
    index, vectors, _ = scored_index
    assert index.meta.encoder in CALIBRATIONS
    q = vectors[:3]
    default = aligned(q, index, RankSettings(k=10))
    explicit = aligned(q, index, RankSettings(k=10, margin=CALIBRATIONS["lite"].margin,
                                              dedup_threshold=CALIBRATIONS["lite"].dedup_threshold))
    assert [[h.row for h in r] for r in default] == [[h.row for h in r] for r in explicit]
    with pytest.raises(ValueError, match="margin must be >= 0"):
        RankSettings(margin=-0.1)


@pytest.fixture(scope="module")
def package_engine(tmp_path_factory: pytest.TempPathFactory) -> SearchEngine:
    """The app's default gallery (package photos), real `lite` vectors and `lite-quality` scores."""
    folder = tmp_path_factory.mktemp("package")
    engine, _ = SearchEngine.build(default_gallery(), "lite", folder / "index", cache_dir=folder)
    return engine


def test_the_aligned_side_keeps_a_relevant_first_image_on_the_default_gallery(package_engine) -> None:
    assert len(TEXT_EXAMPLES) >= 3
    for text in TEXT_EXAMPLES:
        c = package_engine.compare(Query(text=text), RankSettings(k=12))
        base, al = [h.item.id for h in c.baseline], [h.item.id for h in c.aligned]
        assert al[0] in base[:3], (text, base[:3], al[:3])
    textures = {"skimage/grass", "skimage/gravel", "skimage/color", "skimage/brick"}
    for margin in (None, 0.05):   # the calibrated margin, and a wider one
        settings = RankSettings(k=12, margin=margin)
        cat = package_engine.compare(Query(text="a cat"), settings)
        assert cat.aligned[0].item.id == "skimage/chelsea"
        # a clean texture is never lifted by its looks: whatever it passes is within lambda * margin of its
        # relevance (a texture may still show where relevance alone puts it, as on the baseline side)
        width = settings.aesthetic_weight * (CALIBRATIONS["lite"].margin if margin is None else margin)
        for n, h in enumerate(cat.aligned):
            if h.item.id in textures:
                assert all(later.relevance < h.relevance + width + 1e-9 for later in cat.aligned[n + 1:]), (
                    margin, [(x.item.id, round(x.relevance, 3)) for x in cat.aligned[:5]])


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
