"""`python -m search train-style`: the style space (FreestyleRet's style bases) from the train splits.

Takes up to `per_style` training images of each style in STYLES (low-res ones are made from train
photos with the same transforms as the DSR-style benchmark: 16x mosaic and 32-px thumbnails), computes
their Gram descriptors, holds out a dev share, picks the number of K-means bases per style and the
assignment temperature by dev detection accuracy, then refits on everything and saves.
"""
from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from tqdm import tqdm

from models.lite import load_image_tower, preprocess_image
from models.style import STYLES, StyleSpace, gram_descriptors
from search.index.images import iter_batches
from search.training.tower_cache import TRANSFORMS

log = logging.getLogger(__name__)

DATASETS = ("imagenet", "sketchy", "pacs", "quickdraw", "wikiart")
LOWRES_VIEWS = ("mosaic16", "tiny32")
BASES_PER_STYLE = (1, 2, 4, 8)
TEMPERATURES = (0.05, 0.1, 0.2)


def style_samples(data: Path, split: str, per_style: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """-> [(file, transform, style)], at most `per_style` per style, drawn evenly from the datasets."""
    by_style: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    photos = []
    for ds in (*DATASETS, "lowres"):
        f = data / ds / "items.jsonl"
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row.get("split") == split and row.get("style") in STYLES:
                file = str((data / ds / row["path"]).resolve())
                by_style[row["style"]].append((file, "", row["style"]))
                if row["style"] == "photo":
                    photos.append(file)
    if split == "train":  # no low-res training images ship: make them from train photos
        by_style["lowres"] += [(p, v, "lowres") for p in photos for v in LOWRES_VIEWS]
    rng = random.Random(seed)
    out = []
    for style in STYLES:
        pool = sorted(by_style[style])
        out += rng.sample(pool, min(per_style, len(pool)))
    return out


def descriptors(samples: list[tuple[str, str, str]], batch_size: int = 64) -> tuple[np.ndarray, list[int]]:
    """Gram descriptors of the readable samples -> (descriptors, their positions in `samples`)."""
    tower = load_image_tower()
    out, ok = [], []
    for view in sorted({v for _, v, _ in samples}):
        pos = [i for i, s in enumerate(samples) if s[1] == view]
        with tqdm(total=len(pos), desc=f"style descriptors {view or 'original'}", unit="img") as bar:
            for good, pixels, failed in iter_batches([samples[i][0] for i in pos], preprocess_image, batch_size,
                                                     TRANSFORMS[view]):
                if good:
                    out.append(gram_descriptors(tower, pixels))
                    ok += [pos[j] for j in good]
                bar.update(len(good) + len(failed))
    return np.concatenate(out), ok


def fit_space(desc: np.ndarray, styles: list[str], k: int, temperature: float, seed: int = 0) -> StyleSpace:
    """Standardise, project by a shrinkage LDA over the styles, then K-means `k` bases per style."""
    mean, std = desc.mean(0), desc.std(0) + 1e-6
    z = (desc - mean) / std
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(z, styles)
    scalings = lda.scalings_[:, : len(set(styles)) - 1]
    proj = z @ scalings
    scale = proj.std(0) + 1e-6
    space = StyleSpace(mean, std, scalings / scale, proj.mean(0) / scale, np.zeros((0, len(scale))), [], temperature)
    e = space.embed(desc)
    bases, labels = [], []
    for style in STYLES:
        es = e[[s == style for s in styles]]
        if len(es) == 0:
            continue
        c = KMeans(min(k, len(es)), n_init=4, random_state=seed).fit(es).cluster_centers_
        bases.append(c / np.linalg.norm(c, axis=1, keepdims=True))
        labels += [style] * len(c)
    space.bases, space.base_styles = np.concatenate(bases), labels
    return space


def accuracy(space: StyleSpace, desc: np.ndarray, styles: list[str]) -> dict[str, float]:
    """Per style and overall ("all": mean over styles) share of images whose top style is right."""
    pred = [STYLES[i] for i in space.style_probs(desc).argmax(1)]
    per = {s: float(np.mean([p == s for p, t in zip(pred, styles) if t == s]))
           for s in STYLES if s in styles}
    return {**per, "all": float(np.mean(list(per.values())))}


def train_style(data: str | Path, out: str | Path, per_style: int = 600, dev_fraction: float = 0.25,
                seed: int = 0) -> StyleSpace:
    data = Path(data)
    samples = style_samples(data, "train", per_style, seed)
    if not samples:
        raise ValueError(f"no train images found under {data} (expected {DATASETS} folders with items.jsonl)")
    desc, ok = descriptors(samples)
    styles = [samples[i][2] for i in ok]
    rng = np.random.default_rng(seed)
    dev = rng.random(len(styles)) < dev_fraction
    tr = [s for s, d in zip(styles, dev) if not d]
    dv = [s for s, d in zip(styles, dev) if d]
    best, best_acc = (1, TEMPERATURES[0]), -1.0
    for k in BASES_PER_STYLE:
        for t in TEMPERATURES:
            acc = accuracy(fit_space(desc[~dev], tr, k, t, seed), desc[dev], dv)["all"]
            log.info("dev: %d bases per style, temperature %.2f: accuracy %.3f", k, t, acc)
            if acc > best_acc + 1e-9:
                best, best_acc = (k, t), acc
    log.info("chosen on dev: %d bases per style, temperature %.2f (dev accuracy %.3f); refitting on all", *best,
             best_acc)
    space = fit_space(desc, styles, *best, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    space.save(out)
    log.info("saved %s", out)
    return space
