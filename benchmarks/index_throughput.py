"""Indexing throughput against its ceiling, the same model's forward pass alone.

    python benchmarks/index_throughput.py [--images ../shared/data/imagenet/images] [--n 320]
                                          [--encoders lite open_clip:ViT-B-32]

For each encoder, on the first N real JPEGs of the folder:
- ceiling: the images decoded and preprocessed beforehand (untimed), then only
  `encoder.encode_image_tensors` over batches of the encoder's batch size;
- indexing: `build_index` from the files into a fresh index directory: decoding, EXIF, resizing,
  thumbnails (in threads, overlapping the model), the model, the FAISS index and the atomic writes.
Indexing / ceiling is the share of the model's speed that indexing keeps (the target is >= 85 %).
`open_clip:ARCH` without a tag has random weights: the speed is the architecture's, no download needed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import create_encoder
from search.config import PROJECT_ROOT
from search.index.faiss_index import IndexSpec
from search.index.gallery_index import build_index
from search.index.images import load_image
from search.types import GalleryItem


def ceiling(encoder, paths: list[Path]) -> float:
    """Images per second of the model alone on pre-decoded tensors."""
    pixels = torch.stack([encoder.preprocess(load_image(p)) for p in paths])
    bs = encoder.batch_size
    encoder.encode_image_tensors(pixels[:bs])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), bs):
        encoder.encode_image_tensors(pixels[i:i + bs])
    return len(paths) / (time.perf_counter() - start)


def indexing(encoder, paths: list[Path]) -> float:
    """Images per second of a full `build_index` run from the files."""
    with tempfile.TemporaryDirectory() as tmp:
        items = [GalleryItem(p.name, p) for p in paths]
        start = time.perf_counter()
        _, report = build_index(items, Path(tmp) / "index", encoder, spec=IndexSpec("Flat"), progress=False)
        seconds = time.perf_counter() - start
    assert report.added == len(paths), report.summary()
    return len(paths) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(PROJECT_ROOT.parent / "shared" / "data" / "imagenet" / "images"))
    parser.add_argument("--n", type=int, default=320, help="images per measurement (default %(default)s)")
    parser.add_argument("--encoders", nargs="+", default=["lite", "open_clip:ViT-B-32"])
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})[:args.n]
    if not paths:
        sys.exit(f"no JPEG files in {args.images}")
    mean_px = sum(load_image(p).width * load_image(p).height for p in paths[:50]) / min(50, len(paths))
    print(f"{len(paths)} JPEGs from {args.images} (mean {mean_px / 1e3:.0f} kpx) · torch threads "
          f"{torch.get_num_threads()} · load {os.getloadavg()[0]:.2f}")
    print(f"{'encoder':<22}{'ceiling img/s':>15}{'indexing img/s':>16}{'share':>8}")
    for name in args.encoders:
        encoder = create_encoder(name)
        top = ceiling(encoder, paths)
        got = indexing(encoder, paths)
        print(f"{name:<22}{top:>15.1f}{got:>16.1f}{got / top:>8.0%}", flush=True)


if __name__ == "__main__":
    main()
