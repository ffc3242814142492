"""Pixel signatures find versions of one picture that the semantic embedding misses; the aligned ranking
collapses them to the best-looking one."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import photo

from search.engine import SearchEngine
from search.index import pixel_signature
from search.index.pixel_signature import DUPLICATE_THRESHOLD, signature
from search.rankings import RankSettings, aligned, blend_rephrasing, pixel_signatures
from search.training.degradations import get_degradation
from search.types import GalleryItem, Query

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
# held-out degradation types (never used to choose the threshold), including those lite's vectors miss most
HELD_OUT = ["motion_blur:16", "pixelate:8", "haze:0.55", "vignette:0.9", "salt_pepper:0.04", "jpeg:8", "gamma:2.4",
            "lens_blur:4", "brightness_shift:-50"]


@pytest.mark.parametrize("name", PHOTOS[:3])
def test_degraded_copies_keep_their_signature_and_distinct_photos_do_not_share_one(name: str) -> None:
    original = photo(name)
    sig = signature(original)
    assert sig.shape == (256,) and abs(float(np.linalg.norm(sig)) - 1) < 1e-5
    for d in HELD_OUT:
        copy = get_degradation(d)(original, seed=1)
        assert float(signature(copy) @ sig) >= DUPLICATE_THRESHOLD, d
    for other in PHOTOS:
        if other != name:
            assert float(signature(photo(other)) @ sig) < DUPLICATE_THRESHOLD, other


def test_the_stored_form_keeps_the_cosine() -> None:
    a, b = signature(photo("chelsea.png")), signature(photo("coffee.png"))
    da, db = pixel_signature.decode(pixel_signature.encode(a)), pixel_signature.decode(pixel_signature.encode(b))
    assert float(da @ a) > 0.999 and abs(float(da @ db) - float(a @ b)) < 0.01
    for x, y in itertools.combinations([a, b], 2):
        assert float(x @ y) < DUPLICATE_THRESHOLD


@pytest.fixture(scope="module")
def copies_engine(tmp_path_factory: pytest.TempPathFactory) -> SearchEngine:
    """Six real photos and a motion-blurred and a pixelated JPEG copy of the cat, indexed by `lite`."""
    folder = tmp_path_factory.mktemp("copies")
    items = []
    for name in PHOTOS:
        path = folder / f"{Path(name).stem}.png"
        photo(name).save(path)
        items.append(GalleryItem(Path(name).stem, path))
    for d in ("motion_blur:16", "pixelate:8"):
        path = folder / f"chelsea-{d.replace(':', '-')}.jpg"
        get_degradation(d)(photo("chelsea.png"), seed=0).save(path, quality=95)
        items.append(GalleryItem(f"chelsea~{d}", path))
    engine, _ = SearchEngine.build(items, "lite", folder / "index", cache_dir=folder)
    return engine


def test_the_index_stores_each_image_signature(copies_engine: SearchEngine) -> None:
    gallery = copies_engine.gallery
    rows = list(range(len(gallery)))
    stored = pixel_signatures(gallery, rows)
    cat = gallery.row_of("chelsea")
    for r in rows:
        assert gallery.rows[r]["pixels"]
    fresh = signature(photo("chelsea.png"))
    assert float(stored[cat] @ fresh) > 0.99
    copies = [gallery.row_of(f"chelsea~{d}") for d in ("motion_blur:16", "pixelate:8")]
    assert all(float(stored[c] @ stored[cat]) >= DUPLICATE_THRESHOLD for c in copies)
    # an index written before signatures were stored: made from the thumbnail; without one, a duplicate of nothing
    older = {k: v for k, v in gallery.rows[cat].items() if k != "pixels"}
    from_thumbnail, nothing = pixel_signature.signatures([older, {"path": "x.png"}], gallery.root)
    assert float(from_thumbnail @ stored[cat]) > 0.98 and not nothing.any()


def test_the_aligned_side_shows_one_version_of_a_picture_even_when_vectors_differ(copies_engine) -> None:
    versions = {"chelsea", "chelsea~motion_blur:16", "chelsea~pixelate:8"}
    query = Query(text="a cat")
    base = [h.item.id for h in copies_engine.search(query, k=8)]
    assert sum(i in versions for i in base[:3]) >= 2     # the baseline shows the cat twice or more at the top
    # semantic de-duplication off (threshold above any cosine): the pixel signatures alone group the versions
    settings = RankSettings(k=8, dedup_threshold=1.01)
    aligned = [h.item.id for h in copies_engine.search(query, k=8, ranking="aligned", settings=settings)]
    assert aligned[0] in versions
    assert not versions & set(aligned[1:6])             # the other versions went behind every distinct photo
    assert sorted(aligned) == sorted(base)               # nothing lost
    no_dedup = RankSettings(k=8, dedup=False, rephrase_weight=0.0)
    assert [h.item.id for h in copies_engine.search(query, k=8, ranking="aligned", settings=no_dedup)] == base


def test_the_rephrasing_is_blended_with_the_text_as_typed() -> None:
    rng = np.random.default_rng(0)
    typed, rephrased = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 32)))
    assert np.allclose(blend_rephrasing(typed, rephrased, 0.0), typed, atol=1e-6)
    assert np.allclose(blend_rephrasing(typed, rephrased, 1.0), rephrased, atol=1e-6)
    half = blend_rephrasing(typed, rephrased, 0.5)
    assert abs(float(np.linalg.norm(half)) - 1) < 1e-5
    assert float(half @ typed) == pytest.approx(float(half @ rephrased), abs=1e-5)


def test_a_version_outside_the_candidates_replaces_a_worse_looking_copy(copies_engine) -> None:
    """A degraded copy can be far from its original in meaning: the original is found in the whole gallery."""
    gallery = copies_engine.gallery
    copy = gallery.row_of("chelsea~pixelate:8")
    cat = gallery.row_of("chelsea")
    assert gallery.rows[cat]["aesthetic"] > gallery.rows[copy]["aesthetic"]   # the scorer prefers the original
    query = gallery.vectors([copy])                                          # the copy is the only candidate
    (hits,) = aligned(query, gallery, RankSettings(k=2, candidates=1, dedup_threshold=1.01))
    # the original takes the copy's place, the copy follows (a candidate is never lost); the other version,
    # not a candidate, is not pulled in
    assert [h.item.id for h in hits] == ["chelsea", "chelsea~pixelate:8"]
    assert hits[0].relevance == pytest.approx(float(query[0] @ gallery.vectors([cat])[0]), abs=1e-5)
