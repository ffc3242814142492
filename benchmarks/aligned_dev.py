"""Choosing the aligned ranking's constants on `train` data only (docs/aligned_ranking.md).

    python benchmarks/aligned_dev.py make /tmp/aligned-dev [--data ../shared/data]
    python benchmarks/aligned_dev.py dedup /tmp/aligned-dev            # the near-duplicate threshold
    python benchmarks/aligned_dev.py pixels [--data ../shared/data]     # the pixel-signature threshold
    python benchmarks/aligned_dev.py sweep /tmp/aligned-dev [--csv OUT] # baseline vs aligned per setting

`make` writes four benchmark folders in the shared format from `train` items only:
* `imagenet-dev`: the 801 ImageNet train photos; one "a photo of a {class}" query each (instance level,
  like `imagenet-classes`);
* `sketchy-dev`: 5 Sketchy train photos per class; each class in two phrasings (class level);
* each again `+copies`: one degraded copy per photo, drawn from the dev degradation types
  (search/train_align.py DEV_DEGRADATION_TYPES, benchmarks/degraded_gallery.py `--set dev`).
`dedup` picks the threshold at which 1 % of the train photos have a distinct photo that close (and says how
many of their degraded copies it catches); `sweep` runs the same code as `python -m search eval` (the
index is cached under the same name) for each margin and threshold.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
from pathlib import Path

import numpy as np
from degraded_gallery import SETS
from degraded_gallery import make as make_degraded

from search.config import PROJECT_ROOT
from search.training.align import PHRASES

DEV = ("imagenet-dev", "sketchy-dev")


def _items(data: Path, ds: str) -> list[dict]:
    rows = [json.loads(line) for line in (data / ds / "items.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "train" and r.get("style") == "photo"]


def _write(out: Path, gallery: list[dict], queries: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gallery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gallery))
    (out / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))


def make(out: Path, data: Path, seed: int = 0) -> None:
    data = data.resolve()
    # imagenet-dev
    rows = _items(data, "imagenet")
    folder = out / "imagenet-dev"
    folder.mkdir(parents=True, exist_ok=True)
    gallery = [{"id": r["id"], "path": os.path.relpath(data / "imagenet" / r["path"], folder), "label": r["label"],
                "style": "photo"} for r in rows]
    queries = [{"id": f"{r['id']}#name", "style": "text", "text": f"a photo of a {r['label']}", "relevant": [r["id"]]}
               for r in rows]
    _write(folder, gallery, queries)
    # sketchy-dev
    rng = random.Random(seed)
    by_class: dict[str, list[dict]] = {}
    for r in _items(data, "sketchy"):
        by_class.setdefault(r["label"], []).append(r)
    folder = out / "sketchy-dev"
    folder.mkdir(parents=True, exist_ok=True)
    gallery, queries = [], []
    for label, members in sorted(by_class.items()):
        picked = rng.sample(members, min(5, len(members)))
        gallery += [{"id": r["id"], "path": os.path.relpath(data / "sketchy" / r["path"], folder), "label": label,
                     "style": "photo"} for r in picked]
        word = label.replace("_", " ")
        for n, phrase in enumerate(rng.sample(PHRASES, 2)):
            queries.append({"id": f"sketchy/{label}#{n}", "style": "text", "text": phrase.format(word),
                            "relevant": [r["id"] for r in picked]})
    _write(folder, gallery, queries)
    for name in DEV:
        n_g, n_q = make_degraded(out / name, out / f"{name}+copies", 1, SETS["dev"], seed)
        print(f"{out / name}+copies: {n_g} gallery images, {n_q} queries")


def prepared(bench_dir: Path, encoder: str = "lite"):
    """What `search.evaluation.evaluate` builds before ranking: (bench, queries, baseline vectors, rephrased
    vectors, style mixtures, index, problems, encoder)."""
    from models import get_encoder
    from models.aesthetic import scorer_for
    from search.config import CACHE_DIR
    from search.engine import cache_index_dir
    from search.evaluation.benchmark import load_benchmark
    from search.evaluation.evaluate import _encode_queries
    from search.index.faiss_index import IndexSpec
    from search.index.gallery_index import build_index
    from search.rephrase import create_rephraser, rephrase

    bench = load_benchmark(bench_dir)
    enc = get_encoder(encoder)
    scorer = scorer_for(enc)
    index_dir = cache_index_dir(CACHE_DIR, f"bench-{bench.root.resolve()}-{scorer.name}", enc)
    gallery, report = build_index(bench.gallery, index_dir, enc, spec=IndexSpec("Flat"), source=str(bench.root),
                                  scorer=scorer)
    queries, qvecs, probs, problems = _encode_queries(bench, enc, gallery, report.skipped, True)
    texts = [i for i, q in enumerate(queries) if q.text is not None]
    rvecs = qvecs.copy()
    if texts:
        r = create_rephraser("template")
        rvecs[texts] = enc.encode_texts([rephrase(r, queries[i].text).rephrased for i in texts])
    return bench, queries, qvecs, rvecs, probs, gallery, problems, enc


def metrics(prep, ranking: str, settings) -> dict[str, float]:
    from search.evaluation.evaluate import _score

    bench, queries, qvecs, rvecs, probs, gallery, problems, enc = prep
    vecs = qvecs if ranking == "baseline" else rvecs
    return _score(bench, queries, vecs, probs, gallery, problems, enc, ranking, settings, True).overall


def dedup_threshold(out: Path, share: float = 0.01) -> None:
    """Nearest distinct photo vs own degraded copy, over the dev galleries with copies."""
    distinct, copies = [], []
    for name in DEV:
        prep = prepared(out / f"{name}+copies")
        gallery = prep[5]
        rows = list(gallery.rows)
        vecs = gallery.vectors(list(range(len(rows))))
        src = [(r.get("extra") or {}).get("degraded_from") for r in rows]
        base = [s or r["id"] for s, r in zip(src, rows)]
        sims = vecs @ vecs.T
        same = np.array(base)[:, None] == np.array(base)[None, :]
        sims_distinct = np.where(same, -np.inf, sims)
        orig = [i for i, s in enumerate(src) if s is None]
        distinct += sims_distinct[orig].max(1).tolist()
        row_of = {r["id"]: i for i, r in enumerate(rows)}
        copies += [float(sims[i, row_of[s]]) for i, s in enumerate(src) if s is not None]
    distinct, copies = np.array(distinct), np.array(copies)
    t = float(np.quantile(distinct, 1 - share))
    print(f"{len(distinct)} train photos: nearest distinct photo cosine median {np.median(distinct):.3f}, "
          f"{100 * (1 - share):g}th percentile {t:.3f}")
    print(f"{len(copies)} degraded copies: cosine to their original median {np.median(copies):.3f}; "
          f"share >= {t:.3f}: {np.mean(copies >= t):.3f}, >= 0.94: {np.mean(copies >= 0.94):.3f}")


def pixel_threshold(data: Path, n: int = 600, share: float = 0.01, seed: int = 0) -> None:
    """The pixel-signature threshold (search/index/pixel_signature.py): `n` ImageNet and Sketchy train photos,
    each with one copy made by a training degradation (saved as JPEG 95, as degraded_gallery.py does); the
    threshold at which `share` of the photos have a distinct photo that close, and the copies it catches."""
    import io

    from PIL import Image

    from search.index.pixel_signature import signature
    from search.training.degradations import TRAIN_DEGRADATIONS

    paths = [data / ds / r["path"] for ds in ("imagenet", "sketchy") for r in _items(data, ds)]
    paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:n]]
    originals, copies, kinds = [], [], []
    for i, path in enumerate(paths):
        im = Image.open(path).convert("RGB")
        d = TRAIN_DEGRADATIONS[i % len(TRAIN_DEGRADATIONS)]
        buf = io.BytesIO()
        d(im, seed=i).save(buf, "JPEG", quality=95)
        originals.append(signature(im))
        copies.append(signature(Image.open(buf)))
        kinds.append(d.id)
    o, c = np.array(originals), np.array(copies)
    sims = o @ o.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(1)
    t = float(np.quantile(nearest, 1 - share))
    own = (o * c).sum(1)
    print(f"{len(paths)} train photos: nearest distinct signature median {np.median(nearest):.3f}, "
          f"{100 * (1 - share):g}th percentile {t:.3f}; copies caught: {np.mean(own >= t):.3f}")
    missed = {k: round(float(np.mean(own[np.array(kinds) == k] >= t)), 2) for k in dict.fromkeys(kinds)}
    print("caught per type, where below 1:", {k: v for k, v in missed.items() if v < 1})


R1_SLACK, R10_SLACK = 0.02, 0.01   # the acceptance limits of issue 17, applied on dev


def choose_margin(table: list[dict]) -> dict[float, float | None]:
    """Per threshold: the largest margin whose aligned R@1 is within R1_SLACK and R@10 within R10_SLACK of the
    baseline on every plain dev benchmark (None if no margin is)."""
    base = {r["benchmark"]: r for r in table if r["ranking"] == "baseline"}
    out = {}
    for t in sorted({r["threshold"] for r in table if r["ranking"] == "aligned"}):
        ok = [m for m in sorted({r["margin"] for r in table if r["ranking"] == "aligned" and r["threshold"] == t})
              if all(r["R@1"] >= base[r["benchmark"]]["R@1"] - R1_SLACK - 1e-9
                     and r["R@10"] >= base[r["benchmark"]]["R@10"] - R10_SLACK - 1e-9
                     for r in table if r["ranking"] == "aligned" and r["threshold"] == t and r["margin"] == m
                     and r["benchmark"] in DEV)]
        out[t] = max(ok) if ok else None
    return out


def sweep(out: Path, margins: list[float], thresholds: list[float], weight: float, csv_out: str | None) -> None:
    from search.rankings import RankSettings

    table = []
    for name in [*DEV, *(f"{n}+copies" for n in DEV)]:
        prep = prepared(out / name)
        k = len(prep[5])   # full rankings, as `python -m search eval` (orig@10 needs every query's copies)
        base = metrics(prep, "baseline", RankSettings(k=k))
        table.append({"benchmark": name, "ranking": "baseline", "margin": "", "threshold": "", **base})
        for t in thresholds:
            for m in margins:
                s = RankSettings(k=k, aesthetic_weight=weight, margin=m, dedup_threshold=t)
                table.append({"benchmark": name, "ranking": "aligned", "margin": m, "threshold": t,
                              **metrics(prep, "aligned", s)})
        for row in table:
            if row["benchmark"] == name:
                print(f"{name:<22}{row['ranking']:<9}{row['margin']!s:>6}{row['threshold']!s:>6}  R@1 {row['R@1']:.3f}"
                      f"  R@10 {row['R@10']:.3f}" + (f"  orig@10 {row['orig@10']:.3f}" if "orig@10" in row else ""),
                      flush=True)
    print(f"margin by the dev rule (R@1 within {R1_SLACK}, R@10 within {R10_SLACK} of the baseline on the plain dev "
          f"benchmarks), per threshold: {choose_margin(table)}")
    if csv_out:
        keys = ["benchmark", "ranking", "margin", "threshold", "R@1", "R@5", "R@10", "orig@10", "aes@10", "n"]
        with open(csv_out, "w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(table)


def rescore(index_dirs: list[Path]) -> None:
    """Re-score cached benchmark indexes with the current lite-quality scorer, keeping their vectors.

    A retrained scorer changes only the aesthetic scores, but `build_index` re-embeds every image when the
    scorer's fingerprint changes (~1.5 images/s on a busy 2-core machine: 40 minutes for the test and dev
    galleries). The vectors depend on the encoder alone (its fingerprint is checked), so this writes the new
    scores into each row of the current snapshot and the scorer's fingerprint into index.json; the next
    `python -m search eval` then reuses the index exactly as if it had rebuilt it. A row whose file changed
    since indexing (size or mtime) is refused unless its bytes are the same size (`--trust-size`: degraded
    copies regenerated deterministically by degraded_gallery.py with the same seed)."""
    import shutil

    from models.aesthetic import LiteQualityScorer
    from search.index.gallery_index import identity
    from search.index.images import load_image

    scorer = LiteQualityScorer()
    known: dict[str, float] = {}   # path -> score: a file in several galleries (an original beside its copies) once
    for root in index_dirs:
        meta = json.loads((root / "index.json").read_text())
        snap = root / meta["snapshot"]
        rows = [json.loads(line) for line in (snap / "items.jsonl").read_text().splitlines() if line.strip()]
        if meta.get("scorer") == scorer.fingerprint:
            known.update({r["path"]: r["aesthetic"] for r in rows})
            print(f"{root}: already scored by {scorer.fingerprint}", flush=True)
            continue
        changed = 0
        for row in rows:
            path = Path(row["path"])
            key = identity(path)
            if key != row["key"]:
                if path.stat().st_size != row["bytes"]:
                    raise SystemExit(f"{root}: {path} changed since indexing; rebuild this index instead")
                row["key"], changed = key, changed + 1
        todo = [r for r in rows if r["path"] not in known]
        for i in range(0, len(todo), 32):
            batch = todo[i : i + 32]
            for r, v in zip(batch, scorer.score_images([load_image(Path(r["path"])) for r in batch]).tolist()):
                known[r["path"]] = float(v)
        for row in rows:
            row["aesthetic"] = known[row["path"]]
        (snap / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if (root / "partial").exists():
            shutil.rmtree(root / "partial")
        meta["scorer"] = scorer.fingerprint
        (root / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{root}: {len(rows)} rows re-scored with {scorer.fingerprint}"
              + (f" ({changed} regenerated files of the same size re-keyed)" if changed else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("out")
    p.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    p = sub.add_parser("dedup")
    p.add_argument("out")
    p = sub.add_parser("pixels")
    p.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    p = sub.add_parser("rescore")
    p.add_argument("index_dirs", nargs="+")
    p = sub.add_parser("sweep")
    p.add_argument("out")
    p.add_argument("--margins", default="0,0.01,0.02,0.04,0.08")
    p.add_argument("--thresholds", default="0.78")
    p.add_argument("--weight", type=float, default=0.5, help="aesthetic_weight (lambda), the app's default")
    p.add_argument("--csv")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.cmd == "make":
        make(Path(args.out), Path(args.data))
    elif args.cmd == "rescore":
        rescore([Path(d) for d in args.index_dirs])
    elif args.cmd == "pixels":
        pixel_threshold(Path(args.data))
    elif args.cmd == "dedup":
        dedup_threshold(Path(args.out))
    else:
        sweep(Path(args.out), [float(x) for x in args.margins.split(",")],
              [float(x) for x in args.thresholds.split(",")], args.weight, args.csv)


if __name__ == "__main__":
    main()
