"""Load test of the app: concurrent gradio_client visitors searching and voting on a 10k-image index.

    python benchmarks/app_load.py [--data ../shared/data] [--clients 16] [--iterations 25] [--concurrency 4]
                                  [--scorer auto|none] [--server-threads 1]

1. Builds (once, cached under --work, default /tmp/visual-search-bench) a `lite` index of N real images
   from the shared data (every photo, painting, cartoon and sketch of coco, imagenet, sketchy photos, pacs,
   wikiart and the package samples, topped up with QuickDraw doodles) with `python -m search index`.
2. Starts `python app.py --index DIR --data-dir TMP --concurrency C` and waits for it.
3. Runs --clients visitors (threads, one `gradio_client.Client` = one session each) × --iterations of
   /search then /vote (a random choice, with consent), alternating text queries (ImageNet class names, COCO
   captions) and sketch queries (Sketchy human sketches, not in the gallery, sent through the Sketchpad
   input). The clients do not download the result images: they run on the server's own CPU here.
   Before that, one visitor alone runs --solo text and sketch searches (latency without queueing).
4. Reports errors, votes stored vs sent (and SQLite's integrity_check), client-side p50/p95 of /search and
   /vote, and server-side p50/p95 of text and sketch searches (both rankings together), alone and under the
   load, parsed from the app's "-> N+M hits in X ms" log lines.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from search.config import PROJECT_ROOT

GALLERY_SETS = ("package_samples", "coco", "imagenet", "wikiart", "pacs", "sketchy")  # then quickdraw to fill
LOG_LINE = re.compile(r"query text=(?P<text>.*) image=(?P<image>True|False) style=.* -> (\d+)\+(\d+) hits "
                      r"in (?P<ms>\d+) ms")


# ---------------------------------------------------------------- data
def read_items(data: Path, name: str) -> list[dict]:
    folder = data / name
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["abs"] = str(folder / row["path"])
    return rows


def gallery_rows(data: Path, n: int) -> list[dict]:
    rows = []
    for name in GALLERY_SETS:
        rows += [r for r in read_items(data, name) if r["style"] != "sketch" or name == "pacs"]
    if len(rows) < n:
        doodles = read_items(data, "quickdraw")
        step = max(1, len(doodles) // (n - len(rows)))
        rows += doodles[::step][: n - len(rows)]
    return rows[:n]


def build_index(data: Path, work: Path, n: int, encoder: str, scorer: str) -> Path:
    """The index directory (built once with `python -m search index` over a manifest of absolute paths)."""
    out = work / f"app-{encoder}-{n}-{scorer}"
    meta = out / "index.json"
    if meta.is_file() and json.loads(meta.read_text()).get("count") == n:
        return out
    rows = gallery_rows(data, n)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} images under {data}; need {n}")
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / f"gallery-{n}.jsonl"
    with manifest.open("w") as f:
        for r in rows:
            caption = r.get("caption") or (r.get("captions") or [None])[0]
            f.write(json.dumps({"id": r["id"], "path": r["abs"], "caption": caption, "label": r.get("label")}) + "\n")
    print(f"indexing {n} images into {out} (once; resumable)...", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search", "index", str(manifest), "--out", str(out), "--encoder", encoder,
                    "--scorer", scorer],
                   cwd=PROJECT_ROOT, check=True)
    print(f"indexed in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def text_queries(data: Path) -> list[str]:
    coco = [r["captions"][0] for r in read_items(data, "coco")]
    labels = sorted({r["label"] for r in read_items(data, "imagenet")})
    return [*coco, *(f"a photo of a {label}" for label in labels)]


def sketch_paths(data: Path) -> list[str]:
    return [r["abs"] for r in read_items(data, "sketchy") if r["style"] == "sketch"]


# ---------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(index: Path, data_dir: Path, concurrency: int, log_path: Path,
              threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    if threads:  # BLAS/OpenMP threads per request (parallelism then comes from the queue's concurrency)
        env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--index", str(index), "--port",
                                 str(port), "--data-dir", str(data_dir), "--concurrency", str(concurrency)],
                                cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"app.py did not start:\n{log_path.read_text()}")
        time.sleep(1)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- load
def sketch_value(path: str) -> dict:
    from gradio_client import handle_file

    return {"background": None, "layers": [], "composite": handle_file(path)}


def visitor(url: str, seed: int, iterations: int, texts: list[str], sketches: list[str], out: dict,
            lock: threading.Lock) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    try:
        client = Client(url, verbose=False, download_files=False)  # the clients share the server's CPU here
    except Exception as e:  # noqa: BLE001 (a load test counts every failure, whatever it is)
        with lock:
            out["errors"].append(f"client {seed}: connect: {e!r}")
        return
    for i in range(iterations):
        kind = "text" if (i + seed) % 2 == 0 else "sketch"
        try:
            start = time.perf_counter()
            if kind == "text":
                client.predict(rng.choice(texts), None, None, api_name="/search")
            else:
                client.predict("", sketch_value(rng.choice(sketches)), None, api_name="/search")
            searched = time.perf_counter()
            client.predict(rng.choice(["A", "B", "tie", "both_bad"]), True, api_name="/vote")
            voted = time.perf_counter()
        except Exception as e:  # noqa: BLE001
            with lock:
                out["errors"].append(f"client {seed} iteration {i} ({kind}): {e!r}")
            continue
        with lock:
            out[f"search_{kind}"].append(searched - start)
            out["vote"].append(voted - searched)
            out["votes_sent"] += 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{name:<22} n={len(ms):<5} p50 {pct(ms, 50):7.1f} ms   p95 {pct(ms, 95):7.1f} ms"


def server_times(log_path: Path, lines: slice) -> dict[str, list[float]]:
    """Seconds per search from the app's "-> N+M hits in X ms" log lines (a slice of them), text vs image."""
    times: dict[str, list[float]] = {"text": [], "sketch": []}
    for m in list(LOG_LINE.finditer(log_path.read_text()))[lines]:
        times["sketch" if m["image"] == "True" else "text"].append(float(m["ms"]) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "visual-search-bench")
    parser.add_argument("--n", type=int, default=10_000, help="gallery size (default %(default)s)")
    parser.add_argument("--encoder", default="lite")
    parser.add_argument("--scorer", default="auto", help="aesthetic scorer of the index (default %(default)s; "
                        "none = no aesthetic scores: same query-time work, the scores are a stored column)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--solo", type=int, default=20,
                        help="first, this many text and sketch searches by one visitor alone (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="app.py --concurrency (default %(default)s)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="OMP/OPENBLAS/MKL_NUM_THREADS of the app process (default: the app's own, 1)")
    parser.add_argument("--build-only", action="store_true", help="build the index and stop")
    args = parser.parse_args()

    index = build_index(args.data, args.work, args.n, args.encoder, args.scorer)
    if args.build_only:
        return
    texts, sketches = text_queries(args.data), sketch_paths(args.data)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="app-load-") as tmp:
        data_dir, log_path = Path(tmp), Path(tmp) / "server.log"
        proc, url = start_app(index, data_dir, args.concurrency, log_path, args.server_threads)
        try:
            from gradio_client import Client

            solo = Client(url, verbose=False, download_files=False)
            solo.predict("warm up", None, None, api_name="/search")  # the first answer also loads the image tower
            solo.predict("", sketch_value(sketches[0]), None, api_name="/search")
            marks = [len(LOG_LINE.findall(log_path.read_text()))]
            for _ in range(args.solo):
                solo.predict(rng.choice(texts), None, None, api_name="/search")
                solo.predict("", sketch_value(rng.choice(sketches)), None, api_name="/search")
            marks.append(len(LOG_LINE.findall(log_path.read_text())))
            out: dict = {"errors": [], "search_text": [], "search_sketch": [], "vote": [], "votes_sent": 0}
            lock = threading.Lock()
            threads = [threading.Thread(target=visitor, args=(url, c, args.iterations, texts, sketches, out, lock))
                       for c in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
        finally:
            stop_app(proc)
        alone, loaded = server_times(log_path, slice(*marks)), server_times(log_path, slice(marks[1], None))
        from search.votes.store import VoteStore

        with VoteStore(data_dir) as store:
            stored, integrity = store.count(), store.integrity_check()

    total = args.clients * args.iterations
    print(f"\n{args.n}-image {args.encoder} index, app --concurrency {args.concurrency}, server threads "
          f"{args.server_threads or 'default (1)'}")
    print(f"one visitor alone, {args.solo} text and {args.solo} sketch searches; server side (both rankings):")
    print("  " + line("search text", alone["text"]))
    print("  " + line("search sketch", alone["sketch"]))
    print(f"{args.clients} clients x {args.iterations} iterations (search + vote): {wall:.1f} s wall, "
          f"{total / wall:.1f} search+vote/s")
    print(f"errors: {len(out['errors'])}")
    for e in out["errors"][:10]:
        print("  ", e)
    print(f"votes sent {out['votes_sent']} / stored {stored} (of {total} attempted); integrity_check {integrity}")
    print("client side (request -> answer, includes queueing):")
    print("  " + line("search text", out["search_text"]))
    print("  " + line("search sketch", out["search_sketch"]))
    print("  " + line("vote", out["vote"]))
    print("server side under that load (both rankings, from the app log):")
    print("  " + line("search text", loaded["text"]))
    print("  " + line("search sketch", loaded["sketch"]))
    ok = not out["errors"] and stored == out["votes_sent"] == total and integrity == "ok"
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
