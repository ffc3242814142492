"""Cold start: time from process start to the first answered query, with a built 100k-image index.

    python benchmarks/cold_start.py [--n 100000] [--encoder lite] [--runs 3]

Builds (once, under --work) an index directory of N items in the project's format: the package sample
photos repeated under distinct ids, with synthetic vectors around their real embeddings (embedding
100k real images would take an hour here and does not change what is measured: loading). Then, in
fresh processes, measures:
- `python -m search query DIR --text "a cat"`: start -> results printed (process exit);
- `python app.py --index DIR`: start -> first `/search` answered through gradio_client (the answer: both
  galleries' file URLs and captions), and start -> that answer's 24 result images also fetched (one HTTP
  connection, as a browser would; gradio_client's own download builds a TLS context per file, ~70 ms each).
The OS file cache is warm after the first run (as on a Space that restarts); the first run is shown too.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from search.config import PROJECT_ROOT


def build(work: Path, n: int, encoder_name: str) -> Path:
    import numpy as np

    from models import get_encoder
    from search.index.gallery_index import GalleryIndex, write_index
    from search.index.images import load_image
    from search.index.sources import default_gallery
    from search.types import GalleryItem

    out = work / f"cold-{encoder_name.replace(':', '_')}-{n}"
    enc = get_encoder(encoder_name)
    try:
        if len(GalleryIndex.load(out, enc)) == n:
            return out
    except (FileNotFoundError, ValueError):
        pass
    photos = default_gallery()
    real = enc.encode_images([load_image(p.path) for p in photos])
    rng = np.random.default_rng(0)
    vecs = real[np.arange(n) % len(real)] + 0.5 * rng.standard_normal((n, enc.dim), np.float32) / np.sqrt(enc.dim)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    items = [GalleryItem(f"synthetic/{i:06d}", photos[i % len(photos)].path, photos[i % len(photos)].caption)
             for i in range(n)]
    print(f"writing a {n}-item index to {out} (once)...", flush=True)
    write_index(out, enc, items, vecs.astype(np.float32), source="benchmarks/cold_start.py")
    return out


def time_cli(index: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search", "query", str(index), "--text", "a cat", "-k", "5"],
                   cwd=PROJECT_ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def time_app(index: Path) -> tuple[float, float]:
    """-> (seconds to the first answer, seconds until its result images are fetched too)."""
    import httpx
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--index", str(index), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        while True:  # poll cheaply until the server answers, then ask the first question
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        gallery_a, gallery_b, *_ = Client(url, verbose=False, download_files=False).predict(
            "a cat", None, None, api_name="/search")  # text, sketch, upload
        answered = time.perf_counter() - start
        with httpx.Client() as http:
            for shown in (*gallery_a, *gallery_b):
                http.get(shown["image"]["url"]).raise_for_status()
        return answered, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--encoder", default="lite")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "visual-search-bench"))
    args = parser.parse_args()
    index = build(Path(args.work), args.n, args.encoder)
    cli = [time_cli(index) for _ in range(args.runs)]
    app = [time_app(index) for _ in range(args.runs)]
    for name, times in (("python -m search query", cli), ("python app.py --index", [a for a, _ in app]),
                        ("  + result images", [b for _, b in app])):
        print(f"{name:<24} first {times[0]:5.1f} s · median {statistics.median(times):5.1f} s "
              f"over {args.runs} runs ({args.n:,} images, encoder {args.encoder}; runs: "
              f"{', '.join(f'{t:.1f}' for t in times)} s)", flush=True)


if __name__ == "__main__":
    main()
