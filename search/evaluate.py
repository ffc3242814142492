"""`python -m search eval BENCH`: retrieval metrics of an encoder + ranking on a benchmark folder."""
from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import Encoder, get_encoder

from .benchmark import Benchmark, Problem, load_benchmark
from .config import CACHE_DIR, DEFAULT_ENCODER
from .embedding import embed_files
from .engine import cache_index_dir
from .gallery_index import GalleryIndex, build_index
from .index import IndexSpec
from .metrics import METRICS, mean_metrics, query_metrics
from .rankings import get_ranking
from .types import Skipped

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    benchmark: str
    encoder: str
    ranking: str
    overall: dict[str, float]
    by_style: dict[str, dict[str, float]]
    problems: list[Problem] = field(default_factory=list)
    rankings: list[tuple[str, list[str]]] = field(default_factory=list)  # (query id, ranked gallery ids)

    def to_json(self) -> dict:
        return {"benchmark": self.benchmark, "encoder": self.encoder, "ranking": self.ranking,
                "overall": self.overall, "by_style": self.by_style,
                "problems": [str(p) for p in self.problems]}

    def table(self) -> str:
        head = f"{'style':<12}" + "".join(f"{m:>8}" for m in METRICS) + f"{'n':>7}"
        rows = [head, "-" * len(head)]
        for style, m in [*sorted(self.by_style.items()), ("overall", self.overall)]:
            rows.append(f"{style:<12}" + "".join(f"{m[k]:>8.3f}" for k in METRICS) + f"{m['n']:>7}")
        return "\n".join(rows)


def evaluate(bench_dir: str | Path, encoder: str = DEFAULT_ENCODER, ranking: str = "baseline",
             cache_dir: str | Path | None = CACHE_DIR) -> EvalResult:
    """Index the gallery (kept under `cache_dir` for the next run, if set), run every query, score per style."""
    bench: Benchmark = load_benchmark(bench_dir)
    enc = get_encoder(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) if cache_dir is None else cache_index_dir(cache_dir, f"bench-{bench.root.resolve()}", enc)
        # exact search: benchmark figures measure the encoder and ranking, not an approximate index
        gallery_index, report = build_index(bench.gallery, index_dir, enc, spec=IndexSpec("Flat"),
                                            source=str(bench.root))
        return _run_queries(bench, enc, gallery_index, report.skipped, encoder, ranking)


def _run_queries(bench: Benchmark, enc: Encoder, gallery_index: GalleryIndex, skipped: list[Skipped],
                 encoder: str, ranking: str) -> EvalResult:
    rank = get_ranking(ranking)
    problems = list(bench.problems)
    line_of = {str(g.path): n for g, n in zip(bench.gallery, bench.gallery_lines)}
    problems += [Problem("gallery.jsonl", line_of[s.where], f"{Path(s.where).name}: {s.reason}")
                 for s in skipped]
    gallery = gallery_index.items
    gallery_ids = {g.id for g in gallery}

    queries = []
    for q in bench.queries:
        missing = sorted(q.relevant - gallery_ids)
        if missing:
            problems.append(Problem("queries.jsonl", q.line, f"relevant id(s) not in the gallery: {missing[:3]}"))
        else:
            queries.append(q)
    qvecs = np.zeros((len(queries), enc.dim), np.float32)
    usable = np.ones(len(queries), bool)
    text_pos = [i for i, q in enumerate(queries) if q.text is not None]
    if text_pos:
        qvecs[text_pos] = enc.encode_texts([queries[i].text for i in text_pos])
    image_pos = [i for i, q in enumerate(queries) if q.text is None]
    if image_pos:
        ivecs, ok_q, bad_q = embed_files(enc, [queries[i].path for i in image_pos], "queries")
        qvecs[[image_pos[i] for i in ok_q]] = ivecs
        for i, reason in bad_q:
            usable[image_pos[i]] = False
            q = queries[image_pos[i]]
            problems.append(Problem("queries.jsonl", q.line, f"{q.path.name}: {reason}"))
    queries = [q for q, u in zip(queries, usable) if u]
    qvecs = qvecs[usable]

    hits = rank(qvecs, gallery_index, len(gallery))  # full rankings, so mAP sees every relevant item
    per_style: dict[str, list[dict]] = defaultdict(list)
    rankings = []
    for q, row in zip(queries, hits):
        ranked = [h.item.id for h in row]
        per_style[q.style].append(query_metrics(ranked, q.relevant))
        rankings.append((q.id, ranked))
    for p in problems:
        log.warning("skipped %s", p)
    return EvalResult(bench.name, encoder, ranking,
                      mean_metrics([m for ms in per_style.values() for m in ms]),
                      {s: mean_metrics(ms) for s, ms in per_style.items()}, problems, rankings)


def write_outputs(result: EvalResult, out: str | Path | None, rankings_out: str | Path | None,
                  keep: int = 100) -> None:
    if out:
        Path(out).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if rankings_out:
        with open(rankings_out, "w") as f:
            for qid, ranked in result.rankings:
                f.write(json.dumps({"query_id": qid, "ranked": ranked[:keep]}) + "\n")
