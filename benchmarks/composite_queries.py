"""Composite queries (sketch + text) on PACS test items: does the fused query beat the sketch alone?

    python benchmarks/composite_queries.py [--bench ../shared/benchmarks/pacs-styles] [--style sketch]

Each query is a test sketch of the benchmark plus its class word ("a dog"); the gallery is the
benchmark's test photos; relevant = every photo of the class. Reports mAP / R@1 / P@10 for the sketch
alone, the text alone and the fused query at several text weights (the app's slider), all through
SearchEngine.encode and search.pipeline.rank_queries, so exactly what the app does.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from models.style import STYLES
from search.config import PROJECT_ROOT
from search.engine import SearchEngine
from search.evaluation.benchmark import load_benchmark
from search.evaluation.metrics import mean_metrics, query_metrics
from search.index.images import load_image
from search.pipeline import rank_queries
from search.rankings import RankSettings
from search.types import Query

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # text weight; 0 = sketch alone, 1 = text alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=str(PROJECT_ROOT.parent / "shared" / "benchmarks" / "pacs-styles"))
    parser.add_argument("--style", default="sketch", help="query style to combine with text (default sketch)")
    parser.add_argument("--encoder", default="lite")
    args = parser.parse_args()
    bench = load_benchmark(args.bench)
    label = {g.id: g.label for g in bench.gallery}
    queries = [q for q in bench.queries if q.style == args.style and q.path is not None]
    with tempfile.TemporaryDirectory() as tmp:
        engine, _ = SearchEngine.build(bench.gallery, args.encoder, Path(tmp) / "index", name="composite",
                                       scorer=None)
        ids = [r["id"] for r in engine.gallery.rows]
        rows = {w: [] for w in WEIGHTS}
        weights = {w: [] for w in WEIGHTS}  # style mixtures scaled by the image's share (querybank normalisation)
        for q in queries:
            word = label[next(iter(q.relevant))]
            image = load_image(q.path)
            for w in WEIGHTS:
                query = Query(text=f"a {word}" if w > 0 else None, image=image if w < 1 else None, text_weight=w)
                encoded = engine.encode(query)
                rows[w].append(encoded.vector)
                weights[w].append(np.zeros(len(STYLES), np.float32) if encoded.style_weights is None
                                  else encoded.style_weights)
        print(f"{bench.name}: {len(queries)} {args.style} queries + class word, {len(ids)} photos, "
              f"encoder {args.encoder}")
        print(f"{'text weight':<22}{'mAP':>8}{'R@1':>8}{'P@10':>8}")
        settings = RankSettings(k=len(ids))  # full rankings, for mAP
        for w in WEIGHTS:
            hits = rank_queries("baseline", np.stack(rows[w]), engine.gallery, settings, [w < 1] * len(queries), {},
                                np.stack(weights[w]), engine.encoder.query_bank)
            m = mean_metrics([query_metrics([h.item.id for h in row], q.relevant) for row, q in zip(hits, queries)])
            name = {0.0: "0 (sketch alone)", 1.0: "1 (text alone)"}.get(w, f"{w:g} (fused)")
            print(f"{name:<22}{m['mAP']:>8.3f}{m['R@1']:>8.3f}{m['P@10']:>8.3f}")


if __name__ == "__main__":
    main()
