"""Embedding throughput: `embed --engine ray` vs `--engine local` vs the single-process indexer, against the
model-only ceiling, on the same images.

    python benchmarks/scale_embed.py [--images ../shared/data/imagenet/images] [--n 400] [--encoder lite]
                                     [--actors 2] [--shard-size 50] [--scorer auto]

- ceiling: the images decoded and preprocessed beforehand (untimed), then only `encode_image_tensors`
  in batches (torch's default threads: all cores);
- indexer: `build_index` (the single-process indexer of `python -m search index SOURCE --out DIR`): decoding
  in threads, thumbnails, aesthetic scores, the model, the FAISS index, atomic writes;
- local: `embed_to_shards(engine="local")`: the same work into Parquet shards, in this process;
- (shards carry no detected style unless --style on: the indexer detects none, so the work is the same)
- ray: `embed_to_shards(engine="ray")` on a local Ray cluster started beforehand (`ray.init(num_cpus=CORES)`,
  not timed: a cluster is up before a job is sent to it), `--actors` actors of one CPU (one torch thread)
  each; timed from submission to the last shard, so the actors' start and model loading are included.
  `ray (steady)` leaves them out: images/s over the shards after the first of each actor.
Figures are images/s and shares of the indexer's and of the ceiling.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import get_encoder
from search.config import PROJECT_ROOT
from search.engine import make_scorer
from search.index.faiss_index import IndexSpec
from search.index.gallery_index import build_index
from search.index.images import load_image
from search.index.shards import embed_to_shards
from search.types import GalleryItem


def ceiling(encoder, paths: list[Path]) -> float:  # noqa: ANN001
    pixels = torch.stack([encoder.preprocess(load_image(p)) for p in paths])
    bs = encoder.batch_size
    encoder.encode_image_tensors(pixels[:bs])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), bs):
        encoder.encode_image_tensors(pixels[i:i + bs])
    return len(paths) / (time.perf_counter() - start)


def indexer(encoder, items: list[GalleryItem], scorer: str) -> float:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, report = build_index(items, Path(tmp) / "index", encoder, spec=IndexSpec("Flat"), progress=False,
                                scorer=make_scorer(scorer, encoder))
        seconds = time.perf_counter() - start
    assert report.added == len(items), report.summary()
    return len(items) / seconds


def shards(items: list[GalleryItem], encoder: str, engine: str, scorer: str, shard_size: int,
           actors: int, style: bool) -> tuple[float, float | None]:
    """-> (images/s from submission to the last shard, steady images/s or None)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        start = time.perf_counter()
        manifest, report = embed_to_shards(items, out, encoder, engine=engine, scorer=scorer, shard_size=shard_size,
                                           actors=actors, progress=False, style=style)
        seconds = time.perf_counter() - start
        assert report.embedded == len(items), report.summary()
        steady = None
        if engine == "ray":  # shard files' mtimes: each actor's first shard includes its start-up
            times = sorted((out / n).stat().st_mtime for n in manifest.shards)
            if len(times) > actors:
                steady = shard_size * (len(times) - actors) / (times[-1] - times[actors - 1])
    return len(items) / seconds, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(PROJECT_ROOT.parent / "shared" / "data" / "imagenet" / "images"))
    parser.add_argument("--n", type=int, default=400, help="images per measurement (default %(default)s)")
    parser.add_argument("--encoder", default="lite")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--scorer", default="auto", help="aesthetic scorer for all runs (default %(default)s)")
    parser.add_argument("--style", choices=["on", "off"], default="off",
                        help="shards with detected styles (the indexer detects none; default %(default)s)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ceiling", "indexer", "local", "ray"])
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})[:args.n]
    if not paths:
        sys.exit(f"no JPEG files in {args.images}")
    items = [GalleryItem(p.name, p) for p in paths]
    encoder = get_encoder(args.encoder)
    print(f"{len(paths)} JPEGs from {args.images} · encoder {encoder.fingerprint} · scorer {args.scorer} · "
          f"style {args.style} · {os.cpu_count()} cores · torch threads {torch.get_num_threads()} · "
          f"load {os.getloadavg()[0]:.2f}",
          flush=True)
    rates: dict[str, float] = {}
    if "ceiling" not in args.skip:
        rates["ceiling (model only)"] = ceiling(encoder, paths)
    if "indexer" not in args.skip:
        rates["indexer (build_index)"] = indexer(encoder, items, args.scorer)
    if "local" not in args.skip:
        rates["embed --engine local"] = shards(items, args.encoder, "local", args.scorer, args.shard_size, 1,
                                                         args.style == "on")[0]
    if "ray" not in args.skip:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        total, steady = shards(items, args.encoder, "ray", args.scorer, args.shard_size, args.actors,
                               args.style == "on")
        rates[f"embed --engine ray ({args.actors} actors)"] = total
        if steady:
            rates["  ray, steady (after start-up)"] = steady
        ray.shutdown()
    base = rates.get("indexer (build_index)")
    top = rates.get("ceiling (model only)")
    print("\n| run | images/s | × indexer | × ceiling |\n|---|---:|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} | {rate / top:.2f} |" if base and top else
              f"| {name} | {rate:.1f} | | |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
