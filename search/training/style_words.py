"""`python -m search train-style-words`: the style probe (models/style_probe.py) from the train splits.

Gallery vectors of train images of each coarse style (PACS photos, sketches, paintings, cartoons; Sketchy
photos and sketches; ImageNet photos; QuickDraw doodles; WikiArt paintings; low-res views of train photos made
as for the low-res benchmark) and of WikiArt's train paintings by movement. A share of PACS and WikiArt train
items is held out (`is_dev`): the dev benchmarks (benchmarks/style_text_benchmarks.py) are made of them, so
the probe never sees them. Each classifier's regularisation is chosen by 5-fold cross-validation on its
training vectors; the ranking weight and the saturations are chosen on the dev benchmarks and passed here.
"""
from __future__ import annotations

import json
import logging
import random
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from models import Encoder, get_encoder
from models.style import STYLES
from models.style_probe import Classifier, StyleProbe
from models.style_words import MOVEMENTS
from search.index.images import iter_batches
from search.training.tower_cache import TRANSFORMS

log = logging.getLogger(__name__)

DATASETS = ("pacs", "wikiart", "sketchy", "imagenet", "quickdraw")
LOWRES_VIEWS = ("mosaic16", "tiny32")
DEV_SHARE = 5                     # 1 in DEV_SHARE train items of PACS and WikiArt is held out as dev
C_GRID = (0.001, 0.003, 0.01, 0.1)
# chosen on the dev benchmarks (benchmarks/style_text_benchmarks.py --tune; docs/style_text.md)
DEFAULT_WEIGHT = 0.1
DEFAULT_SATURATION = 0.5
MOVEMENT_OF = {v: k for k, v in MOVEMENTS.items()}  # WikiArt art_style -> label


def is_dev(item_id: str) -> bool:
    """A train item held out of fitting, for the dev benchmarks (a fixed hash of its id)."""
    return zlib.crc32(item_id.encode()) % DEV_SHARE == 0


def read_items(data: Path, dataset: str) -> list[dict]:
    """The rows of `data/dataset/items.jsonl`, each with its absolute `file` ([] if there is none)."""
    f = data / dataset / "items.jsonl"
    if not f.is_file():
        return []
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [{**r, "file": str((data / dataset / r["path"]).resolve())} for r in rows]


def fit_samples(data: Path, per_style: int, seed: int = 0) -> list[tuple[str, str, str, str | None]]:
    """-> [(file, view, coarse style, movement or None)]: up to `per_style` train images per coarse style
    (drawn evenly over the datasets that have it), every WikiArt train painting, none of the dev items."""
    by_style: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    wikiart = []
    for ds in DATASETS:
        for r in read_items(data, ds):
            if r.get("split") != "train" or is_dev(r["id"]) or r.get("style") not in STYLES:
                continue
            movement = MOVEMENT_OF.get(r.get("art_style", ""))
            if ds == "wikiart":
                if movement:
                    wikiart.append((r["file"], "", r["style"], movement))
                continue
            by_style[r["style"]][ds].append((r["file"], "", r["style"], None))
            if r["style"] == "photo":
                by_style["lowres"][ds] += [(r["file"], v, "lowres", None) for v in LOWRES_VIEWS]
    rng = random.Random(seed)
    out = list(wikiart)
    for style in STYLES:
        pools = {ds: sorted(p) for ds, p in by_style[style].items()}
        if style == "painting":
            pools["wikiart"] = []  # all of WikiArt is in already
        for p in pools.values():
            rng.shuffle(p)
        taken, n_have = [], sum(len(p) for p in pools.values()) + (len(wikiart) if style == "painting" else 0)
        want = max(0, min(per_style, n_have) - (len(wikiart) if style == "painting" else 0))
        while len(taken) < want and any(pools.values()):  # round robin over the datasets
            for p in pools.values():
                if p and len(taken) < want:
                    taken.append(p.pop())
        out += taken
    return out


def gallery_vectors(encoder: Encoder, samples: list[tuple[str, str, str, str | None]],
                    batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
    """The encoder's gallery vectors of the readable samples -> (vectors, their positions in `samples`)."""
    out, ok = [np.zeros((0, encoder.dim), np.float32)], []
    for view in sorted({s[1] for s in samples}):
        pos = [i for i, s in enumerate(samples) if s[1] == view]
        with tqdm(total=len(pos), desc=f"style probe vectors {view or 'original'}", unit="img") as bar:
            for good, pixels, failed in iter_batches([samples[i][0] for i in pos], encoder.preprocess, batch_size,
                                                     TRANSFORMS[view]):
                if good:
                    out.append(encoder.encode_image_tensors(pixels))
                    ok += [pos[j] for j in good]
                bar.update(len(good) + len(failed))
    return np.concatenate(out), ok


def fit_classifier(x: np.ndarray, y: list[str], seed: int = 0) -> tuple[Classifier, float, float]:
    """Standardise, then a softmax regression with C chosen by 5-fold CV (mean one-vs-rest AP)
    -> (classifier, C, its CV mAP)."""
    y = np.asarray(y)
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    best_c, best = C_GRID[0], -1.0
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for c in C_GRID:
        probs = np.zeros((len(z), len(set(y))))
        for a, b in folds.split(z, y):
            clf = LogisticRegression(C=c, max_iter=3000).fit(z[a], y[a])
            probs[b] = clf.predict_proba(z[b])
        m = float(np.mean([average_precision_score(y == k, probs[:, j]) for j, k in enumerate(clf.classes_)]))
        log.info("C %.3g: cross-validated mAP %.3f", c, m)
        if m > best + 1e-9:
            best_c, best = c, m
    clf = LogisticRegression(C=best_c, max_iter=3000).fit(z, y)
    return (Classifier(tuple(clf.classes_.tolist()), mean.astype(np.float32), std.astype(np.float32),
                       clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)), best_c, best)


def train_style_words(data: str | Path, out: str | Path, encoder: str = "lite", per_style: int = 500,
                      weight: float = DEFAULT_WEIGHT, saturation: float = DEFAULT_SATURATION,
                      seed: int = 0) -> StyleProbe:
    data = Path(data)
    samples = fit_samples(data, per_style, seed)
    if not samples:
        raise ValueError(f"no train images found under {data} (expected {DATASETS} folders with items.jsonl)")
    enc = get_encoder(encoder)
    vecs, ok = gallery_vectors(enc, samples)
    styles = [samples[i][2] for i in ok]
    log.info("coarse styles: %s", {s: styles.count(s) for s in STYLES})
    coarse, c1, m1 = fit_classifier(vecs, styles, seed)
    moving = [j for j, i in enumerate(ok) if samples[i][3]]
    movement, c2, m2 = fit_classifier(vecs[moving], [samples[ok[j]][3] for j in moving], seed)
    log.info("coarse: C %.3g, CV mAP %.3f; movement: C %.3g, CV mAP %.3f (%d paintings)", c1, m1, c2, m2,
             len(moving))
    probe = StyleProbe(coarse, movement, enc.fingerprint, weight, saturation)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    probe.save(out)
    log.info("saved %s", out)
    return probe
