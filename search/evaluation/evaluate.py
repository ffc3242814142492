"""`python -m search eval BENCH`: retrieval metrics of an encoder + ranking on a benchmark folder."""
from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models import Encoder, get_encoder
from models.style import STYLES
from search.config import CACHE_DIR, DEFAULT_ENCODER, DEFAULT_REPHRASER
from search.engine import cache_index_dir
from search.evaluation.benchmark import Benchmark, BenchQuery, Problem, load_benchmark
from search.evaluation.metrics import AESTHETIC_METRICS, METRICS, mean_metrics, query_metrics
from search.index.embedding import embed_files
from search.index.faiss_index import IndexSpec
from search.index.gallery_index import GalleryIndex, build_index
from search.index.images import load_image
from search.layout import is_lowres
from search.pipeline import rank_queries
from search.rankings import RankSettings, blend_rephrasing, get_ranking, rephrase_weight
from search.style_text import content_text, read_text_style, style_bonus, style_probe_for
from search.types import Hit, Skipped

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
    style: bool = True                    # image queries conditioned on their detected style
    baseline: EvalResult | None = None    # the baseline ranking of the same queries, beside another ranking

    def to_json(self) -> dict:
        out = {"benchmark": self.benchmark, "encoder": self.encoder, "ranking": self.ranking, "style": self.style,
               "overall": self.overall, "by_style": self.by_style, "problems": [str(p) for p in self.problems]}
        if self.baseline is not None:
            out["baseline"] = {"overall": self.baseline.overall, "by_style": self.baseline.by_style}
        return out

    def table(self) -> str:
        keys = [*METRICS, *(k for k in AESTHETIC_METRICS if k in self.overall)]
        head = f"{'style':<12}" + "".join(f"{m:>9}" for m in keys) + f"{'n':>7}"
        rows = [head, "-" * len(head)]
        results = [(self.ranking, self)] if self.baseline is None else [("baseline", self.baseline),
                                                                         (self.ranking, self)]
        for name, r in results:
            if len(results) > 1:
                rows.append(f"[{name}]")
            for style, m in [*sorted(r.by_style.items()), ("overall", r.overall)]:
                rows.append(f"{style:<12}" + "".join(f"{m[k]:>9.3f}" for k in keys) + f"{m['n']:>7}")
        return "\n".join(rows)


def evaluate(bench_dir: str | Path, encoder: str = DEFAULT_ENCODER, ranking: str = "baseline",
             cache_dir: str | Path | None = CACHE_DIR, style: bool = True,
             settings: RankSettings | None = None, rephraser: str = DEFAULT_REPHRASER, style_words: bool = True,
             style_weight: float | None = None) -> EvalResult:
    """Index the gallery (kept under `cache_dir` for the next run, if set), run every query, score per style.

    `style`: image queries are conditioned on their detected style (style-aware encoders only).
    A ranking other than the baseline also reports the baseline beside it; it scores the gallery's
    aesthetics (the encoder's default scorer) and searches with rephrased text queries.
    `style_words`: text queries naming a style are searched by their content and the style match, with
    `style_weight` (default the encoder's style probe's) as in the app (search/style_text.py).
    """
    bench: Benchmark = load_benchmark(bench_dir)
    enc = get_encoder(encoder)
    get_ranking(ranking)  # unknown names fail before any work
    scorer = None
    if ranking != "baseline":
        from models.aesthetic import scorer_for

        scorer = scorer_for(enc)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench-{bench.root.resolve()}" + (f"-{scorer.name}" if scorer else "")
        index_dir = Path(tmp) if cache_dir is None else cache_index_dir(cache_dir, name, enc)
        # exact search: benchmark figures measure the encoder and ranking, not an approximate index
        gallery_index, report = build_index(bench.gallery, index_dir, enc, spec=IndexSpec("Flat"),
                                            source=str(bench.root), scorer=scorer)
        reads = {q.line: read_text_style(enc, q.text, style_words) for q in bench.queries}
        bench = replace(bench, queries=[replace(q, text=content_text(reads[q.line], q.text)) if reads[q.line] else q
                                        for q in bench.queries])
        queries, qvecs, probs, problems = _encode_queries(bench, enc, gallery_index, report.skipped, style)
        bonus = style_bonus(gallery_index, style_probe_for(enc),
                            [reads[q.line].label if reads[q.line] else None for q in queries], style_weight)
        settings = replace(settings or RankSettings(), k=len(gallery_index))  # full rankings, for mAP
        result = _score(bench, queries, qvecs, probs, gallery_index, problems, enc, "baseline", settings, style,
                        bonus)
        if ranking == "baseline":
            return result
        texts = [i for i, q in enumerate(queries) if q.text is not None]
        if texts:
            from search.rephrase import create_rephraser, rephrase

            r = create_rephraser(rephraser)
            qvecs = qvecs.copy()
            rephrased = enc.encode_texts([rephrase(r, queries[i].text).rephrased for i in texts])
            qvecs[texts] = blend_rephrasing(qvecs[texts], rephrased, rephrase_weight(gallery_index, settings))
        other = _score(bench, queries, qvecs, probs, gallery_index, problems, enc, ranking, settings, style, bonus)
        other.baseline = result
        return other


def _encode_queries(bench: Benchmark, enc: Encoder, gallery_index: GalleryIndex, skipped: list[Skipped],
                    style: bool) -> tuple[list[BenchQuery], np.ndarray, np.ndarray, list[Problem]]:
    """The usable queries, their vectors, the detected style mixtures of image queries (with `style`, so they
    rank as in the app; rows of 0 otherwise), and every bad row (with its file and line)."""
    problems = list(bench.problems)
    line_of = {str(g.path): n for g, n in zip(bench.gallery, bench.gallery_lines)}
    problems += [Problem("gallery.jsonl", line_of[s.where], f"{Path(s.where).name}: {s.reason}")
                 for s in skipped]
    gallery_ids = {r["id"] for r in gallery_index.rows}
    queries = []
    for q in bench.queries:
        missing = sorted(q.relevant - gallery_ids)
        if missing:
            problems.append(Problem("queries.jsonl", q.line, f"relevant id(s) not in the gallery: {missing[:3]}"))
        else:
            queries.append(q)
    qvecs = np.zeros((len(queries), enc.dim), np.float32)
    usable, mixtures = np.ones(len(queries), bool), np.zeros((len(queries), len(STYLES)), np.float32)
    text_pos = [i for i, q in enumerate(queries) if q.text is not None]
    if text_pos:
        qvecs[text_pos] = enc.encode_texts([queries[i].text for i in text_pos])
    image_pos = [i for i, q in enumerate(queries) if q.text is None]
    if image_pos:
        ivecs, probs, ok_q, bad_q = embed_files(enc, [queries[i].path for i in image_pos], "queries", style=style)
        qvecs[[image_pos[i] for i in ok_q]] = ivecs
        if style and probs is not None:
            mixtures[[image_pos[i] for i in ok_q]] = probs
        for i, reason in bad_q:
            usable[image_pos[i]] = False
            q = queries[image_pos[i]]
            problems.append(Problem("queries.jsonl", q.line, f"{q.path.name}: {reason}"))
    for p in problems:
        log.warning("skipped %s", p)
    return [q for q, u in zip(queries, usable) if u], qvecs[usable], mixtures[usable], problems


def _score(bench: Benchmark, queries: list[BenchQuery], qvecs: np.ndarray, mixtures: np.ndarray,
           gallery_index: GalleryIndex, problems: list[Problem], enc: Encoder, ranking: str, settings: RankSettings,
           style: bool, style_bonus: np.ndarray | None = None) -> EvalResult:
    lowres = [i for i, m in enumerate(mixtures) if is_lowres(m)]  # rows of 0 (text, style off) read as photo
    hits = rank_queries(ranking, qvecs, gallery_index, settings, [q.text is None for q in queries],
                        {i: load_image(queries[i].path) for i in lowres}, mixtures, enc.query_bank, style_bonus)
    per_style: dict[str, list[dict]] = defaultdict(list)
    rankings = []
    for q, row in zip(queries, hits):
        ranked = [h.item.id for h in row]
        per_style[q.style].append({**query_metrics(ranked, q.relevant), **aesthetic_metrics(row)})
        rankings.append((q.id, ranked))
    return EvalResult(bench.name, enc.name, ranking, mean_metrics([m for ms in per_style.values() for m in ms]),
                      {s: mean_metrics(ms) for s, ms in per_style.items()}, problems, rankings, style)


def aesthetic_metrics(hits: list[Hit], k: int = 10) -> dict[str, float]:
    """Of the top k: "aes@10" mean aesthetic score (if scored); "orig@10" share of originals (if the gallery
    holds degraded copies, marked by a `degraded_from` field)."""
    top = hits[:k]
    out = {}
    scores = [h.item.aesthetic for h in top if h.item.aesthetic is not None]
    if scores:
        out["aes@10"] = float(np.mean(scores))
    if any("degraded_from" in h.item.extra for h in hits):
        out["orig@10"] = float(np.mean(["degraded_from" not in h.item.extra for h in top]))
    return out


def write_outputs(result: EvalResult, out: str | Path | None, rankings_out: str | Path | None,
                  keep: int = 100) -> None:
    if out:
        Path(out).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if rankings_out:
        with open(rankings_out, "w") as f:
            for qid, ranked in result.rankings:
                f.write(json.dumps({"query_id": qid, "ranked": ranked[:keep]}) + "\n")
