"""Near-duplicate re-rank of low-res queries: colour-layout signatures, the re-rank, and the engine wiring."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.index.sources import default_gallery
from search.layout import THRESHOLD, is_lowres, rerank_near_duplicates, signature
from search.types import GalleryItem, Hit

PHOTOS = {it.id: it for it in default_gallery()}


def _open(item_id: str) -> Image.Image:
    return Image.open(PHOTOS[item_id].path).convert("RGB")


def _tiny(im: Image.Image, side: int = 32) -> Image.Image:
    small = im.copy()
    small.thumbnail((side, side), Image.BICUBIC)
    return small


def _mosaic(im: Image.Image, block: int = 16) -> Image.Image:
    return im.resize((max(1, im.width // block), max(1, im.height // block)), Image.BOX).resize(im.size, Image.NEAREST)


def test_a_thumbnail_or_mosaic_keeps_its_photo_layout_and_other_photos_do_not_share_it() -> None:
    ids = ["skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/astronaut", "skimage/motorcycle_left"]
    sigs = np.stack([signature(_open(i)) for i in ids])
    assert sigs.shape == (5, 48) and np.allclose(np.linalg.norm(sigs, axis=1), 1, atol=1e-5)
    for i, item in enumerate(ids):
        for view in (_tiny(_open(item)), _mosaic(_open(item))):
            sims = sigs @ signature(view)
            assert sims[i] > THRESHOLD, (item, sims)
            assert np.delete(sims, i).max() < THRESHOLD, (item, sims)
    flat = signature(Image.new("RGB", (40, 30), (90, 90, 90)))
    assert np.isfinite(flat).all()  # a uniform image has no layout: no NaN


def _hit(name: str, score: float, rank: int) -> Hit:
    return Hit(GalleryItem(name, Path(f"/{name}.jpg")), score, rank)


def test_rerank_lifts_near_duplicates_only() -> None:
    hits = [_hit("a", 0.9, 1), _hit("b", 0.8, 2), _hit("c", 0.7, 3)]
    q = np.eye(48)[0]
    cands = np.stack([np.eye(48)[1], np.eye(48)[2], np.eye(48)[0]])  # only c has the query's layout
    out = rerank_near_duplicates(hits, q, cands)
    assert [h.item.id for h in out] == ["c", "a", "b"] and [h.rank for h in out] == [1, 2, 3]
    assert out[0].relevance == pytest.approx(0.7) and out[0].score == pytest.approx(1.7)
    below = np.stack([np.eye(48)[1], np.eye(48)[2], np.eye(48)[0] * 0.8 + np.eye(48)[3] * 0.6])  # cosine 0.8
    assert [h.item.id for h in rerank_near_duplicates(hits, q, below)] == ["a", "b", "c"]


def test_is_lowres_reads_the_style_mixture() -> None:
    from models.style import STYLES

    def mix(lowres: float) -> np.ndarray:
        m = np.zeros(len(STYLES), np.float32)
        m[STYLES.index("lowres")], m[STYLES.index("photo")] = lowres, 1 - lowres
        return m

    assert is_lowres(mix(0.7)) and not is_lowres(mix(0.3)) and not is_lowres(None)


@pytest.mark.slow
def test_engine_finds_the_original_of_a_thumbnail_first_with_style_on(default_engine) -> None:  # noqa: ANN001
    """The built-in gallery and the real lite encoder: a 32-px thumbnail of each photo, detected as low-res,
    brings back its original at rank 1 on both sides; with style conditioning off nothing is re-ranked."""
    from search.types import Query

    engine = default_engine
    ids = ["skimage/chelsea", "skimage/coffee", "skimage/rocket", "skimage/astronaut", "skimage/motorcycle_left"]
    for item in ids:
        query = Query(image=_tiny(_open(item)))
        assert engine.encode(query).style.startswith("lowres"), engine.encode(query).style
        both = engine.compare(query)
        assert both.baseline[0].item.id == item and both.aligned[0].item.id == item, item
        assert engine.search(query, k=3)[0].item.id == item
        plain = engine.compare(query, style=False)
        assert all(h.relevance is None or h.relevance == h.score for h in plain.baseline)
