"""Make a benchmark whose gallery mixes every photo with degraded copies of it (aesthetic alignment test).

    python benchmarks/degraded_gallery.py ../shared/benchmarks/coco-captions /tmp/coco-degraded [--copies 1]
    python -m search eval /tmp/coco-degraded --ranking aligned

Each gallery photo keeps its row and gains `--copies` degraded copies (JPEG, quality 95), drawn per photo
from search.training.degradations (held-out ones by default: types the lite scorer never saw; `--set dev`: the
training types search/train_align.py holds out as dev, for benchmarks built from `train` photos). A copy's row has
`degraded_from` (its original's id) and `degradation`; every query's relevant list gains the copies of its
relevant photos, so R@10 counts an original or its copy, and the evaluator reports `orig@10`, the share
of originals in the top 10.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from search.index.images import load_image
from search.training.align import DEV_DEGRADATION_TYPES
from search.training.degradations import HELD_OUT_DEGRADATIONS, TRAIN_DEGRADATIONS

# "dev": the training types search/train_align.py holds out as its dev split (for choosing on train photos)
SETS = {"held_out": HELD_OUT_DEGRADATIONS, "train": TRAIN_DEGRADATIONS,
        "all": HELD_OUT_DEGRADATIONS + TRAIN_DEGRADATIONS,
        "dev": tuple(d for d in TRAIN_DEGRADATIONS if d.name in DEV_DEGRADATION_TYPES)}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make(src: Path, out: Path, copies: int, degradations: tuple, seed: int) -> tuple[int, int]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "copies").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    gallery, copies_of = [], {}
    for n, row in enumerate(rows(src / "gallery.jsonl")):
        original = (src / row["path"]).resolve()
        gallery.append({**row, "path": os.path.relpath(original, out)})
        copies_of[row["id"]] = []
        image = load_image(original)
        for c in range(copies):
            d = degradations[int(rng.integers(len(degradations)))]
            cid = f"{row['id']}~{d.id}~{c}"
            name = f"copies/{n:06d}-{c}.jpg"
            if not (out / name).is_file():
                d(image, seed=n * 97 + c).save(out / name, quality=95)
            gallery.append({"id": cid, "path": name, "degraded_from": row["id"], "degradation": d.id,
                            **{k: row[k] for k in ("label", "style") if k in row}})
            copies_of[row["id"]].append(cid)
    queries = []
    for row in rows(src / "queries.jsonl"):
        if "path" in row:
            row = {**row, "path": os.path.relpath((src / row["path"]).resolve(), out)}
        relevant = row.get("relevant", [])
        queries.append({**row, "relevant": relevant + [c for r in relevant for c in copies_of.get(r, [])]})
    (out / "gallery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gallery))
    (out / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    return len(gallery), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="benchmark folder (gallery.jsonl + queries.jsonl)")
    parser.add_argument("out", help="new benchmark folder")
    parser.add_argument("--copies", type=int, default=1, help="degraded copies per photo (default 1)")
    parser.add_argument("--set", choices=list(SETS), default="held_out", help="degradations to draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_gallery, n_queries = make(Path(args.source), Path(args.out), args.copies, SETS[args.set], args.seed)
    print(f"{args.out}: {n_gallery} gallery images ({args.copies} degraded copies per photo), {n_queries} queries")


if __name__ == "__main__":
    main()
