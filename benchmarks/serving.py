"""Serving: what a visitor waits for, against a bare Gradio app on the same machine, in one run (issue 19).

    python benchmarks/serving.py [--work DIR] [--n 100000] [--searches 40] [--visitors 16] [--rounds 2]
                                 [--per-visitor 6] [--client http|gradio] [--skip-client] [--skip-server]

This machine is shared and noisy: every figure is set against a reference measured in the same run, and the
targets are ratios. Measured:

(a) One visitor, client side: `python app.py` (the default gallery, text queries, 12 results per side) against
    a bare Gradio app written here (a gr.Blocks whose /search takes a Textbox and returns two gr.Gallery of
    12 fixed 256-px thumbnail JPEGs each, no model; the same queue settings as the app). A search is timed
    from the call (Gradio's HTTP API, POST /gradio_api/call/search and its event stream; `--client gradio`:
    gradio_client, which burns ~160 ms of this machine's CPU per call) until every thumbnail URL of both
    galleries has been fetched, as a browser would (6 connections at once, keep-alive). The two apps are asked
    in turn (app, bare, app, ...), so the machine's noise falls on both. Target: p50 app / bare <= 1.15.
(b) 16 visitors at once (threads, each its own connections), searches per second, app and bare in
    alternating rounds. Target: app / bare >= 0.85. And the app's server-side p50 (its log) under these 16
    visitors against one visitor's in (a): <= 3x (the app serves `--concurrency` searches at once, by default one per
    two cores; the rest queue).
(c) Server side, in this process (one BLAS thread, as the app runs): SearchEngine.compare (both rankings) on a
    synthetic 100k-image index (the default gallery's real `lite` embeddings plus noise, random aesthetic
    scores, written with write_index: the app's default IVF index at that size). Text p50 <= 30 ms, a sketch
    (assets/examples/cup.png) p50 <= 60 ms, one visitor. For information, p50 with 16 threads calling the engine
    at once, past the app's queue: they share two cores, so ~4x (texts) and ~10x (sketches) a lone query's wait
    is the floor however they are batched (docs/benchmarks.md); the app queues them instead, see (b).
(d) REST: GET /api/search p50 against the Gradio API's p50 (the call alone, no images) for the same kind of
    query, asked in turn.

Every query text is new to the server (the engine remembers text vectors), except in the rows marked
"repeated", where one text is asked again and again.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from itertools import count, product
from pathlib import Path

from search import config

config.setup_process()  # one BLAS thread, as the app: before numpy and torch are imported

import numpy as np  # noqa: E402

ROOT = config.PROJECT_ROOT
SKETCH = ROOT / "assets" / "examples" / "cup.png"
K = 12
LOG_LINE = re.compile(r"query text=(?P<text>.*) image=(?P<image>True|False) style=.* -> \d+\+\d+ hits in "
                      r"(?P<ms>\d+) ms")
TARGETS = {"one visitor p50": 1.15, "16 visitors searches/s": 0.85, "text p50 ms": 30.0, "sketch p50 ms": 60.0,
           "16 visitors server-side / one": 3.0}

BARE_APP = '''
import json, sys
import gradio as gr

port, thumbs, concurrency = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
side_a, side_b = thumbs[:12], thumbs[-12:]


def search(text):
    """Twelve fixed thumbnails per side: Gradio's own floor for this page's answer."""
    return ([(p, f"image {i} of side A") for i, p in enumerate(side_a)],
            [(p, f"image {i} of side B") for i, p in enumerate(side_b)])


with gr.Blocks(analytics_enabled=False) as demo:
    text = gr.Textbox()
    gallery_a, gallery_b = gr.Gallery(), gr.Gallery()
    text.submit(search, text, [gallery_a, gallery_b], api_name="search")
demo.queue(max_size=64, default_concurrency_limit=concurrency)
demo.launch(server_name="127.0.0.1", server_port=port, allowed_paths=sorted({p.rsplit("/", 1)[0] for p in thumbs}))
'''

# ---------------------------------------------------------------- queries
ADJECTIVES = ["red", "small", "old", "wooden", "shiny", "blue", "tiny", "huge", "green", "dusty", "bright", "dark",
              "striped", "broken", "golden", "white", "black", "yellow", "round", "tall"]
NOUNS = ["cup", "rocket", "cat", "bicycle", "flower", "house", "motorcycle", "coffee", "astronaut", "horse",
         "camera", "clock", "coin", "moon", "chair", "boat", "dog", "tree", "car", "bird", "lamp", "book", "shoe",
         "guitar", "bottle", "bridge", "train", "apple", "kite", "hat"]
PLACES = ["on a table", "in the snow", "at night", "by the sea", "in a garden", "on the street", "in a kitchen",
          "under the rain", "in a field", "on a shelf", "in the desert", "in a forest", "on a roof", "in a box",
          "at dawn", "in the city", "near a lake", "on grass", "in the sky", "in a museum"]


class Texts:
    """Query texts never asked before in this run (thread-safe)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        combos = list(product(ADJECTIVES, NOUNS, PLACES))
        self._all = [f"a {a} {n} {p}" for a, n, p in (combos[i] for i in rng.permutation(len(combos)))]
        self._next = count()
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            return self._all[next(self._next)]


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


# ---------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"server at {url} did not answer in {timeout:.0f} s")


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, work: Path, env: dict | None = None) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = work / f"{name}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)
        self._lines_read = 0
        # /search's inputs after the text: the app's sketch, upload, image source, text weight, k, aesthetic weight,
        # rephrase, dedup, show scores, minimum look, style, state (gradio_client fills in all but the first two)
        self.inputs = [None, None, "Sketch", 0.5, K, 0.5, True, True, False, 0, "any", None] if name == "app" else []

    def wait(self) -> Server:
        wait_up(self.url, self.proc, self.log)
        return self

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def server_ms(self) -> list[float]:
        """Server-side times (ms) of the searches logged since the last call."""
        lines = self.log.read_text(errors="replace").splitlines()
        new, self._lines_read = lines[self._lines_read:], len(lines)
        return [float(m["ms"]) for line in new if (m := LOG_LINE.search(line))]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


# ---------------------------------------------------------------- a visitor
def file_urls(value, base: str) -> list[str]:
    """Every file URL in a gradio_client result (download_files=False: FileData dicts)."""
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and value.get("path") is not None:
            return [url if url.startswith("http") else base.rstrip("/") + "/" + url.lstrip("/")]
        return [u for v in value.values() for u in file_urls(v, base)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in file_urls(v, base)]
    return []


class Visitor:
    """One browser tab: 6 keep-alive connections, for the search call and the result images. The call goes
    through Gradio's HTTP API (POST /gradio_api/call/search, then its event stream), as a page's own requests
    do; with `gradio_client`, through that library, which spends ~160 ms of CPU per call on the polling
    threads it runs: on this 2-core machine, CPU taken from the server, which a visitor's browser is not."""

    def __init__(self, server: Server, client: str = "http") -> None:
        import httpx

        self.server = server
        self.http = httpx.Client(limits=httpx.Limits(max_connections=6, max_keepalive_connections=6), timeout=60)
        self.pool = ThreadPoolExecutor(6)
        self.client = None
        if client == "gradio":
            from gradio_client import Client

            self.client = Client(server.url, verbose=False, download_files=False)

    def call(self, text: str) -> list:
        """/search's outputs for `text`."""
        if self.client is not None:
            return list(self.client.predict(text, *self.server.inputs[:2], api_name="/search"))
        url = self.server.url + "gradio_api/call/search"
        event = self.http.post(url, json={"data": [text, *self.server.inputs]}).raise_for_status().json()["event_id"]
        kind = None
        with self.http.stream("GET", f"{url}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"{self.server.name}: {line[:300]}")
                    return json.loads(line.removeprefix("data:"))
        raise RuntimeError(f"{self.server.name}: the event stream ended without an answer")

    def search(self, text: str) -> tuple[float, float, int]:
        """-> (seconds until the answer, seconds until every image is in, images fetched)."""
        t0 = time.perf_counter()
        result = self.call(text)
        t1 = time.perf_counter()
        urls = file_urls(result[:2], self.server.url)
        sizes = list(self.pool.map(self.fetch, urls))
        t2 = time.perf_counter()
        if len(urls) != 2 * K or min(sizes, default=0) == 0:
            raise RuntimeError(f"{self.server.name}: expected {2 * K} images, got {len(urls)} ({sizes})")
        return t1 - t0, t2 - t0, len(urls)

    def fetch(self, url: str) -> int:
        r = self.http.get(url)
        r.raise_for_status()
        return len(r.content)

    def close(self) -> None:
        self.pool.shutdown()
        self.http.close()
        if self.client is not None:
            self.client.close()


# ---------------------------------------------------------------- (a), (b), (d): client side
def one_visitor(app: Server, bare: Server, texts: Texts, n: int, client: str) -> dict:
    va, vb = Visitor(app, client), Visitor(bare, client)
    for _ in range(3):  # warm-up: the first answers load lazy parts (the image tower after the first search)
        va.search(texts())
        vb.search(texts())
    time.sleep(3)  # the app's delayed warm-up (ui/handlers.py WARM_UP_DELAY) is done before timing
    app.server_ms()
    out = {"app": [], "bare": [], "app_call": [], "bare_call": [], "app_rep": [], "bare_rep": []}
    cpu0 = app.cpu_seconds(), bare.cpu_seconds()
    for _ in range(n):
        call, total, _ = va.search(texts())
        out["app"].append(total), out["app_call"].append(call)
        call, total, _ = vb.search(texts())
        out["bare"].append(total), out["bare_call"].append(call)
    out["cpu"] = ((app.cpu_seconds() - cpu0[0]) / n, (bare.cpu_seconds() - cpu0[1]) / n)
    out["app_server"] = app.server_ms()
    repeated = texts()
    for _ in range(n // 2):
        out["app_rep"].append(va.search(repeated)[1])
        out["bare_rep"].append(vb.search(repeated)[1])
    out["app_server_rep"] = app.server_ms()
    va.close(), vb.close()
    return out


def many_visitors(server: Server, texts: Texts, visitors: int, per_visitor: int, client: str) -> dict:
    """`visitors` threads, each its own session, each `per_visitor` searches as fast as answered."""
    clients = list(ThreadPoolExecutor(8).map(lambda _: Visitor(server, client), range(visitors)))
    for v in clients[:2]:
        v.search(texts())
    server.server_ms()
    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(visitors + 1)

    def run(v: Visitor) -> None:
        start.wait()
        for _ in range(per_visitor):
            try:
                total = v.search(texts())[1]
                with lock:
                    times.append(total)
            except Exception as e:  # noqa: BLE001 (counted and shown)
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=run, args=(v,)) for v in clients]
    for t in threads:
        t.start()
    start.wait()
    t0, cpu0 = time.perf_counter(), server.cpu_seconds()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    for v in clients:
        v.close()
    return {"done": len(times), "wall": wall, "cpu": cpu, "times": times, "errors": errors,
            "server": server.server_ms()}


def rest_vs_gradio(app: Server, texts: Texts, n: int, client: str) -> dict:
    visitor = Visitor(app, client)
    http = visitor.http

    def rest(text: str) -> float:
        t0 = time.perf_counter()
        r = http.get(app.url + "api/search", params={"text": text, "k": K})
        r.raise_for_status()
        assert len(r.json()["hits"]) == K
        return time.perf_counter() - t0

    def grad(text: str) -> float:
        t0 = time.perf_counter()
        visitor.call(text)
        return time.perf_counter() - t0

    for _ in range(2):
        rest(texts()), grad(texts())
    out = {"rest": [], "gradio": [], "rest_rep": [], "gradio_rep": []}
    for _ in range(n):
        out["rest"].append(rest(texts()))
        out["gradio"].append(grad(texts()))
    repeated = texts()
    rest(repeated), grad(repeated)
    for _ in range(n // 2):
        out["rest_rep"].append(rest(repeated))
        out["gradio_rep"].append(grad(repeated))
    visitor.close()
    return out


# ---------------------------------------------------------------- (c): server side at 100k
def synthetic_index(work: Path, n: int, default_engine):  # noqa: ANN001, ANN201
    """The default gallery's real embeddings plus noise (n rows), random aesthetic scores; written once."""
    from search.index.gallery_index import GalleryIndex, read_meta, write_index
    from search.types import GalleryItem

    enc = default_engine.encoder
    out = work / f"synthetic-{n}-{enc.fingerprint.replace('@', '-')}"
    meta = read_meta(out)
    if meta is None or meta.count != n:
        print(f"writing a synthetic {n:,}-image index to {out} (once)...", flush=True)
        t0 = time.perf_counter()
        base = default_engine.gallery.vectors(list(range(len(default_engine.gallery))))
        rng = np.random.default_rng(0)
        v = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.03, (n, base.shape[1])).astype(np.float32)
        v = np.where(np.any(base != 0, axis=0), v, 0)  # dimensions no image uses (e.g. a gate's) stay 0
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        some = default_engine.items[0].path
        items = [GalleryItem(f"img{i}", some, f"image {i}", aesthetic=float(rng.normal())) for i in range(n)]
        write_index(out, enc, items, v, source=f"synthetic {n}")
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return GalleryIndex.load(out, enc)


def server_side(default_engine, work: Path, n: int, searches: int, threads: int) -> dict:  # noqa: ANN001
    from search.engine import SearchEngine
    from search.index.images import load_image
    from search.types import Query

    engine = SearchEngine(default_engine.encoder, synthetic_index(work, n, default_engine))
    texts = Texts()
    sketch = Query(image=load_image(SKETCH, max_side=config.QUERY_MAX_SIDE))
    cpu: dict[str, list[float]] = {}

    def timed(q: Query, key: str | None = None) -> float:
        t0, c0 = time.perf_counter(), time.thread_time()
        engine.compare(q)
        if key:
            cpu.setdefault(key, []).append(time.thread_time() - c0)
        return time.perf_counter() - t0

    for _ in range(3):
        timed(Query(text=texts())), timed(sketch)
    out: dict = {"n": len(engine.gallery), "spec": engine.gallery.meta.factory, "cpu": cpu}
    out["text"] = [timed(Query(text=texts()), "text") for _ in range(searches)]
    repeated = Query(text=texts())
    timed(repeated)
    out["text_rep"] = [timed(repeated, "text_rep") for _ in range(searches)]
    out["sketch"] = [timed(sketch, "sketch") for _ in range(max(10, searches // 2))]

    def hammer(make, per_thread: int, key: str) -> list[float]:  # noqa: ANN001
        barrier = threading.Barrier(threads)
        res: list[float] = []
        lock = threading.Lock()

        def run() -> None:
            barrier.wait()
            mine = [timed(make(), key) for _ in range(per_thread)]
            with lock:
                res.extend(mine)

        ts = [threading.Thread(target=run) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return res

    batcher = getattr(engine.text_vectors, "batcher", None)
    before = (batcher.calls, batcher.keys_done) if batcher else None
    out["text_16"] = hammer(lambda: Query(text=texts()), max(3, searches // threads * 2), "text_16")
    if batcher:
        out["batches"] = (batcher.calls - before[0], batcher.keys_done - before[1])
    out["sketch_16"] = hammer(lambda: sketch, 3, "sketch_16")
    return out


# ---------------------------------------------------------------- report
def row(*cells) -> str:  # noqa: ANN002
    return "| " + " | ".join(str(c) for c in cells) + " |"


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def ms(x: float) -> str:
    return f"{x * 1e3:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "visual-search-bench" / "serving",
                        help="where the synthetic index is kept between runs (default %(default)s)")
    parser.add_argument("--n", type=int, default=100_000, help="synthetic index size (default %(default)s)")
    parser.add_argument("--searches", type=int, default=40, help="one-visitor searches per app (default 40)")
    parser.add_argument("--visitors", type=int, default=16)
    parser.add_argument("--per-visitor", type=int, default=6, help="searches per visitor per round (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating app/bare rounds of (b) (default 2)")
    parser.add_argument("--client", choices=("http", "gradio"), default="http",
                        help="how a visitor calls /search: Gradio's HTTP API (default) or gradio_client")
    parser.add_argument("--concurrency", type=int, default=config.CONCURRENCY,
                        help="searches both servers run at once (app.py --concurrency; default %(default)s)")
    parser.add_argument("--skip-client", action="store_true", help="only the server-side part (c)")
    parser.add_argument("--skip-server", action="store_true", help="only the client-side parts (a), (b), (d)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from search.engine import SearchEngine
    from search.index.sources import default_gallery

    tmp = Path(tempfile.mkdtemp(prefix="serving-"))
    cache, data = tmp / "cache", tmp / "data"
    # the app's own default index, built here first (the app then re-uses it and starts at once)
    engine, _ = SearchEngine.build(default_gallery(), "lite", name="default-gallery", cache_dir=cache)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# benchmarks/serving.py  ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; gallery: {len(engine.gallery)} default images; k={K} per side; "
        f"client: {args.client})")
    if not args.skip_client:
        thumbs = [str(it.thumbnail) for it in engine.items if it.thumbnail][:20]
        env = {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "100000", "VISUAL_SEARCH_VOTES_PER_MINUTE": "100000",
               "GRADIO_ANALYTICS_ENABLED": "False"}
        script = tmp / "bare_app.py"
        script.write_text(BARE_APP)
        port_app, port_bare = free_port(), free_port()
        app = Server("app", [sys.executable, "app.py", "--port", str(port_app), "--cache-dir", str(cache),
                             "--data-dir", str(data), "--concurrency", str(args.concurrency)], port_app, tmp, env)
        bare = Server("bare", [sys.executable, str(script), str(port_bare), json.dumps(thumbs), str(args.concurrency)],
                      port_bare, tmp, env)
        try:
            app.wait(), bare.wait()
            texts = Texts()
            a = one_visitor(app, bare, texts, args.searches, args.client)
            say("\n## (a) one visitor, client side (search + every thumbnail of both galleries)")
            say(row("", "this app", "bare Gradio app", "ratio", "target", ""))
            say(row("---", "---", "---", "---", "---", "---"))
            r = p50(a["app"]) / p50(a["bare"])
            say(row(f"p50, new texts (n={len(a['app'])})", ms(p50(a["app"])), ms(p50(a["bare"])), f"{r:.2f}x",
                    "<= 1.15x", verdict(r <= TARGETS["one visitor p50"])))
            say(row("p95, new texts", ms(p95(a["app"])), ms(p95(a["bare"])),
                    f"{p95(a['app']) / p95(a['bare']):.2f}x", "", ""))
            say(row("p50, answer only (before images)", ms(p50(a["app_call"])), ms(p50(a["bare_call"])),
                    f"{p50(a['app_call']) / p50(a['bare_call']):.2f}x", "", ""))
            say(row(f"p50, repeated text (n={len(a['app_rep'])})", ms(p50(a["app_rep"])), ms(p50(a["bare_rep"])),
                    f"{p50(a['app_rep']) / p50(a['bare_rep']):.2f}x", "", ""))
            say(row("server CPU time per search (new texts)", ms(a["cpu"][0]), ms(a["cpu"][1]),
                    f"{a['cpu'][0] / a['cpu'][1]:.2f}x", "", ""))
            say(row("app server-side p50 (its log), new / repeated",
                    f"{p50(a['app_server']):.0f} / {p50(a['app_server_rep']):.0f} ms", "", "", "", ""))

            rounds = {"app": [], "bare": []}
            for _ in range(args.rounds):
                for s in (app, bare):
                    rounds[s.name].append(many_visitors(s, texts, args.visitors, args.per_visitor, args.client))
            say(f"\n## (b) {args.visitors} visitors at once ({args.rounds} alternating rounds each, "
                f"{args.per_visitor} searches per visitor per round)")
            say(row("", "this app", "bare Gradio app", "ratio", "target", ""))
            say(row("---", "---", "---", "---", "---", ""))
            rate = {k: sum(x["done"] for x in v) / sum(x["wall"] for x in v) for k, v in rounds.items()}
            r = rate["app"] / rate["bare"]
            say(row("searches per second", f"{rate['app']:.2f}", f"{rate['bare']:.2f}", f"{r:.2f}x", ">= 0.85x",
                    verdict(r >= TARGETS["16 visitors searches/s"])))
            per_round = [f"{x['done'] / x['wall']:.2f}/{y['done'] / y['wall']:.2f}"
                         for x, y in zip(rounds["app"], rounds["bare"])]
            say(row("  per round (app/bare)", ", ".join(per_round), "", "", "", ""))
            cpu = {k: sum(x["cpu"] for x in v) / sum(x["done"] for x in v) for k, v in rounds.items()}
            say(row("server CPU time per search", ms(cpu["app"]), ms(cpu["bare"]), f"{cpu['app'] / cpu['bare']:.2f}x",
                    "", ""))
            t_app = [t for x in rounds["app"] for t in x["times"]]
            t_bare = [t for x in rounds["bare"] for t in x["times"]]
            say(row("client-side p50 / p95", f"{ms(p50(t_app))} / {ms(p95(t_app))}",
                    f"{ms(p50(t_bare))} / {ms(p95(t_bare))}", f"{p50(t_app) / p50(t_bare):.2f}x", "", ""))
            srv = [t for x in rounds["app"] for t in x["server"]]
            r = p50(srv) / p50(a["app_server"])
            say(row("app server-side p50 / p95 (its log)", f"{p50(srv):.0f} / {p95(srv):.0f} ms", "", "", "", ""))
            say(row("  its p50 / one visitor's (a)", f"{r:.1f}x", "", "", "<= 3x",
                    verdict(r <= TARGETS["16 visitors server-side / one"])))
            errs = [e for v in rounds.values() for x in v for e in x["errors"]]
            say(row("errors", sum(len(x["errors"]) for x in rounds["app"]),
                    sum(len(x["errors"]) for x in rounds["bare"]), "", "", ""))
            for e in errs[:5]:
                say(f"    {e}")

            d = rest_vs_gradio(app, texts, args.searches, args.client)
            say("\n## (d) REST (GET /api/search, JSON) vs the Gradio API (/search call alone), this app")
            say(row("", "REST", "Gradio API", "ratio REST/Gradio"))
            say(row("---", "---", "---", "---"))
            say(row(f"p50, new texts (n={len(d['rest'])})", ms(p50(d["rest"])), ms(p50(d["gradio"])),
                    f"{p50(d['rest']) / p50(d['gradio']):.2f}x"))
            say(row("p50, repeated text", ms(p50(d["rest_rep"])), ms(p50(d["gradio_rep"])),
                    f"{p50(d['rest_rep']) / p50(d['gradio_rep']):.2f}x"))
        finally:
            app.stop(), bare.stop()
    if not args.skip_server:
        c = server_side(engine, args.work, args.n, args.searches, args.visitors)
        single_text, single_sketch = p50(c["text"]) * 1e3, p50(c["sketch"]) * 1e3
        say(f"\n## (c) server side: SearchEngine.compare (both rankings), {c['n']:,} images ({c['spec']}), "
            f"in-process, one BLAS thread")
        say(row("", "p50 (wall)", "p95 (wall)", "p50 CPU time", "target", ""))
        say(row("---", "---", "---", "---", "---", "---"))

        def cpu50(key: str) -> str:
            return f"{p50(c['cpu'].get(key, [])) * 1e3:.1f} ms"

        say(row(f"text, new texts, one visitor (n={len(c['text'])})", f"{single_text:.1f} ms",
                f"{p95(c['text']) * 1e3:.1f} ms", cpu50("text"), "<= 30 ms",
                verdict(single_text <= TARGETS["text p50 ms"])))
        say(row("text, repeated text, one visitor", f"{p50(c['text_rep']) * 1e3:.1f} ms",
                f"{p95(c['text_rep']) * 1e3:.1f} ms", cpu50("text_rep"), "", ""))
        say(row(f"sketch (cup.png), one visitor (n={len(c['sketch'])})", f"{single_sketch:.1f} ms",
                f"{p95(c['sketch']) * 1e3:.1f} ms", cpu50("sketch"), "<= 60 ms",
                verdict(single_sketch <= TARGETS["sketch p50 ms"])))
        for key, single, name in (("text_16", single_text, "text"), ("sketch_16", single_sketch, "sketch")):
            x = p50(c[key]) * 1e3
            say(row(f"{name}, {args.visitors} threads at once (n={len(c[key])})",
                    f"{x:.1f} ms ({x / single:.1f}x)", f"{p95(c[key]) * 1e3:.1f} ms", cpu50(key),
                    "(no queue: information)", ""))
        if "batches" in c:
            calls, keys = c["batches"]
            say(f"(16 threads, text: {keys} texts encoded in {calls} encoder forwards, "
                f"{keys / max(calls, 1):.1f} per forward)")
    print(f"\n(servers' logs and the bare app in {tmp})")


if __name__ == "__main__":
    main()
