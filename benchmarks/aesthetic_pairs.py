"""Quality pairs: does an aesthetic scorer rank a test photo above a degraded copy of it?

    python benchmarks/aesthetic_pairs.py [--data ../shared/data] [--per-dataset 60] [--scorer lite-quality]
                                         [--encoder NAME] [--json OUT]

Takes up to --per-dataset `test` photos from each photo dataset (COCO, ImageNet, PACS, Sketchy; test
splits only, never used in training), degrades each with every HELD_OUT degradation (types and
strengths the lite scorer never saw) and, separately, every TRAIN one, and reports the pairwise
accuracy (ties count half) per degradation type and overall. A copy identical to its original (e.g.
greyscale of a grey photo) is not a pair. Also reports the scorer's time per image.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import ImageChops
from tqdm import tqdm

from models import create_scorer, get_encoder, scorer_for
from search.config import PROJECT_ROOT
from search.index.images import ImageLoadError, load_image
from search.training.aesthetic import PHOTO_DATASETS, photo_paths
from search.training.degradations import HELD_OUT_DEGRADATIONS, TRAIN_DEGRADATIONS

SETS = {"held-out": HELD_OUT_DEGRADATIONS, "train": TRAIN_DEGRADATIONS}


def test_photos(data: Path, per_dataset: int, seed: int) -> list[Path]:
    out = []
    for ds in PHOTO_DATASETS:
        paths = photo_paths(data, "test", (ds,))
        out += random.Random(seed).sample(paths, min(per_dataset, len(paths)))
    return out


def run(scorer, photos: list[Path], seed: int) -> tuple[dict[str, dict[str, list[float]]], float]:
    """-> ({set: {degradation id: [1 / 0.5 / 0 per pair]}}, scorer seconds per image)."""
    results: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in SETS}
    seconds, scored = 0.0, 0
    for i, path in enumerate(tqdm(photos, desc="pairs", unit="photo")):
        try:
            original = load_image(path)
        except ImageLoadError as e:
            print(f"skipped {e}", file=sys.stderr)
            continue
        for set_name, degradations in SETS.items():
            copies, ids = [], []
            for j, d in enumerate(degradations):
                copy = d(original, seed=seed * 1_000_003 + i * 101 + j)
                if ImageChops.difference(copy, original).getbbox() is not None:
                    copies.append(copy)
                    ids.append(d.id)
            t = time.perf_counter()
            s = scorer.score_images([original, *copies])
            seconds, scored = seconds + time.perf_counter() - t, scored + 1 + len(copies)
            for d_id, s_copy in zip(ids, s[1:]):
                results[set_name][d_id].append(float(s[0] > s_copy) + 0.5 * float(s[0] == s_copy))
    return results, seconds / max(scored, 1)


def table(by_id: dict[str, list[float]]) -> tuple[str, dict[str, float]]:
    by_type: dict[str, list[float]] = defaultdict(list)
    for d_id, r in by_id.items():
        by_type[d_id.split(":")[0]] += r
    rows = [f"{'degradation':<22}{'strengths':<14}{'pairs':>7}{'accuracy':>10}"]
    summary = {}
    for name, r in by_type.items():
        strengths = ",".join(d.split(":")[1] for d in by_id if d.split(":")[0] == name)
        summary[name] = float(np.mean(r))
        rows.append(f"{name:<22}{strengths:<14}{len(r):>7}{summary[name]:>10.3f}")
    every = [x for r in by_id.values() for x in r]
    summary["overall"] = float(np.mean(every)) if every else float("nan")
    rows.append(f"{'overall':<36}{len(every):>7}{summary['overall']:>10.3f}")
    return "\n".join(rows), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    parser.add_argument("--per-dataset", type=int, default=60, help="test photos per dataset (default %(default)s)")
    parser.add_argument("--scorer", help="scorer name (default: the encoder's default scorer)")
    parser.add_argument("--encoder", default="lite", help="encoder (LAION heads score its embeddings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the accuracies as JSON here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    encoder = get_encoder(args.encoder)
    scorer = create_scorer(args.scorer, encoder) if args.scorer else scorer_for(encoder)
    photos = test_photos(Path(args.data), args.per_dataset, args.seed)
    if not photos:
        sys.exit(f"no test photos under {args.data}")
    results, per_image = run(scorer, photos, args.seed)
    out = {"scorer": scorer.fingerprint, "photos": len(photos), "ms_per_image": 1000 * per_image}
    print(f"scorer {scorer.fingerprint} · {len(photos)} test photos · {1000 * per_image:.1f} ms per image")
    for set_name in SETS:
        text, summary = table(results[set_name])
        out[set_name] = summary
        print(f"\n{set_name} degradations\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
