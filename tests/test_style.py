"""Style descriptors and the style space (FreestyleRet): real tower, real package photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import pencil_sketch, photo
from PIL import Image

from models.lite import load_image_tower, preprocess_image
from models.style import STYLES, StyleError, StyleSpace, check_readable, describe, gram_descriptors
from search.training.style import fit_space

STYLE_SPACE = Path(__file__).resolve().parent.parent / "models" / "weights" / "style_space.npz"


@pytest.fixture(scope="module")
def tower():
    return load_image_tower()


def descriptors(tower, images: list[Image.Image]) -> np.ndarray:
    import torch

    return gram_descriptors(tower, torch.stack([preprocess_image(im) for im in images]))


@pytest.mark.slow
def test_descriptors_follow_style_not_content(tower) -> None:
    space = StyleSpace.load(STYLE_SPACE)
    cat, coffee, rocket = photo("chelsea.png"), photo("coffee.png"), photo("rocket.jpg")
    z = space.embed(descriptors(tower, [cat, coffee, rocket, pencil_sketch(cat), pencil_sketch(coffee)]))
    sim = z @ z.T
    photo_photo = min(sim[0, 1], sim[0, 2], sim[1, 2])            # different objects, same style
    sketch_sketch = sim[3, 4]
    photo_sketch_same_object = max(sim[0, 3], sim[1, 4])         # same object, different style
    assert photo_photo > photo_sketch_same_object + 0.2, sim.round(2)
    assert sketch_sketch > photo_sketch_same_object + 0.2, sim.round(2)


@pytest.mark.slow
def test_committed_style_space_tells_photos_from_line_drawings(tower) -> None:
    space = StyleSpace.load(STYLE_SPACE)
    images = [photo(n) for n in ("chelsea.png", "coffee.png", "astronaut.png", "motorcycle_left.png")]
    probs = space.style_probs(descriptors(tower, images + [pencil_sketch(im) for im in images]))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    top = [STYLES[i] for i in probs.argmax(1)]
    assert top[:4] == ["photo"] * 4, [describe(p) for p in probs]
    assert all(t in ("sketch", "doodle") for t in top[4:]), [describe(p) for p in probs]  # line drawings


def test_style_space_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    desc = np.concatenate([rng.normal(0.0, 1.0, (30, 40)) + 4.0 * np.eye(40)[i] for i in range(3)])
    styles = ["photo"] * 30 + ["sketch"] * 30 + ["doodle"] * 30
    space = fit_space(desc, styles, k=2, temperature=0.1)
    assert space.base_styles == ["photo"] * 2 + ["sketch"] * 2 + ["doodle"] * 2
    space.save(tmp_path / "s.npz")
    loaded = StyleSpace.load(tmp_path / "s.npz")
    np.testing.assert_allclose(loaded.style_probs(desc), space.style_probs(desc), atol=1e-5)
    assert (space.style_probs(desc).argmax(1) == np.repeat([0, 1, 2], 30)).mean() > 0.9  # photo, sketch, doodle
    assert loaded.base_styles == space.base_styles and loaded.temperature == pytest.approx(0.1)


@pytest.mark.parametrize("image", [Image.new("RGB", (300, 200), "white"), Image.new("RGB", (64, 64), (30, 90, 200)),
                                   Image.new("RGBA", (300, 300), (0, 0, 0, 0))])
def test_blank_or_uniform_images_are_refused(image: Image.Image) -> None:
    with pytest.raises(StyleError, match="blank or a single colour"):
        check_readable(image)


def test_a_drawing_is_readable() -> None:
    check_readable(pencil_sketch(photo("chelsea.png")))


# ---------------------------------------------------------------- style-conditioned encoding (adapters)
def test_adapters_change_query_embeddings_but_never_a_photo_or_the_gallery() -> None:
    import torch

    from models import get_encoder

    enc = get_encoder("lite")
    assert enc.adapters is not None and enc.style_space is not None
    images = [photo("coffee.png"), pencil_sketch(photo("coffee.png")), photo("chelsea.png")]
    pixels = torch.stack([preprocess_image(im) for im in images])
    gallery = enc.encode_image_tensors(pixels)                      # how the index encodes images
    off, probs = enc.encode_query_tensors(pixels, condition=False)
    on, probs_on = enc.encode_query_tensors(pixels, condition=True)
    np.testing.assert_array_equal(off, gallery)                       # no conditioning = gallery encoding
    np.testing.assert_array_equal(probs, probs_on)
    # the style read in the same pass as the embedding is the style of the image's own Gram descriptors
    np.testing.assert_allclose(probs, enc.style_space.style_probs(gram_descriptors(enc.image_tower, pixels)), atol=1e-6)
    assert STYLES[int(probs[1].argmax())] == "sketch"
    # the sketch query moves; a photo conditioned on a pure "photo" mixture is bit-identical to the gallery
    assert float(np.abs(on[1] - gallery[1]).max()) > 1e-3
    # ... in the parts that read the aligned features (bridge, instance); its learned part reads the
    # unconditioned ones, since the heads were fitted on styled queries' frozen features
    cfg, end = enc.heads.cfg, enc.heads.out_dim - enc.heads.cfg.space_dim
    np.testing.assert_allclose(on[1, end - cfg.dim : end], off[1, end - cfg.dim : end], atol=1e-6)
    assert float(np.abs(on[1, end:] - off[1, end:]).max()) > 1e-3
    assert float(np.abs(on[1, : end - cfg.dim] - off[1, : end - cfg.dim]).max()) > 1e-3
    photo_mix = np.eye(len(STYLES), dtype=np.float32)[[STYLES.index("photo")] * 3]
    np.testing.assert_array_equal(enc.encode_image_tensors(pixels, photo_mix), gallery)
    np.testing.assert_allclose(np.linalg.norm(on, axis=1), 1.0, rtol=1e-5)


def test_adapters_save_load_and_validate_their_input(tmp_path: Path, tower) -> None:
    import torch

    from models.lite import late_outputs, shallow_stages
    from models.style_adapters import FIRST_ADAPTED, StyleAdapters

    torch.manual_seed(0)
    a = StyleAdapters.for_tower(tower, rank=2)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0.0, 0.02)
    a.save(tmp_path / "a.pt")
    b = StyleAdapters.load(tmp_path / "a.pt")
    x = shallow_stages(tower, torch.stack([preprocess_image(photo(n)) for n in ("coffee.png", "chelsea.png")]))
    m = torch.softmax(torch.randn(2, len(STYLES)), 1)
    with torch.no_grad():
        a.half().float()  # saved as fp16
        torch.testing.assert_close(late_outputs(tower, x, b, m), late_outputs(tower, x, a, m))
        frozen = late_outputs(tower, x)
        # a pure photo mixture runs the adapted stages with every adapter weighted 0: the frozen tower's outputs
        photo_mix = torch.eye(len(STYLES))[[STYLES.index("photo")] * 2]
        for name, value in late_outputs(tower, x, b, photo_mix).items():
            torch.testing.assert_close(value, frozen[name], rtol=1e-5, atol=1e-5)
        assert (late_outputs(tower, x, b, m)["pooled"] - frozen["pooled"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"style mixture must have shape \(2, 6\), got \(2, 5\)"):
        late_outputs(tower, x, a, m[:, :5])
    blob = torch.load(tmp_path / "a.pt", weights_only=True)
    torch.save({**blob, "first": 1}, tmp_path / "other.pt")                # adapters for another split of the tower
    with pytest.raises(ValueError, match=rf"start at tower block 1, this code adapts from block {FIRST_ADAPTED}"):
        StyleAdapters.load(tmp_path / "other.pt")


@pytest.mark.slow
def test_adapter_training_pulls_sketches_towards_their_photos(tower) -> None:
    """A real (tiny) `fit_adapters` run: package photos and pencil sketches of them; the sketches' rank
    of their own photo, in the alignment space, improves and the loss falls."""
    import torch

    from models.lite import LiteHeads, late_outputs, shallow_stages
    from search.training.adapters import AdapterConfig, Aligner, AlignTask, fit_adapters, onehot

    names = ["chelsea.png", "coffee.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg", "camera.png",
             "retina.jpg", "coins.png"]
    photos = [photo(n) for n in names]
    with torch.no_grad():
        shallow = shallow_stages(tower, torch.stack([preprocess_image(pencil_sketch(im)) for im in photos]))
        targets = late_outputs(tower, shallow_stages(tower, torch.stack([preprocess_image(im) for im in photos])))
    task = AlignTask("sketch->photo", shallow.half(), ["sketch"] * len(names), targets,
                     [[i] for i in range(len(names))])
    heads = LiteHeads.load(STYLE_SPACE.parent / "lite_heads.pt")
    cfg = AdapterConfig(rank=4, steps=30, batch=len(names), lr=5e-3)
    aligner = Aligner(heads, task, cfg)
    mixture = onehot(task.styles)

    def measure(adapters) -> tuple[float, float]:
        with torch.no_grad():
            feats = late_outputs(tower, shallow, adapters, mixture)
            sims = aligner.space(feats) @ aligner.z.T
            rank = (sims > sims.diag()[:, None]).sum(1).float().mean().item()   # 0 = own photo first
            return rank, aligner.loss(feats, list(range(len(names)))).item()

    from models.style_adapters import StyleAdapters

    before = measure(StyleAdapters.for_tower(tower, rank=4))      # zero adapters = the frozen tower
    adapters = fit_adapters(tower, heads, [task], cfg)
    after = measure(adapters)
    assert after[1] < before[1] - 0.5, (before, after)
    assert after[0] < before[0], (before, after)
