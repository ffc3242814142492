"""Encoder throughput on this machine: image and text embeddings per second.

    python benchmarks/encoder_speed.py [--encoders lite open_clip:ViT-B-32] [--reps 5] [--json OUT]

Images are timed on preprocessed tensors (`encoder.encode_image_tensors`), so decoding and resizing
are not counted; each figure is the median over `--reps` timed calls after one warm-up call. Text is a
batch of 64 short captions through `encoder.encode_texts` (tokenising included). `open_clip:ARCH` without
a pretrained tag has random weights: the speed is the architecture's, no download needed.
The machine's load is printed too: other processes on the same cores slow every figure down.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_ENCODERS = ("lite", "open_clip:ViT-B-32")
CAPTIONS = ("a cat", "a cup of coffee", "a rocket on its launch pad", "an astronaut", "a red motorcycle",
            "a flower", "a temple in china", "a man with a camera")  # repeated to 64


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `fn()` over `reps` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_pixels(encoder, n: int):
    """(n, 3, H, W) preprocessed package sample photos, cycled to n."""
    import skimage.data
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_image

    arrays = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(), skimage.data.astronaut(),
              load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    tensors = [encoder.preprocess(Image.fromarray(a).convert("RGB")) for a in arrays]
    return torch.stack([tensors[i % len(tensors)] for i in range(n)])


def measure(name: str, reps: int, batch: int = 32, n_texts: int = 64) -> dict:
    from models import create_encoder

    start = time.perf_counter()
    encoder = create_encoder(name)
    load_s = time.perf_counter() - start
    pixels = sample_pixels(encoder, batch)
    one = pixels[:1].clone()
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(n_texts)]

    t_batch = median_seconds(lambda: encoder.encode_image_tensors(pixels), reps)
    t_one = median_seconds(lambda: encoder.encode_image_tensors(one), reps * 4)  # single calls are noisier
    t_text = median_seconds(lambda: encoder.encode_texts(texts), reps)
    return {"encoder": name, "fingerprint": encoder.fingerprint, "dim": encoder.dim, "load_s": round(load_s, 2),
            f"images_per_s_batch{batch}": batch / t_batch, "images_per_s_batch1": 1 / t_one,
            f"texts_per_s_batch{n_texts}": n_texts / t_text}


def table(rows: list[dict]) -> str:
    cols = ("encoder", "dim", "load_s", "images_per_s_batch32", "images_per_s_batch1", "texts_per_s_batch64")
    heads = ("encoder", "dim", "load s", "img/s @32", "img/s @1", "text/s @64")
    width = max(len("encoder"), *(len(r["encoder"]) for r in rows))
    lines = [f"{heads[0]:<{width}}" + "".join(f"{h:>12}" for h in heads[1:])]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r['encoder']:<{width}}" + f"{r['dim']:>12}" + f"{r['load_s']:>12.1f}"
                     + "".join(f"{r[c]:>12.1f}" for c in cols[3:]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS), help="encoder names to time")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per figure (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "python": platform.python_version(), "machine": platform.machine()}
    # On cores shared with other processes, OpenMP's default spin-waiting can make small batches
    # many times slower; OMP_WAIT_POLICY=PASSIVE or --threads 1 shows whether that is happening.
    print(f"torch {env['torch']} · {env['threads']} threads · {env['cpus']} CPUs · "
          f"load average {env['load_avg_1min']} · OMP_WAIT_POLICY={env['omp_wait_policy'] or 'unset'} · "
          f"python {env['python']} ({env['machine']})", flush=True)

    rows = []
    for name in args.encoders:
        rows.append(measure(name, args.reps))
        print(f"  timed {name}", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"median of {args.reps} timed calls after a warm-up ({4 * args.reps} for batch 1); "
          "images on preprocessed tensors, texts include tokenising")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "reps": args.reps, "results": rows}, indent=2)
                                   + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
