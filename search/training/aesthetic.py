"""`python -m search train-aesthetic`: the `lite-quality` scorer, RankIQA-style, from train photos only.

Each sampled `train` photo (PACS, ImageNet and Sketchy photos; COCO has no train split) gets a few
random TRAIN_DEGRADATIONS; the head (models.aesthetic.QualityHead over models.quality_features) learns
to score the original above each degraded copy, and a milder copy above a stronger one of the same
type, with a pairwise logistic loss. A share of the photos is held out as dev to choose the one
hyper-parameter (the weight floor of the distance-from-pristine-photos term) by dev accuracy, both with
every type trained and with each type left out of training in turn (a stand-in for the unseen
degradations the scorer will meet); then the head is refit on all photos and saved.
Runtime: ~3 minutes on one core (statistics of 1200 photos x 6 images, then ~50 small fits).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.aesthetic import QualityHead, QualityHeadConfig
from models.quality_features import FEATURE_NAMES, quality_features
from search.index.images import ImageLoadError, load_image
from search.training.degradations import TRAIN_DEGRADATIONS, Degradation

log = logging.getLogger(__name__)

PHOTO_DATASETS = ("pacs", "imagenet", "sketchy", "coco")


@dataclass(frozen=True)
class AestheticTrainConfig:
    photos: int = 1200           # train photos sampled (statistics cost ~10 ms per image and copy)
    per_photo: int = 5           # degraded copies per photo (distinct TRAIN_DEGRADATIONS, drawn at random)
    floors: tuple[float, ...] = (0.3, 1.0, 3.0)  # naturalness floors tried on dev (models.aesthetic.QualityHead)
    weight_decay: float = 0.03   # L2 penalty on the linear weights (small: statistics are few and correlated)
    steps: int = 800             # optimiser steps (batches of 256 photos)
    lr: float = 0.02
    dev_fraction: float = 0.25   # photos held out for choosing the floor, before the final refit on all
    seed: int = 0


def photo_paths(data: str | Path, split: str, datasets: tuple[str, ...] = PHOTO_DATASETS) -> list[Path]:
    """Every photo of `split` in the data folder's datasets (style == "photo"), sorted."""
    data = Path(data)
    out = []
    for ds in datasets:
        f = data / ds / "items.jsonl"
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row.get("style") == "photo" and row.get("split") == split:
                out.append(data / ds / row["path"])
    return sorted(out)


@dataclass(frozen=True)
class PairData:
    """Image statistics of originals and their degraded copies."""

    feats: np.ndarray         # (N, 1 + copies, D) float32: [original, copies...] per photo
    degradations: np.ndarray  # (N, copies) int: index into TRAIN_DEGRADATIONS of each copy


def extract(paths: list[Path], per_photo: int, seed: int) -> PairData:
    """Statistics of each readable photo and of `per_photo` distinct random TRAIN degradations of it."""
    degradations = TRAIN_DEGRADATIONS
    rng = np.random.default_rng(seed)
    feats, which = [], []
    for i, path in enumerate(tqdm(paths, desc="quality features", unit="photo")):
        try:
            im = load_image(path)
        except ImageLoadError as e:
            log.warning("skipped %s", e)
            continue
        chosen = rng.choice(len(degradations), per_photo, replace=False)
        copies = [degradations[j](im, seed=seed * 1_000_003 + i * 101 + int(j)) for j in chosen]
        feats.append(np.stack([quality_features(x) for x in (im, *copies)]))
        which.append(chosen)
    return PairData(np.stack(feats), np.stack(which))


def _pairs(which: np.ndarray, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(better, worse) rows of each photo: the original above every copy, a milder copy above a stronger
    one of the same type; none involving a copy of type `exclude`. (N, P) arrays, -1 pads."""
    rows = []
    for chosen in which:
        ds = [TRAIN_DEGRADATIONS[j] for j in chosen]
        pairs = [(0, k + 1) for k, d in enumerate(ds) if d.name != exclude]
        pairs += [(a + 1, b + 1) for a, da in enumerate(ds) for b, db in enumerate(ds)
                  if da.name == db.name != exclude and _rank(da) < _rank(db)]
        rows.append(pairs)
    width = max(1, max(len(p) for p in rows))
    better, worse = np.full((len(rows), width), -1), np.full((len(rows), width), -1)
    for i, pairs in enumerate(rows):
        if pairs:
            better[i, : len(pairs)], worse[i, : len(pairs)] = zip(*pairs)
    return better, worse


def _rank(d: Degradation) -> int:
    """Position of `d` among the strengths of its type (TRAIN_DEGRADATIONS lists them mild to strong)."""
    return [x.strength for x in TRAIN_DEGRADATIONS if x.name == d.name].index(d.strength)


def fit_head(data: PairData, cfg: AestheticTrainConfig, floor: float | None = None,
             exclude: str | None = None) -> QualityHead:
    """Fit the head on `data` (without pairs of type `exclude`: leave-one-type-out)."""
    torch.manual_seed(cfg.seed)
    head = QualityHead(QualityHeadConfig(FEATURE_NAMES, cfg.floors[0] if floor is None else floor))
    x = torch.from_numpy(data.feats).double()                          # (N, 1 + copies, D)
    originals = x[:, 0]
    head.mean.copy_(originals.mean(0))
    head.std.copy_(originals.std(0) + 1e-6)
    z = head.standardise(originals)
    cov = torch.cov(z.T)
    cov = 0.9 * cov + 0.1 * torch.diag(torch.diag(cov)) + 1e-3 * torch.eye(len(cov), dtype=cov.dtype)  # shrinkage
    head.natural_centre.copy_(z.median(0).values)
    head.natural_precision.copy_(torch.linalg.inv(cov))
    better, worse = (torch.from_numpy(a) for a in _pairs(data.degradations, exclude))
    valid = better >= 0
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    xf = x.float()
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(xf), (256,), generator=gen)
        s = head(xf[idx])                                              # (B, 1 + copies)
        margin = s.gather(1, better[idx].clamp(min=0)) - s.gather(1, worse[idx].clamp(min=0))
        v = valid[idx]
        loss = (torch.nn.functional.softplus(-margin) * v).sum() / v.sum().clamp(min=1)
        loss = loss + cfg.weight_decay * (head.weight**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval().requires_grad_(False)
    head.offset.copy_(head(xf[:, 0]).mean())
    return head


@torch.inference_mode()
def pair_accuracy(head: QualityHead, data: PairData) -> dict[str, float]:
    """Share of (original, degraded copy) pairs ranked right (ties half), per degradation type and "all"."""
    s = head(torch.from_numpy(data.feats)).numpy()                     # (N, 1 + copies)
    right = (s[:, :1] > s[:, 1:]) + 0.5 * (s[:, :1] == s[:, 1:])
    names = np.array([TRAIN_DEGRADATIONS[j].name for j in data.degradations.ravel()]).reshape(right.shape)
    out = {n: float(right[names == n].mean()) for n in sorted(set(names.ravel()))}
    return {**out, "all": float(right.mean())}


def choose_floor(train: PairData, dev: PairData, cfg: AestheticTrainConfig) -> float:
    """The naturalness floor with the best mean of dev accuracy (all types trained) and leave-one-type-out
    dev accuracy (each type left out of training in turn: a stand-in for degradations never seen)."""
    types = sorted({TRAIN_DEGRADATIONS[j].name for j in train.degradations.ravel()})
    best, best_score = cfg.floors[0], -1.0
    for floor in cfg.floors:
        seen = pair_accuracy(fit_head(train, cfg, floor), dev)["all"]
        unseen = float(np.mean([pair_accuracy(fit_head(train, cfg, floor, exclude=t), dev).get(t, np.nan)
                                for t in types]))
        log.info("naturalness floor %.2f: dev accuracy %.3f, leave-one-type-out %.3f", floor, seen, unseen)
        if (seen + unseen) / 2 > best_score:
            best, best_score = floor, (seen + unseen) / 2
    return best


def train_aesthetic(data: str | Path, out: str | Path, cfg: AestheticTrainConfig | None = None) -> QualityHead:
    cfg = cfg or AestheticTrainConfig()
    paths = photo_paths(data, "train")
    if not paths:
        raise ValueError(f"no train photos under {data} (expected {PHOTO_DATASETS} folders with items.jsonl)")
    paths = random.Random(cfg.seed).sample(paths, min(cfg.photos, len(paths)))
    torch.set_num_threads(1)
    pairs = extract(paths, cfg.per_photo, cfg.seed)
    dev = np.random.default_rng(cfg.seed).random(len(pairs.feats)) < cfg.dev_fraction
    floor = choose_floor(PairData(pairs.feats[~dev], pairs.degradations[~dev]),
                         PairData(pairs.feats[dev], pairs.degradations[dev]), cfg)
    head = fit_head(pairs, cfg, floor)
    log.info("naturalness floor %.2f; refit on all %d photos: train accuracy %s", floor, len(pairs.feats),
             ", ".join(f"{k} {v:.3f}" for k, v in pair_accuracy(head, pairs).items()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head.save(out)
    log.info("saved %s", out)
    return head
