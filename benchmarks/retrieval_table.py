"""Evaluate an encoder on every benchmark folder under a root and print one summary table.

    python benchmarks/retrieval_table.py ../shared/benchmarks [--encoder lite] [--json OUT]

Each benchmark's full per-style table is printed as well; the summary lists the headline metric of
each (the acceptance figures of the foundation issue).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from search.config import CACHE_DIR, DEFAULT_ENCODER
from search.evaluation.evaluate import evaluate

HEADLINE = {  # benchmark -> [(style, metric)] reported in the summary
    "coco-captions": [("text", "R@5")],
    "imagenet-classes": [("text", "R@1")],
    "pacs-styles": [("sketch", "mAP"), ("painting", "mAP"), ("cartoon", "mAP"), ("overall", "mAP")],
    "sketchy-instance": [("sketch", "R@1"), ("sketch", "R@10")],
    "lowres": [("lowres", "R@1"), ("lowres", "R@10")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder holding benchmark folders")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--ranking", default="baseline")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR))
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for bench in sorted(p for p in Path(args.root).iterdir() if (p / "queries.jsonl").is_file()):
        r = evaluate(bench, encoder=args.encoder, ranking=args.ranking, cache_dir=args.cache_dir)
        results[r.benchmark] = r.to_json()
        print(f"\n## {r.benchmark}\n{r.table()}")
    print(f"\n## summary · encoder {args.encoder} · ranking {args.ranking}")
    print(f"{'benchmark':<18}{'style':<10}{'metric':<8}{'value':>7}")
    for name, res in results.items():
        for style, metric in HEADLINE.get(name, [("overall", "mAP")]):
            m = res["overall"] if style == "overall" else res["by_style"].get(style)
            if m:
                print(f"{name:<18}{style:<10}{metric:<8}{m[metric]:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
