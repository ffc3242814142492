"""Does query rephrasing cost relevance? R@1/R@5/R@10 of text queries, as typed vs rephrased.

The aligned ranking retrieves with the rephrased query, so the rephrasing must not pull results away from
what was asked (budget: R@10 may drop by at most 0.02). For each benchmark folder the gallery is indexed
once (cached exactly like `python -m search eval`), then every rephraser's queries are encoded and searched.

    python benchmarks/rephrase_relevance.py ../shared/benchmarks/coco-captions ../shared/benchmarks/imagenet-classes
    python benchmarks/rephrase_relevance.py BENCH... --rephrasers none,template,llm:smollm2 --limit 200
    python benchmarks/rephrase_relevance.py --dev-from ../shared/data/imagenet   # a dev set from `train` classes

`--dev-from` builds a benchmark of the `train` photos of a data folder with "a photo of a {label}" and
"{label}" queries: the template's wording is chosen there, and only measured on the test benchmarks.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from models import get_encoder
from search.config import CACHE_DIR, DEFAULT_ENCODER
from search.engine import cache_index_dir
from search.evaluation.benchmark import load_benchmark
from search.evaluation.metrics import mean_metrics, query_metrics
from search.index.faiss_index import IndexSpec
from search.index.gallery_index import build_index
from search.rephrase import create_rephraser, rephrase

SHOWN = ("R@1", "R@5", "R@10")


def dev_benchmark(data_dir: Path, out: Path) -> Path:
    """A benchmark folder over the `train` photos of a labelled data folder (one query pair per photo)."""
    rows = [json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train" and r.get("label") and r.get("style", "photo") == "photo"]
    if not rows:
        raise SystemExit(f"{data_dir}/items.jsonl has no labelled `train` photos to build a dev set from")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gallery.jsonl", "w") as g, open(out / "queries.jsonl", "w") as q:
        for r in rows:
            path = str((data_dir / r["path"]).resolve())  # absolute: the folder is written elsewhere
            g.write(json.dumps({"id": r["id"], "path": path, "label": r["label"]}) + "\n")
            for suffix, text in (("photo", f"a photo of a {r['label']}"), ("name", r["label"])):
                q.write(json.dumps({"id": f"{r['id']}#{suffix}", "style": "text", "text": text,
                                    "relevant": [r["id"]]}) + "\n")
    return out


def measure(bench_dir: Path, rephrasers: list[str], encoder: str, limit: int | None,
            cache_dir: Path | None) -> list[dict]:
    bench = load_benchmark(bench_dir)
    enc = get_encoder(encoder)
    queries = [q for q in bench.queries if q.text is not None]
    if limit and len(queries) > limit:  # an even spread, not the first few classes or images
        queries = [queries[i] for i in np.linspace(0, len(queries) - 1, limit).round().astype(int)]
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) if cache_dir is None else cache_index_dir(cache_dir, f"bench-{bench.root.resolve()}",
                                                                        enc)
        index, _ = build_index(bench.gallery, index_dir, enc, spec=IndexSpec("Flat"), source=str(bench.root))
        ids = [r["id"] for r in index.rows]
        out = []
        for spec in rephrasers:
            rephraser = create_rephraser(spec)
            rephrase(rephraser, "a cat")  # loads a model, if any, before the clock starts
            seconds, texts, fallbacks = [], [], 0
            for q in queries:
                t0 = time.perf_counter()
                r = rephrase(rephraser, q.text)
                seconds.append(time.perf_counter() - t0)
                texts.append(r.rephrased)
                fallbacks += r.source.startswith("template (fallback")
            _, rows = index.index.search(enc.encode_texts(texts), 10)  # R@k needs only the top 10
            m = mean_metrics([query_metrics([ids[j] for j in row if j >= 0], q.relevant)
                              for q, row in zip(queries, rows)])
            out.append({"benchmark": bench.name, "rephraser": spec, "n": len(queries),
                        **{k: m[k] for k in SHOWN}, "ms_per_query": 1000 * float(np.mean(seconds)),
                        "fallbacks": fallbacks, "example": f"{queries[0].text!r} -> {texts[0]!r}"})
    return out


def table(results: list[dict]) -> str:
    base = {r["benchmark"]: r for r in results if r["rephraser"] == "none"}
    head = f"{'benchmark':<20}{'rephraser':<14}{'n':>6}" + "".join(f"{m:>8}" for m in SHOWN) + \
        f"{'ΔR@10':>8}{'ms/query':>10}{'fallbk':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        b = base.get(r["benchmark"])
        delta = f"{r['R@10'] - b['R@10']:+8.3f}" if b and b["n"] == r["n"] else f"{'':>8}"
        lines.append(f"{r['benchmark']:<20}{r['rephraser']:<14}{r['n']:>6}" + "".join(f"{r[m]:>8.3f}" for m in SHOWN)
                     + delta + f"{r['ms_per_query']:>10.2f}{r['fallbacks']:>8}")
    lines += ["", *(f"{r['benchmark']} {r['rephraser']}: {r['example']}" for r in results if r["rephraser"] != "none")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("benchmarks", nargs="*", type=Path, help="benchmark folders (gallery.jsonl + queries.jsonl)")
    ap.add_argument("--rephrasers", default="none,template", help="comma-separated specs; 'none' is the reference")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER)
    ap.add_argument("--limit", type=int, default=None, help="at most N text queries per benchmark (evenly spread)")
    ap.add_argument("--dev-from", type=Path, help="also measure a dev set built from this data folder's train photos")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where gallery indexes are kept between runs")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args()
    benches = list(args.benchmarks)
    if args.dev_from:
        benches.append(dev_benchmark(args.dev_from, args.cache_dir / "benchmarks" / f"dev-{args.dev_from.name}-train"))
    if not benches:
        ap.error("give at least one benchmark folder or --dev-from DATA_DIR")
    specs = [s.strip() for s in args.rephrasers.split(",") if s.strip()]
    results = [r for b in benches for r in measure(b, specs, args.encoder, args.limit, args.cache_dir)]
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
