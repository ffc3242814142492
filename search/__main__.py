"""Command line: `python -m search {eval,train-encoder} ...` (offline stages; serving is app.py)."""
from __future__ import annotations

import argparse
import logging
import sys


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_outputs

    result = evaluate(args.benchmark, encoder=args.encoder, ranking=args.ranking,
                      cache_dir=None if args.no_cache else args.cache_dir)
    print(f"{result.benchmark} · encoder {result.encoder} · ranking {result.ranking}")
    print(result.table())
    if result.problems:
        print(f"\n{len(result.problems)} bad row(s) skipped:")
        for p in result.problems:
            print(f"  {p}")
    write_outputs(result, args.out, args.rankings_out)
    return 0


def _train_encoder(args: argparse.Namespace) -> int:
    from .train_encoder import TrainConfig, train_encoder

    train_encoder(args.data, args.out, cache_dir=args.cache_dir, cfg=TrainConfig(steps=args.steps, seed=args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    from models import OfflineError

    from .config import CACHE_DIR, DEFAULT_ENCODER, PROJECT_ROOT
    from .train_encoder import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="retrieval metrics on a benchmark folder (gallery.jsonl + queries.jsonl)")
    p.add_argument("benchmark", help="benchmark folder")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder name (default {DEFAULT_ENCODER})")
    p.add_argument("--ranking", default="baseline", help="ranking to evaluate (default baseline)")
    p.add_argument("--out", help="write metrics as JSON to this file")
    p.add_argument("--rankings-out", help="write each query's ranked gallery ids as JSONL")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="gallery embedding cache (default %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.set_defaults(func=_eval)

    p = sub.add_parser("train-encoder", help="train the lite encoder's heads on the train splits of a data folder")
    p.add_argument("--data", required=True, help="data folder with <dataset>/items.jsonl (e.g. ../shared/data)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "models" / "weights" / "lite_heads.pt"))
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="tower-output cache (default %(default)s)")
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimiser steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.set_defaults(func=_train_encoder)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, OfflineError) as e:  # bad input or setup: a message, not a traceback
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
