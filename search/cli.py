"""The command line, `visual-search SUBCOMMAND` (or `python -m search SUBCOMMAND`): each subcommand parses its
arguments and calls one function of the package that does the work (search/index, search/evaluation,
search/training, search/votes); files on disk are the contract between them."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _eval(args: argparse.Namespace) -> int:
    from search.evaluation.evaluate import evaluate, write_outputs
    from search.rankings import RankSettings

    result = evaluate(args.benchmark, encoder=args.encoder, ranking=args.ranking,
                      cache_dir=None if args.no_cache else args.cache_dir, style=args.style == "on",
                      settings=RankSettings(aesthetic_weight=args.aesthetic_weight), rephraser=args.rephraser,
                      style_words=args.style_words == "on")
    print(f"{result.benchmark} · encoder {result.encoder} · ranking {result.ranking} · style {args.style}"
          + (" · style words off" if args.style_words == "off" else ""))
    print(result.table())
    if result.problems:
        print(f"\n{len(result.problems)} bad row(s) skipped:")
        for p in result.problems:
            print(f"  {p}")
    write_outputs(result, args.out, args.rankings_out)
    return 0


def _index(args: argparse.Namespace) -> int:
    from search.index.shards import is_shards_dir

    if str(args.out).startswith("milvus:") or is_shards_dir(args.source):
        return _index_from_shards(args)
    from models import get_encoder
    from models.safety import as_safety_filter
    from search.engine import make_scorer
    from search.index.faiss_index import IndexSpec
    from search.index.gallery_index import build_index
    from search.index.sources import read_source

    out = Path(args.out)
    items, skipped = read_source(args.source, extract_to=out / "files")
    spec = IndexSpec(args.factory, args.params, args.rerank) if args.factory else None
    encoder = get_encoder(args.encoder)
    index, report = build_index(items, out, encoder, spec=spec, source=str(args.source), skipped=skipped,
                                rebuild=args.rebuild, checkpoint_seconds=args.checkpoint_seconds,
                                scorer=make_scorer(args.scorer, encoder), safety=as_safety_filter(args.safety))
    print(f"{out}: {len(index)} images · encoder {index.meta.fingerprint} · index {index.meta.factory}"
          f"{' ' + index.meta.params if index.meta.params else ''}"
          f"{f' · exact re-ranking of {index.meta.rerank}' if index.meta.rerank else ''}")
    print(report.summary())
    print(f"log: {out / 'index.log'}")
    return 0


def _index_from_shards(args: argparse.Namespace) -> int:
    """`index SHARDS_DIR --out FAISS_DIR|milvus:...`, or `index SOURCE --out milvus:...` (embedded into shards
    first, locally: --shards, default beside a Milvus Lite file or under the cache)."""
    from search.index.shards import is_shards_dir, read_shards, write_faiss_index

    shards_dir = Path(args.source)
    if not is_shards_dir(shards_dir):  # images: embed them into shards first (only new or changed ones)
        shards_dir = Path(args.shards) if args.shards else _default_shards_dir(args.out)
        _run_embed(args.source, shards_dir, args.encoder, "local", args.scorer, safety=args.safety)
    shards = read_shards(shards_dir)
    if str(args.out).startswith("milvus:"):
        from search.index.milvus_index import build_milvus

        gallery, report = build_milvus(shards, args.out, args.index_type, rebuild=args.rebuild)
        print(f"{args.out}: {len(gallery)} images · encoder {gallery.meta.fingerprint} · Milvus index "
              f"{gallery.spec.index_type} · from {shards_dir}")
        print(report.summary())
        return 0
    from search.index.faiss_index import IndexSpec

    spec = IndexSpec(args.factory, args.params, args.rerank) if args.factory else None
    index = write_faiss_index(shards, args.out, spec)
    print(f"{args.out}: {len(index)} images · encoder {index.meta.fingerprint} · index {index.meta.factory} "
          f"· from {shards_dir}")
    return 0


def _default_shards_dir(out: str) -> Path:
    """Where `index SOURCE --out milvus:...` keeps its shards: PATH.shards/ beside a Milvus Lite PATH.db, else
    a folder of the cache named after the collection."""
    import hashlib

    from search.config import CACHE_DIR
    from search.index.milvus_index import MilvusTarget

    target = MilvusTarget.parse(out)
    if target.lite:
        return Path(target.uri).with_suffix(".shards")
    return CACHE_DIR / "shards" / hashlib.sha1(str(target).encode()).hexdigest()[:12]


def _run_embed(source: str, out: Path, encoder: str, engine: str, scorer: str, **options: object) -> None:
    from search.index.shards import embed_to_shards
    from search.index.sources import read_source

    items, skipped = read_source(source, extract_to=out / "files")
    manifest, report = embed_to_shards(items, out, encoder, engine=engine, scorer=scorer, source=str(source),
                                       skipped=skipped, **options)
    print(f"{out}: {manifest.count} images in {len(manifest.shards)} shard(s) · encoder {manifest.fingerprint}")
    print(report.summary())
    for s in report.skipped:
        print(f"  skipped {s}")


def _embed(args: argparse.Namespace) -> int:
    _run_embed(args.source, Path(args.out), args.encoder, args.engine, args.scorer, style=args.style == "on",
               safety=args.safety,
               **given(shard_size=args.shard_size, batch_size=args.batch_size, actors=args.actors,
                       cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                       address=args.address))
    return 0


def _query(args: argparse.Namespace) -> int:
    import json

    from search.engine import SearchEngine
    from search.index.images import load_image
    from search.types import Query

    engine = SearchEngine.open(args.index, args.encoder)
    if args.filter:
        if not hasattr(engine.gallery, "filtered"):
            raise ValueError("--filter needs a Milvus index (milvus:PATH.db or milvus://HOST:PORT/COLLECTION)")
        engine = replace(engine, gallery=engine.gallery.filtered(args.filter))
    query = Query(text=args.text, image=load_image(args.image) if args.image else None)
    hits = engine.search(query, k=args.k)
    if args.json:  # one object per hit, so scripts can compare backends
        for hit in hits:
            print(json.dumps({"rank": hit.rank, "id": hit.item.id, "score": round(hit.score, 6),
                              "path": str(hit.item.path)}, ensure_ascii=False))
        return 0
    print("rank  cosine  id   (cosine similarity to the query, -1 to 1)")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:6.3f}  {hit.item.id}")
    return 0


def _publish_index(args: argparse.Namespace) -> int:
    from search.index.hub import publish_index

    where = publish_index(args.index, args.repo, private=args.private, with_images=args.with_images,
                          dry_run=args.dry_run)
    print(f"staged in {where} (nothing uploaded)" if args.dry_run else f"published {args.index} to {where}")
    return 0


def _export_votes(args: argparse.Namespace) -> int:
    from search.votes.store import export_votes

    n = export_votes(args.data_dir, args.out)
    print(f"{n} vote(s) written to {args.out}")
    return 0


def _vote_report(args: argparse.Namespace) -> int:
    from search.votes.report import load_votes, write_report

    votes = load_votes(None if args.votes else args.data_dir, args.votes)
    md = write_report(votes, args.out, bootstrap=args.bootstrap, ties=args.ties)
    print(f"{len(votes)} vote(s): {md} and plots in {md.parent}")
    return 0


def _aesthetic_score(args: argparse.Namespace) -> int:
    import json

    from models import create_scorer, get_encoder, scorer_for
    from search.index.images import ImageLoadError, load_image

    encoder = get_encoder(args.encoder)
    scorer = create_scorer(args.scorer, encoder) if args.scorer else scorer_for(encoder)
    out = open(args.out, "w") if args.out else sys.stdout  # closed below unless stdout
    n_ok, skipped = 0, []
    try:
        for start in range(0, len(args.paths), 32):
            images, paths = [], []
            for path in args.paths[start : start + 32]:
                try:
                    images.append(load_image(path))
                    paths.append(path)
                except ImageLoadError as e:
                    skipped.append(e)
                    print(f"skipped {e}", file=sys.stderr)
            for path, score in zip(paths, scorer.score_images(images)):
                out.write(json.dumps({"path": path, "score": round(float(score), 6)}) + "\n")
            n_ok += len(paths)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{n_ok} image(s) scored with {scorer.fingerprint}; {len(skipped)} skipped", file=sys.stderr)
    return 0


def _train_aesthetic(args: argparse.Namespace) -> int:
    from search.training.aesthetic import AestheticTrainConfig, train_aesthetic

    train_aesthetic(args.data, args.out, AestheticTrainConfig(**given(photos=args.photos, seed=args.seed)))
    return 0


def _train_encoder(args: argparse.Namespace) -> int:
    from search.training.encoder import TrainConfig, train_encoder

    cfg = TrainConfig(**given(steps=args.steps, seed=args.seed))
    train_encoder(args.data, args.out, cache_dir=args.cache_dir, cfg=cfg)
    return 0


def _train_adapters(args: argparse.Namespace) -> int:
    from search.training.adapters import AdapterConfig, train_adapters

    cfg = AdapterConfig(**given(steps=args.steps, seed=args.seed))
    train_adapters(args.data, args.heads, args.out, args.cache_dir, cfg)
    return 0


def _train_align(args: argparse.Namespace) -> int:
    from search.training.align import AlignConfig, train_align

    train_align(args.data, args.out, cache_dir=args.cache_dir, votes=args.votes, vote_gallery=args.vote_gallery,
                cfg=AlignConfig(steps=args.steps, seed=args.seed))
    return 0


def _query_bank(args: argparse.Namespace) -> int:
    from search.training.query_bank import build_query_bank

    build_query_bank(args.data, args.out, args.encoder, per_style=args.per_style, seed=args.seed)
    return 0


def _train_style(args: argparse.Namespace) -> int:
    from search.training.style import train_style

    train_style(args.data, args.out, per_style=args.per_style, seed=args.seed)
    return 0


def _train_style_words(args: argparse.Namespace) -> int:
    from search.training.style_words import train_style_words

    train_style_words(args.data, args.out, args.encoder, per_style=args.per_style, seed=args.seed,
                      **given(weight=args.weight))
    return 0


def given(**values: object) -> dict:
    """The options given on the command line (the rest keep their config class's defaults)."""
    return {k: v for k, v in values.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    from search.config import CACHE_DIR, DATA_DIR, DEFAULT_ENCODER, DEFAULT_REPHRASER, PROJECT_ROOT, setup_process

    parser = argparse.ArgumentParser(prog="visual-search", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a folder, manifest (.jsonl/.csv) or .zip of images into a directory")
    p.add_argument("source", help="folder (recursive), manifest with a path column, .zip, or a Hugging Face dataset: "
                                  "hf://datasets/OWNER/NAME[:SPLIT] (or a local Parquet / save_to_disk copy); or "
                                  "a shards directory written by `embed`")
    p.add_argument("--out", required=True, help="index directory (created; re-running updates it), or a Milvus "
                                                "collection: milvus:PATH.db (Milvus Lite) or "
                                                "milvus://HOST:PORT/COLLECTION")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name (default {DEFAULT_ENCODER})")
    p.add_argument("--factory", help="FAISS index_factory string, e.g. Flat, HNSW32, 'PCAR256,IVF4096,PQ64x4fs' "
                                     "(default: chosen by gallery size)")
    p.add_argument("--params", default="", help="FAISS search parameters with --factory, e.g. nprobe=32")
    p.add_argument("--rerank", type=int, default=0,
                   help="with --factory: re-score this many candidates exactly (for compressed indexes)")
    p.add_argument("--rebuild", action="store_true", help="re-embed everything (e.g. with another encoder)")
    p.add_argument("--scorer", default="auto",
                   help="aesthetic scorer stored with each image: auto (fits the encoder), none, or a name")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0,
                   help="save progress this often, so an interrupted run resumes (default %(default)s)")
    p.add_argument("--safety", choices=["on", "off"], default="off",
                   help="nudity filter (pip install nudenet): flagged images are kept but never returned by a "
                        "search (default %(default)s; see docs/safety.md)")
    p.add_argument("--index-type", choices=["FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW"],
                   help="with --out milvus:...: the Milvus vector index (default: chosen by gallery size)")
    p.add_argument("--shards", help="with --out milvus:... and a SOURCE of images: where their embedding shards "
                                    "go (default: PATH.shards beside milvus:PATH.db)")
    p.set_defaults(func=_index)

    p = sub.add_parser("embed", help="embed a gallery into Parquet shards (locally or on a Ray cluster), the input "
                                     "of `index SHARDS_DIR --out ...`; re-runs write only missing shards")
    p.add_argument("source", help="folder, manifest, .zip or hf://datasets/OWNER/NAME (as for `index`)")
    p.add_argument("--out", required=True, help="shards directory (created; re-running finishes or updates it)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: in this process; ray: Ray Data actors, one model each (default %(default)s)")
    p.add_argument("--address", help="with --engine ray: auto (the running cluster), ray://HOST:10001, or none "
                                     "to start a local one (default)")
    p.add_argument("--actors", type=int, help="with --engine ray: actors in the pool (default 2)")
    p.add_argument("--cpus-per-actor", type=float, help="with --engine ray: CPUs (and torch threads) per actor "
                                                        "(default 1)")
    p.add_argument("--gpus-per-actor", type=float, help="with --engine ray: GPUs per actor (default 0)")
    p.add_argument("--batch-size", type=int, help="images per model forward (default: the encoder's)")
    p.add_argument("--shard-size", type=int, help="images per shard (default 1000)")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name (default {DEFAULT_ENCODER})")
    p.add_argument("--scorer", default="auto",
                   help="aesthetic scorer stored with each image: auto (fits the encoder), none, or a name")
    p.add_argument("--style", choices=["on", "off"], default="on",
                   help="detect each image's style (photo, sketch, ...) for filters; costs the lite encoder ~45 %% "
                        "more time (default %(default)s)")
    p.add_argument("--safety", choices=["on", "off"], default="off",
                   help="nudity filter (pip install nudenet): flagged images are kept in the shards with the reason, "
                        "and every index built from them hides them (default %(default)s; see docs/safety.md)")
    p.set_defaults(func=_embed)

    p = sub.add_parser("query", help="search an index directory from the command line")
    p.add_argument("index", help="index directory, hf://datasets/OWNER/NAME (a published index, fetched once), "
                                 "milvus:PATH.db or milvus://HOST:PORT/COLLECTION")
    p.add_argument("--text", help="text query")
    p.add_argument("--image", help="image query file")
    p.add_argument("-k", type=int, default=10, help="results (default %(default)s)")
    p.add_argument("--encoder", help="encoder (default: the one the index was built with)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit: rank, id, score, path")
    p.add_argument("--filter", help="Milvus indexes: a filter expression over the images' fields, e.g. "
                                    "'style == \"photo\" and aesthetic > 0' (fields: id, path, caption, label, "
                                    "aesthetic, style, width, height, bytes)")
    p.set_defaults(func=_query)

    p = sub.add_parser("publish-index", help="upload an index directory to a Hugging Face dataset repo")
    p.add_argument("index", help="index directory (built by `python -m search index`)")
    p.add_argument("--repo", required=True, help="dataset repo OWNER/NAME (created if missing; needs HF_TOKEN or "
                                                 "`hf auth login`)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--with-images", action="store_true",
                   help="also upload the images extracted under the index (files/); default: thumbnails only")
    p.add_argument("--dry-run", action="store_true", help="stage the files to upload in a temporary folder, "
                                                          "upload nothing")
    p.set_defaults(func=_publish_index)

    p = sub.add_parser("eval", help="retrieval metrics on a benchmark folder (gallery.jsonl + queries.jsonl)")
    p.add_argument("benchmark", help="benchmark folder")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name (default {DEFAULT_ENCODER})")
    p.add_argument("--ranking", default="baseline", choices=["baseline", "aligned", "shift"],
                   help="ranking to evaluate (default baseline; others are reported beside the baseline)")
    p.add_argument("--style", choices=["on", "off"], default="on",
                   help="condition image queries on their detected style (default on)")
    p.add_argument("--style-words", choices=["on", "off"], default="on",
                   help="text naming a style (\"a sketch of a horse\") ranks images of that style first (default on)")
    p.add_argument("--aesthetic-weight", type=float, default=0.5, help="aligned ranking: lambda (default 0.5)")
    p.add_argument("--rephraser", default=DEFAULT_REPHRASER,
                   help="aligned ranking: query rephraser (default %(default)s)")
    p.add_argument("--out", help="write metrics as JSON to this file")
    p.add_argument("--rankings-out", help="write each query's ranked gallery ids as JSONL")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="gallery embedding cache (default %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.set_defaults(func=_eval)

    p = sub.add_parser("train-encoder", help="train the lite encoder's heads on the train splits of a data folder")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "models" / "weights" / "lite_heads.pt"))
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="tower-output cache (default %(default)s)")
    p.add_argument("--steps", type=int, help="optimiser steps (default: TrainConfig's)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_train_encoder)

    p = sub.add_parser("train-style", help="fit the style bases (Gram descriptors + K-means) on the train splits")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "models" / "weights" / "style_space.npz"))
    p.add_argument("--per-style", type=int, default=600, help="training images per style (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_style)

    p = sub.add_parser("train-style-words", help="fit the probe that matches gallery images to styles named in text")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--encoder", default="lite", help="the encoder whose gallery vectors it reads (default lite)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "models" / "weights" / "lite_style_probe.npz"))
    p.add_argument("--per-style", type=int, default=500, help="training images per style (default %(default)s)")
    p.add_argument("--weight", type=float, help="weight of the style match in rankings (default: chosen on dev)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_style_words)

    weights = PROJECT_ROOT / "models" / "weights"
    p = sub.add_parser("train-adapters", help="fit the lite encoder's style adapters on train splits")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--heads", default=str(weights / "lite_heads.pt"), help="the frozen heads (default %(default)s)")
    p.add_argument("--out", default=str(weights / "lite_style_adapters.pt"))
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="tower-output cache (default %(default)s)")
    p.add_argument("--steps", type=int, help="optimiser steps (default: AdapterConfig's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_adapters)

    p = sub.add_parser("query-bank", help="encode train queries of each style: the bank that finds hub photos")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--encoder", default="lite", help="the encoder whose queries fill the bank (default %(default)s)")
    p.add_argument("--out", default=str(weights / "lite_query_bank.npz"))
    p.add_argument("--per-style", type=int, default=512, help="queries per style (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_query_bank)

    p = sub.add_parser("train-align", help="ranked-DPO alignment of the lite encoder (re-ranked lists + votes)")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--votes", help="exported votes (.jsonl/.parquet, or a folder of them) to learn from too")
    p.add_argument("--vote-gallery", help="the gallery the votes were cast on: index directory or source "
                                          "(default: the app's built-in gallery)")
    p.add_argument("--out", default=str(weights / "lite_aesthetic_gate.pt"),
                   help="the aesthetic gate (default %(default)s; models/configs/lite-aligned.json uses it)")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="tower-output cache (default %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_align)

    p = sub.add_parser("aesthetic-score", help="aesthetic scores of image files, one JSON line per image")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name (default {DEFAULT_ENCODER})")
    p.add_argument("--scorer", help="scorer name (default: the encoder's; see models.list_scorers())")
    p.add_argument("--out", help="write {path, score} JSON lines here (default stdout)")
    p.set_defaults(func=_aesthetic_score)

    p = sub.add_parser("train-aesthetic", help="train the lite-quality scorer on train photos and degraded copies")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--out", default=str(weights / "lite_aesthetic.pt"))
    p.add_argument("--photos", type=int, help="train photos sampled (default: AestheticTrainConfig's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_aesthetic)

    p = sub.add_parser("export-votes", help="write the app's preference votes to a .jsonl or .parquet file")
    p.add_argument("--data-dir", default=str(DATA_DIR), help="the app's data directory (default %(default)s)")
    p.add_argument("--out", required=True, help="output file: votes.jsonl or votes.parquet")
    p.set_defaults(func=_export_votes)

    p = sub.add_parser("vote-report", help="what the votes say: report.md and plots (win rates, kinds, arena)")
    p.add_argument("--data-dir", default=str(DATA_DIR), help="the app's data directory (default %(default)s)")
    p.add_argument("--votes", help="read an export (.jsonl/.parquet, or a folder of them) instead of --data-dir")
    p.add_argument("--out", required=True, help="output folder (report.md and PNG plots)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="Bradley-Terry bootstrap resamples (default %(default)s)")
    p.add_argument("--ties", choices=["half", "exclude"], default="half",
                   help="Bradley-Terry: a tie or both-bad vote counts half a win to each side, or is left out "
                        "(default %(default)s)")
    p.set_defaults(func=_vote_report)

    args = parser.parse_args(argv)
    setup_process(verbose=args.verbose)
    from models import OfflineError
    try:
        return args.func(args)
    except (ValueError, OSError, OfflineError) as e:  # bad input or setup: a message, not a traceback
        parser.exit(2, f"error: {e}\n")


