"""Aesthetic scorers: the registry, LAION heads (plumbing on a random ViT-B-32), the trained lite-quality
scorer on real package photos, the degradations, training, and the aesthetic-score command."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from models import OfflineError, ScorerError, create_scorer, get_encoder, list_scorers, scorer_for
from models.aesthetic import HEADS, LITE, QualityHead, QualityHeadConfig, head_file, load_head
from models.quality_features import quality_features
from search.cli import main
from search.index.sources import default_gallery
from search.training.aesthetic import AestheticTrainConfig, PairData, fit_head, pair_accuracy
from search.training.degradations import (
    ALL_DEGRADATIONS,
    HELD_OUT_DEGRADATIONS,
    TRAIN_DEGRADATIONS,
    degrade,
    get_degradation,
)

SHARED_HEADS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "aesthetic"
needs_shared = pytest.mark.skipif(not SHARED_HEADS.is_dir(), reason="../shared/weights/aesthetic is absent")


def package_photos(max_side: int = 256) -> list[Image.Image]:
    """The default gallery's photos, shrunk so that tests stay fast (a shrunk photo is the original)."""
    out = []
    for item in default_gallery():
        im = Image.open(item.path).convert("RGB")
        im.thumbnail((max_side, max_side), Image.BICUBIC)
        out.append(im)
    return out


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return package_photos()


# ---------------------------------------------------------------- registry errors
def test_unknown_scorer_lists_the_known_ones() -> None:
    assert list_scorers()[0] == LITE and set(HEADS) <= set(list_scorers())
    with pytest.raises(ScorerError, match=r"unknown aesthetic scorer 'nope'; known scorers: lite-quality, laion-v2"):
        create_scorer("nope")


def test_a_head_needs_its_encoder() -> None:
    with pytest.raises(ScorerError, match=r"'laion-v1-vit-b-32' scores embeddings: pass the encoder 'ViT-B-32-openai'"):
        create_scorer("laion-v1-vit-b-32")


def test_a_head_is_refused_on_another_space() -> None:
    with pytest.raises(ScorerError, match=r"scores OpenAI CLIP ViT-L-14 image embeddings \(768-d, pretrained 'openai'\)"
                                          r", but encoder 'lite' is LiteEncoder .*Use encoder 'ViT-L-14-openai'"):
        create_scorer("laion-v2-vit-l-14", get_encoder("lite"), allow_mismatch=True)  # other size: never allowed


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lite-quality weights .*none\.pt not found; train them with "
                                                r"`python -m search train-aesthetic"):
        create_scorer(LITE, path=tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match=r"aesthetic head file .*gone\.pth not found \(public copy of "
                                                r"laion-v1-vit-b-32: https://github.com/LAION-AI"):
        head_file(HEADS["laion-v1-vit-b-32"], tmp_path / "gone.pth")


def test_offline_download_fails_fast_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the project's switch for "no network"
    start = time.monotonic()
    with pytest.raises(OfflineError, match=r"cannot download the laion-v2-vit-l-14 aesthetic head: github\.com is "
                                           r"unreachable .*use the offline scorer 'lite-quality'"):
        head_file(HEADS["laion-v2-vit-l-14"], cache_dir=tmp_path)
    assert time.monotonic() - start < 5


def test_a_wrong_head_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1, 10), "bias": torch.zeros(1)}, bad)
    with pytest.raises(ScorerError, match=r"bad\.pth is not a laion-v1-vit-b-32 head \(linear, 512-d input"):
        load_head(HEADS["laion-v1-vit-b-32"], bad)


def test_lite_weights_from_other_statistics_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    QualityHead(QualityHeadConfig(("sharpness", "noise"))).save(path)
    with pytest.raises(ScorerError, match=r"trained on other image statistics .*retrain it: python -m search "
                                          r"train-aesthetic"):
        create_scorer(LITE, path=path)


# ---------------------------------------------------------------- LAION heads
@needs_shared
def test_v2_head_file_loads_into_the_mlp() -> None:
    head = load_head(HEADS["laion-v2-vit-l-14"], SHARED_HEADS / "sac+logos+ava1-l14-linearMSE.pth")
    x = torch.nn.functional.normalize(torch.randn(5, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = head(x)
    assert y.shape == (5, 1) and torch.isfinite(y).all()


@pytest.fixture(scope="module")
def random_vit() -> object:
    return get_encoder("open_clip:ViT-B-32")  # random weights: the head's numbers are meaningless here


@needs_shared
@pytest.mark.slow
def test_laion_head_plumbing_on_a_random_vit(random_vit, photos, caplog) -> None:
    path = SHARED_HEADS / "sa_0_4_vit_b_32_linear.pth"
    with pytest.raises(ScorerError, match=r"encoder 'open_clip:ViT-B-32' is open_clip ViT-B-32 with weights "
                                          r"'random-seed0' \(512-d\).*allow_mismatch=True"):
        create_scorer("laion-v1-vit-b-32", random_vit, path=path)
    with caplog.at_level(logging.WARNING, logger="models.aesthetic"):
        scorer = create_scorer("laion-v1-vit-b-32", random_vit, path=path, allow_mismatch=True)
    assert "its scores would be noise" in caplog.text
    images = photos[:4]
    scores = scorer.score_images(images)
    assert scores.shape == (4,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    # oracle: the state dict's linear map on unit-norm embeddings
    emb = random_vit.encode_images(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    state = torch.load(path, weights_only=True)
    expected = emb @ state["weight"].numpy()[0] + state["bias"].numpy()[0]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # inputs are L2-normalised before the head: scaling an embedding changes nothing
    np.testing.assert_allclose(scorer.score_embeddings(emb * 7.5), scores, rtol=1e-4, atol=1e-5)
    with pytest.raises(ScorerError, match=r"scores \(512,\)-d embeddings, got an array of shape \(4, 768\)"):
        scorer.score_embeddings(np.ones((4, 768), np.float32))
    assert scorer.fingerprint.startswith("laion-v1-vit-b-32@")
    assert scorer_for(random_vit).name == LITE  # no public head fits random weights


# ---------------------------------------------------------------- lite-quality
@pytest.mark.slow
def test_lite_scorer_ranks_package_photos_above_degraded_copies(photos) -> None:
    """Held-out degradations (never trained on), several per photo: the original must win most pairs."""
    scorer = create_scorer(LITE)
    assert scorer_for(get_encoder("lite")).fingerprint == scorer.fingerprint
    wins = []
    for i, im in enumerate(photos):
        copies = [HELD_OUT_DEGRADATIONS[(i * 4 + k) % len(HELD_OUT_DEGRADATIONS)](im, seed=i) for k in range(4)]
        copies = [c for c in copies if ImageChops.difference(c, im).getbbox() is not None]  # grey photo: no-op
        s = scorer.score_images([im, *copies])
        wins += list(s[0] > s[1:])
    assert len(wins) >= 70 and np.mean(wins) >= 0.8, f"{np.mean(wins):.2f} of {len(wins)} pairs"


def test_scores_are_deterministic_and_cheap(photos) -> None:
    scorer = create_scorer(LITE)
    first = scorer.score_images(photos[:6])
    assert first.shape == (6,) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, create_scorer(LITE).score_images(photos[:6]))
    assert scorer.score_images([]).shape == (0,)
    assert scorer.score_images([photos[0].convert("L")]).shape == (1,)  # any mode
    start = time.process_time()
    scorer.score_images(photos[:6])
    assert (time.process_time() - start) / 6 < 0.05  # seconds per image; the lite encoder needs ~0.04


def test_training_learns_to_rank_originals_first(photos) -> None:
    """The real training step on real photos: a few package photos, a few degradations each."""
    rng = np.random.default_rng(0)
    feats, which = [], []
    for i, im in enumerate(photos[:10]):
        chosen = rng.choice(len(TRAIN_DEGRADATIONS), 3, replace=False)
        feats.append(np.stack([quality_features(x) for x in [im] + [TRAIN_DEGRADATIONS[j](im, i) for j in chosen]]))
        which.append(chosen)
    data = PairData(np.stack(feats), np.stack(which))
    head = fit_head(data, AestheticTrainConfig(steps=150))
    acc = pair_accuracy(head, data)
    assert acc["all"] >= 0.9, acc
    scores = head(torch.from_numpy(data.feats[:, 0]))
    assert abs(float(scores.mean())) < 1e-4  # the mean training original scores 0


# ---------------------------------------------------------------- degradations
def test_degradations_keep_size_change_pixels_and_repeat_with_a_seed(photos) -> None:
    im = photos[1].resize((150, 100))  # a colour photo (the cat), not square
    for d in ALL_DEGRADATIONS:
        out = d(im, seed=3)
        assert out.size == im.size and out.mode == "RGB", d.id
        assert ImageChops.difference(out, im).getbbox() is not None, f"{d.id} left the image unchanged"
        assert ImageChops.difference(out, d(im, seed=3)).getbbox() is None, f"{d.id} is not deterministic"
    assert ImageChops.difference(degrade(im, "crop:0.25", 1), degrade(im, "crop:0.25", 2)).getbbox() is not None


def test_degradation_lists_and_lookup() -> None:
    ids = [d.id for d in ALL_DEGRADATIONS]
    assert len(ids) == len(set(ids))
    new_types = {d.name for d in HELD_OUT_DEGRADATIONS} - {d.name for d in TRAIN_DEGRADATIONS}
    assert {"motion_blur", "salt_pepper", "pixelate", "posterize", "vignette", "haze"} <= new_types
    assert get_degradation("jpeg:15").strength == 15 and get_degradation("greyscale").strength == 0
    with pytest.raises(ValueError,
                       match=r"degradation type 'jpeg' has several strengths; give one of jpeg:35, jpeg:15"):
        get_degradation("jpeg")
    with pytest.raises(ValueError, match=r"unknown degradation 'smudge'; known: gaussian_blur:1.2"):
        degrade(Image.new("RGB", (8, 8)), "smudge")


# ---------------------------------------------------------------- the command
def test_aesthetic_score_cli_writes_jsonl_and_reports_bad_files(tmp_path: Path, capsys) -> None:
    items = default_gallery()[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    out = tmp_path / "scores.jsonl"
    assert main(["aesthetic-score", str(items[0].path), str(corrupt), str(items[1].path), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(items[0].path), str(items[1].path)]
    assert all(isinstance(r["score"], float) for r in rows)
    err = capsys.readouterr().err
    assert f"skipped {corrupt}: not a readable image" in err and "2 image(s) scored with lite-quality@" in err
    # to stdout, with the scorer named; same scores
    assert main(["aesthetic-score", str(items[0].path), "--scorer", LITE]) == 0
    assert json.loads(capsys.readouterr().out) == rows[0]


def test_aesthetic_score_cli_names_unknown_scorers(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["aesthetic-score", "x.jpg", "--scorer", "nope"])
    assert e.value.code == 2 and "unknown aesthetic scorer 'nope'" in capsys.readouterr().err
