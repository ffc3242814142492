"""Vote store under concurrent writers: throughput, per-vote latency, lost votes, for each way to connect.

    python benchmarks/vote_store_stress.py [--threads 16] [--votes 50] [--processes 4] [--repeat 3]

Compares, on a fresh database each run:
- shared: one connection per store, threads serialised by a Python lock (what VoteStore does);
- per-thread: a connection per thread, serialised only by SQLite's file lock and busy_timeout;
- shared + synchronous=NORMAL: what `synchronous=FULL` (every commit fsync'ed) costs;
- processes: N spawned processes, each with its own store on the same directory (app replicas).
Reports votes/s, p50/p95/max latency of `record()`, errors, and checks every vote is stored exactly once
and `PRAGMA integrity_check` is ok. Each vote is one transaction, as in the app.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

from search.votes.store import CHOICES, RankedId, Vote, VoteStore


def make_vote(n: int) -> Vote:
    rng = random.Random(n)
    ranking = tuple(RankedId(f"img{rng.randrange(10_000)}", rng.random(), rng.uniform(1, 10)) for _ in range(12))
    return Vote(vote_id=uuid.uuid4().hex, time=time.time(), session=f"s{n % 16}", query_text=f"query {n}",
                query_image=None, rephrased=None, style="photo 0.9", side_a=ranking, side_b=ranking[::-1],
                baseline_side=rng.choice("AB"), choice=rng.choice(CHOICES), app_version="bench",
                encoder="lite", index="bench", settings={"k": 12})


class PerThreadStore(VoteStore):
    """A connection per thread and no Python lock."""

    def __init__(self, data_dir: Path) -> None:
        self._local = threading.local()
        super().__init__(data_dir)
        self._lock = nullcontext()

    @property
    def _conn(self) -> sqlite3.Connection:
        if not hasattr(self._local, "conn"):
            self._local.conn = self._connect()
        return self._local.conn

    @_conn.setter
    def _conn(self, conn: sqlite3.Connection) -> None:
        self._local.conn = conn


class NormalSyncStore(VoteStore):
    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn


def run_threads(store_cls: type[VoteStore], data_dir: Path, threads: int, per_thread: int) -> dict:
    store = store_cls(data_dir)
    batches = [[make_vote(t * 100_000 + i) for i in range(per_thread)] for t in range(threads)]
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(threads)

    def client(t: int) -> None:
        start.wait()
        for v in batches[t]:
            t0 = time.perf_counter()
            try:
                store.record(v)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    stored = store.count()
    integrity = store.integrity_check() if hasattr(store, "integrity_check") else "?"
    store.close()
    return _summary(threads * per_thread, stored, elapsed, latencies, errors, integrity)


def _process_client(data_dir: str, n: int, seed: int, go, out) -> None:  # noqa: ANN001
    votes = [make_vote(seed + i) for i in range(n)]
    go.wait()
    store = VoteStore(data_dir)
    latencies, errors = [], []
    for v in votes:
        t0 = time.perf_counter()
        try:
            store.record(v)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(e).__name__}: {e}")
        latencies.append(time.perf_counter() - t0)
    store.close()
    out.put((latencies, errors))


def run_processes(data_dir: Path, processes: int, per_process: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_client, args=(str(data_dir), per_process, p * 100_000, go, out))
             for p in range(processes)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let the interpreters start, so the clock measures recording, not imports
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=300) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    with VoteStore(data_dir) as store:
        stored, integrity = store.count(), store.integrity_check()
    return _summary(processes * per_process, stored, elapsed, [x for lat, _ in results for x in lat],
                    [e for _, errs in results for e in errs], integrity)


def _summary(sent: int, stored: int, elapsed: float, latencies: list[float], errors: list[str],
             integrity: str) -> dict:
    q = statistics.quantiles(latencies, n=20)
    return {"sent": sent, "stored": stored, "votes_per_s": sent / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * q[18],
            "max_ms": 1000 * max(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else "", "integrity": integrity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--votes", type=int, default=50, help="votes per thread / process")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--work", help="directory for the databases (default: a temporary one)")
    args = parser.parse_args()

    configs = {
        "shared connection + lock (VoteStore)": lambda d: run_threads(VoteStore, d, args.threads, args.votes),
        "connection per thread": lambda d: run_threads(PerThreadStore, d, args.threads, args.votes),
        "shared, synchronous=NORMAL": lambda d: run_threads(NormalSyncStore, d, args.threads, args.votes),
        f"{args.processes} processes": lambda d: run_processes(d, args.processes, args.votes),
    }
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        print(f"{'configuration':<40} {'votes/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
              f"{'stored/sent':>12} {'errors':>6}  integrity")
        for name, run in configs.items():
            runs = [run(Path(work) / f"{name}-{i}".replace(" ", "_")) for i in range(args.repeat)]
            r = sorted(runs, key=lambda x: x["votes_per_s"])[len(runs) // 2]
            errors = sum(x["errors"] for x in runs)
            lost = sum(x["sent"] - x["stored"] for x in runs)
            print(f"{name:<40} {r['votes_per_s']:>8.0f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['max_ms']:>7.0f} "
                  f"{r['stored']:>5}/{r['sent']:<6} {errors:>6}  {r['integrity']}"
                  f"{'' if not lost else f'  LOST {lost}'}{'  ' + r['first_error'] if r['first_error'] else ''}")


if __name__ == "__main__":
    main()
