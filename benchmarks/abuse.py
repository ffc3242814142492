"""Abuse benchmark of the public app (issue 16): what one visitor, or many, can cost a real launched app.py.

    python benchmarks/abuse.py [--sessions 50] [--visitors 16] [--rounds 20] [--keep]

Launches `python app.py --port P --cache-dir TMP/cache --data-dir TMP/data` itself (from a temporary cwd, on
the built-in gallery) with per-visitor limits it never reaches, talks to it only through gradio_client and HTTP
as a visitor would, and prints:
1. server memory (VmRSS of the app process) before and after --sessions new sessions (a new gradio_client
   Client each), each searching with a 4000x4000 upload: a real photo (scikit-image's chelsea) blown up with
   grain, JPEG quality 95, so it is large (~12 MB);
2. bytes stored per image vote (vote "A" with consent after the search; the file under DATA/images/) for
   uploads of 1000², 4000² and 7999² (a 7999² grainy JPEG is over the upload limit: its refusal is shown, and
   the grainiest 7999² that fits is voted with);
3. how long an 8000x8000 upload (JPEG and PNG) holds a worker: the /search call end to end from the client,
   the upload alone, the server's own "in N ms" (the engine's work after the image is loaded) and the app's
   peak memory during the call;
4. what a visitor over the rate limit sees: a second small app with VISUAL_SEARCH_SEARCHES_PER_MINUTE=10 (on
   the same cache, so it starts fast), searched until refused: the exact message and after how many searches;
5. --visitors threads x --rounds search+vote each (text queries, each unique, consent True): votes
   acknowledged ("Thanks!") vs votes found in the SQLite store afterwards, and its integrity_check;
then a summary of each figure against its target.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import skimage
from gradio_client import Client, handle_file
from PIL import Image

from search import config
from search.config import PROJECT_ROOT
from search.votes.store import VoteStore

APP = PROJECT_ROOT / "app.py"
CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"
STARTUP_TIMEOUT = 300  # seconds: loading the encoder and embedding the gallery on a busy 2-core CPU
GENEROUS_LIMITS = {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "100000", "VISUAL_SEARCH_VOTES_PER_MINUTE": "100000"}
SERVER_MS = re.compile(r"in (\d+) ms")
TOPICS = ("a cat", "a cup of coffee", "a rocket launch", "an astronaut", "a red flower", "a horse in a field",
          "a city street at night", "a bowl of fruit", "a sailing boat", "a mountain lake")
TARGETS = {"memory": 300.0, "stored": 1_000_000}  # MB of growth; bytes per image vote


# ---------------------------------------------------------------- the app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class App:
    """`python app.py --port P --cache-dir C --data-dir D` run from `root` (a foreign cwd); stopped on exit."""

    def __init__(self, root: Path, cache_dir: Path, env: dict[str, str]) -> None:
        self.root, self.cache_dir, self.data_dir = root, cache_dir, root / "data"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = root / "server.log"

    def start(self) -> None:
        """Start the process (returns at once: call wait_ready())."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE", **self.env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), "--port", str(port), "--cache-dir", str(self.cache_dir),
                 "--data-dir", str(self.data_dir)], cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def wait_ready(self) -> float:
        """Seconds from start() until the page answers; SystemExit with the server's log if it never does."""
        deadline = self.started + STARTUP_TIMEOUT
        while not answers(self.url):
            if self.proc.poll() is not None:
                raise SystemExit(f"app.py exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"app.py did not answer within {STARTUP_TIMEOUT} s:\n{self.log.read_text()}")
            time.sleep(0.5)
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def memory_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for process {self.proc.pid}")

    def client(self) -> Client:
        return Client(self.url, verbose=False, download_files=False)


class PeakMemory:
    """The app's highest VmRSS while the block runs (sampled every 20 ms)."""

    def __init__(self, app: App) -> None:
        self.app, self.peak, self.before, self._stop = app, 0.0, 0.0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.app.memory_mb())
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self.peak = self.before = self.app.memory_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.app.memory_mb())


def search(c: Client, text: str = "", upload: Path | None = None, **settings) -> tuple:
    return c.predict(text, None, handle_file(str(upload)) if upload else None, **settings, api_name="/search")


def short(error: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ---------------------------------------------------------------- images
def photo(side: int, grain: int, seed: int) -> Image.Image:
    """scikit-image's chelsea resized to side x side, plus uniform grain of +-`grain` (0: none)."""
    src = Image.open(CHELSEA).convert("RGB").resize((side, side), Image.BILINEAR)
    if not grain:
        return src
    pixels = np.asarray(src, np.int16)
    noise = np.random.default_rng(seed).integers(-grain, grain + 1, pixels.shape, dtype=np.int16)
    pixels += noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(path: Path, side: int, grain: int = 40, seed: int | None = None) -> Path:
    photo(side, grain, side if seed is None else seed).save(path, quality=95)
    return path


def fitting_jpeg(folder: Path, side: int, limit: int) -> tuple[Path, int]:
    """The grainiest quality-95 JPEG of chelsea at side x side whose file fits under `limit` bytes: (path, grain)."""
    for grain in (40, 16, 8, 4, 0):
        path = jpeg(folder / f"photo-{side}-grain{grain}.jpg", side, grain)
        if path.stat().st_size <= limit:
            return path, grain
        path.unlink()
    raise SystemExit(f"no {side}x{side} JPEG fits under {limit:,} bytes")


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- 1. memory per session
def memory_per_session(app: App, upload: Path, sessions: int) -> dict:
    warm = app.client()  # load what loads lazily (the image tower after the first answer) before measuring
    search(warm, "a cat", k=2)
    time.sleep(3)
    search(warm, "", CHELSEA, k=2)
    search(app.client(), "", upload, k=2)
    time.sleep(1)
    before = app.memory_mb()
    started, samples, errors = time.monotonic(), [], []
    for _ in range(sessions):
        c = app.client()
        try:
            search(c, "", upload)
        except Exception as e:  # noqa: BLE001 (reported)
            errors.append(short(e))
        finally:
            c.close()
        samples.append(app.memory_mb())
    seconds = time.monotonic() - started
    time.sleep(2)
    after = app.memory_mb()
    return {"before": before, "after": after, "peak": max(samples, default=after), "growth": after - before,
            "sessions": sessions, "seconds": seconds, "errors": errors}


# ---------------------------------------------------------------- 2. bytes stored per image vote
def stored_per_vote(app: App, folder: Path) -> list[dict]:
    limit = config.MAX_UPLOAD_BYTES
    rows = []
    for side in (1000, 4000, 7999):
        path = jpeg(folder / f"vote-{side}.jpg", side, 40, seed=side + 1)
        row = {"side": side, "refused": None}
        if path.stat().st_size > limit:  # what a visitor gets for it, then the grainiest one that fits
            try:  # gradio_client refuses it before sending: ask the server itself, as an attacker would
                search(app.client(), "", path, k=3)
                client_says = "accepted (over the limit!)"
            except Exception as e:  # noqa: BLE001 (the refusal is the result)
                client_says = short(e, 60).replace(str(path), path.name)
            r = httpx.post(f"{app.url}gradio_api/upload", files={"files": (path.name, path.read_bytes())},
                           timeout=300)
            row["refused"] = (f"{mb(path.stat().st_size)} grain 40: the server answers POST /gradio_api/upload with "
                              f"HTTP {r.status_code} {' '.join(r.text.split())[:80]!r}; gradio_client: {client_says}")
            path, grain = fitting_jpeg(folder, side, int(limit * 0.97))
        else:
            grain = 40
        row.update(upload=path.stat().st_size, grain=grain)
        c = app.client()
        try:
            with VoteStore(app.data_dir) as store:
                seen = {v.vote_id for v in store.votes()}
            search(c, "", path, k=3)
            reveal = c.predict("A", True, api_name="/vote")
            with VoteStore(app.data_dir) as store:
                new = [v for v in store.votes() if v.vote_id not in seen]
                stored = [store.image_path(v.query_image) for v in new if v.query_image]
            row["ack"] = str(reveal).startswith("Thanks!")
            if len(stored) == 1 and stored[0].is_file():
                with Image.open(stored[0]) as im:
                    row.update(stored=stored[0].stat().st_size, file=f"{stored[0].suffix[1:]} {im.width}x{im.height}")
            else:
                row.update(stored=None, file=f"{len(new)} new votes, {len(stored)} images")
        except Exception as e:  # noqa: BLE001 (reported)
            row.update(stored=None, file=short(e, 90), ack=False)
        finally:
            c.close()
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 3. an 8000x8000 upload
def huge_upload(app: App, folder: Path) -> list[dict]:
    limit = int(config.MAX_UPLOAD_BYTES * 0.97)
    jpg, grain = fitting_jpeg(folder, 8000, limit)
    png = folder / "photo-8000.png"
    photo(8000, 0, 0).save(png)  # a smooth blow-up: PNG has no reduced-scale decoding, every pixel is decoded
    rows = []
    for path, kind in ((jpg, f"JPEG q95 grain {grain}"), (png, "PNG")):
        size = path.stat().st_size
        row = {"kind": kind, "bytes": size}
        data = path.read_bytes()
        started = time.monotonic()
        r = httpx.post(f"{app.url}gradio_api/upload", files={"files": (path.name, data)}, timeout=300)
        row["upload_s"] = time.monotonic() - started if r.status_code == 200 else None
        peak = PeakMemory(app)
        c = app.client()
        try:
            with peak:
                started = time.monotonic()
                _, _, info, _ = search(c, "", path)
                row["e2e_s"] = time.monotonic() - started
            m = SERVER_MS.search(str(info))
            row.update(server_ms=int(m.group(1)) if m else None, info=str(info), error=None)
        except Exception as e:  # noqa: BLE001 (reported)
            row.update(e2e_s=None, server_ms=None, info="", error=short(e, 120))
        finally:
            c.close()
        time.sleep(2)
        row.update(peak_mb=peak.peak, before_mb=peak.before, after_mb=app.memory_mb())
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 4. over the rate limit
def rate_limit(app: App, tries: int = 25) -> dict:
    c = app.client()
    message, ok = None, 0
    try:
        for _ in range(tries):
            try:
                search(c, "a cat", k=1)
                ok += 1
            except Exception as e:  # noqa: BLE001 (the message is the result)
                message = str(e)
                break
        recovered = None
        if message:  # the next search once a token is back (10 a minute: one every 6 s)
            time.sleep(6.5)
            try:
                search(c, "a cat", k=1)
                recovered = "yes"
            except Exception as e:  # noqa: BLE001
                recovered = f"no: {short(e, 80)}"
    finally:
        c.close()
    return {"ok": ok, "message": message, "recovered": recovered}


# ---------------------------------------------------------------- 5. many visitors searching and voting
def visitors(app: App, n: int, rounds: int) -> dict:
    with VoteStore(app.data_dir) as store:
        before = store.count()
    acked: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def visit(v: int) -> None:
        c = app.client()
        try:
            for r in range(rounds):
                text = f"{TOPICS[(v + r) % len(TOPICS)]} (visitor {v} round {r})"
                try:
                    search(c, text, k=6)
                    reveal = c.predict(("A", "B", "tie", "both_bad")[r % 4], True, api_name="/vote")
                except Exception as e:  # noqa: BLE001 (counted)
                    with lock:
                        errors.append(short(e, 100))
                    continue
                if str(reveal).startswith("Thanks!"):
                    with lock:
                        acked.append(text)
        finally:
            c.close()

    started = time.monotonic()
    threads = [threading.Thread(target=visit, args=(v,)) for v in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    with VoteStore(app.data_dir) as store:
        votes = store.votes()
        integrity = store.integrity_check()
    texts = {v.query_text for v in votes}
    lost = [t for t in acked if t not in texts]
    return {"sent": n * rounds, "acked": len(acked), "stored": len(votes) - before, "lost": len(lost),
            "integrity": integrity, "errors": errors, "seconds": seconds}


# ---------------------------------------------------------------- report
def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50, help="new sessions with a 4000² upload (%(default)s)")
    parser.add_argument("--visitors", type=int, default=16, help="concurrent visitors (%(default)s)")
    parser.add_argument("--rounds", type=int, default=20, help="search+vote rounds per visitor (%(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (apps' logs, data)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="abuse-"))
    images = root / "images"
    images.mkdir()
    cache = root / "cache"
    main_app = App(root / "app", cache, GENEROUS_LIMITS)
    small_app = App(root / "limited", cache, {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "10"})
    t0 = time.monotonic()
    try:
        main_app.start()
        upload4000 = jpeg(images / "session-4000.jpg", 4000)  # made while the app starts
        print(f"app started in {main_app.wait_ready():.0f} s at {main_app.url} (temporary folder {root})", flush=True)

        print(f"1. {args.sessions} new sessions, each searching with a 4000x4000 upload "
              f"({mb(upload4000.stat().st_size)}) ...", flush=True)
        mem = memory_per_session(main_app, upload4000, args.sessions)
        print("2. image votes for 1000², 4000², 7999² uploads ...", flush=True)
        stored = stored_per_vote(main_app, images)
        print("3. 8000x8000 uploads ...", flush=True)
        huge = huge_upload(main_app, images)
        print(f"5. {args.visitors} visitors x {args.rounds} search+vote ...", flush=True)
        crowd = visitors(main_app, args.visitors, args.rounds)
        rss_end = main_app.memory_mb()
        main_app.stop()

        print("4. over the rate limit (a second app, 10 searches a minute) ...", flush=True)
        small_app.start()
        print(f"   started in {small_app.wait_ready():.0f} s", flush=True)
        limited = rate_limit(small_app)
        small_app.stop()
    finally:
        main_app.stop()
        small_app.stop()
    total = time.monotonic() - t0

    # ------------------------------------------------------------ tables
    print(f"\n1. Server memory (VmRSS of app.py), {mem['sessions']} new sessions each searching with a 4000x4000 "
          f"JPEG of {mb(upload4000.stat().st_size)} ({mem['seconds']:.0f} s)")
    print(table(["before", "peak", "after", "growth", "per session", "errors"],
                [[f"{mem['before']:.0f} MB", f"{mem['peak']:.0f} MB", f"{mem['after']:.0f} MB",
                  f"{mem['growth']:+.0f} MB", f"{mem['growth'] / max(mem['sessions'], 1):+.2f} MB",
                  len(mem["errors"])]]))
    for e in sorted(set(mem["errors"]))[:3]:
        print(f"   error: {e}")

    print("\n2. Bytes stored per image vote (vote \"A\" with consent; the file under DATA/images/)")
    print(table(["upload", "file sent", "vote", "stored", "stored file"],
                [[f"{r['side']}x{r['side']} JPEG q95 grain {r['grain']}", mb(r["upload"]),
                  "Thanks!" if r.get("ack") else "not acknowledged",
                  "–" if r["stored"] is None else f"{r['stored']:,} B", r["file"]] for r in stored]))
    for r in stored:
        if r["refused"]:
            print(f"   {r['side']}x{r['side']}: {r['refused']}")

    print("\n3. An 8000x8000 upload, alone on the server (e2e: the /search call from the client, upload included; "
          "server: the engine's \"in N ms\", after the image is loaded)")
    print(table(["upload", "file", "upload alone", "search e2e", "server", "e2e - upload", "app RSS before",
                 "peak", "2 s after"],
                [[r["kind"], mb(r["bytes"]), secs(r["upload_s"]), secs(r["e2e_s"]),
                  "–" if r["server_ms"] is None else f"{r['server_ms']} ms",
                  secs(r["e2e_s"] - r["upload_s"]) if r["e2e_s"] and r["upload_s"] else "–",
                  f"{r['before_mb']:.0f} MB", f"{r['peak_mb']:.0f} MB", f"{r['after_mb']:.0f} MB"] for r in huge]))
    for r in huge:
        if r["error"]:
            print(f"   {r['kind']}: {r['error']}")

    print("\n4. A visitor over the rate limit (app with VISUAL_SEARCH_SEARCHES_PER_MINUTE=10)")
    print(f"   searches served before the refusal: {limited['ok']}")
    print(f"   refused with: {limited['message']!r}")
    print(f"   6.5 s later, searching again works: {limited['recovered']}")

    print(f"\n5. {args.visitors} visitors x {args.rounds} search+vote (text, consent True) in "
          f"{crowd['seconds']:.0f} s")
    print(table(["sent", "acknowledged", "stored", "lost", "errors", "integrity_check"],
                [[crowd["sent"], crowd["acked"], crowd["stored"], crowd["lost"], len(crowd["errors"]),
                  crowd["integrity"]]]))
    for e in sorted(set(crowd["errors"]))[:3]:
        print(f"   error: {e}")

    worst = max((r["stored"] for r in stored if r["stored"] is not None), default=None)
    jpg = next((r for r in huge if r["kind"].startswith("JPEG")), None)
    png = next((r for r in huge if r["kind"] == "PNG"), None)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("ok" if ok else "OVER")

    summary = [
        ["memory growth, 50 sessions x 4000² upload".replace("50", str(mem["sessions"])),
         f"{mem['growth']:+.0f} MB", f"<= {TARGETS['memory']:.0f} MB", verdict(mem["growth"] <= TARGETS["memory"]
                                                                              and not mem["errors"])],
        ["largest stored image per vote", "–" if worst is None else f"{worst:,} B", "<= 1,000,000 B",
         verdict(None if worst is None else worst <= TARGETS["stored"] and all(r["stored"] for r in stored))],
        ["8000² JPEG holds a worker (e2e)", secs(jpg and jpg["e2e_s"]), "(measured)", "–"],
        ["8000² PNG holds a worker (e2e)", secs(png and png["e2e_s"]), "(measured)", "–"],
        ["rate limit message after", f"{limited['ok']} searches" if limited["message"] else "never",
         "a clear message", verdict(bool(limited["message"]) and "too many searches" in limited["message"])],
        ["votes lost", crowd["lost"], "0", verdict(crowd["lost"] == 0 and crowd["acked"] == crowd["sent"])],
        ["integrity_check", crowd["integrity"], "ok", verdict(crowd["integrity"] == "ok")],
    ]
    print(f"\nSummary (whole run {total:.0f} s; app RSS at the end {rss_end:.0f} MB)")
    print(table(["figure", "measured", "target", ""], summary))
    if args.keep:
        print(f"\nkept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
