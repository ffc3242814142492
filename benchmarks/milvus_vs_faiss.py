"""Milvus Lite vs FAISS on the same vectors: build time, p50/p95 query latency, recall@10, memory.

    python benchmarks/milvus_vs_faiss.py [--sizes 100000 1000000] [--dim 512] [--queries 200]
                                         [--milvus HNSW IVF_SQ8] [--faiss auto Flat]

Vectors are "real-like": unit vectors drawn around 2,000 cluster centres (as image embeddings cluster by
subject), not uniform noise, which no index can partition. Queries are 200 fresh draws from the same mixture;
the truth is the exact top 10 (brute force). Both backends go through the project's own code:
`VectorIndex.build` (FAISS; `auto` is the size-based default, `auto_spec`) and `build_milvus` + the served
`MilvusIndex.search` (Milvus Lite, embedded in this process; each hit returns its metadata fields, as when
serving; also timed without fields, ids and scores only). One query at a time, as a visitor's search, with
one BLAS thread, as the app runs.

Memory: the process's resident set before and after building (and searching once), so for Milvus Lite it
includes its embedded server's segments and index; for FAISS, the index structure plus, for `auto`, the
float32 originals it re-ranks from (kept here in RAM; on disk they are a memory-mapped file). Bytes per vector
are that growth divided by the count.
"""
from __future__ import annotations

import os

# as the app (search/config.py setup_process): one BLAS/OpenMP thread per query; set before numpy and faiss load
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from search.index.faiss_index import IndexSpec, VectorIndex, auto_spec
from search.index.milvus_index import MilvusIndex, build_milvus
from search.index.shards import ShardManifest, ShardSet


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mixture(n: int, dim: int, seed: int, centres: int = 2_000, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = c[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def truth(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return VectorIndex.build(vectors, IndexSpec("Flat")).search(queries, k)[1]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def timed_queries(search, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float, float]:  # noqa: ANN001
    search(queries[:5], k)  # warm-up
    rows, times = [], []
    for q in queries:
        t = time.perf_counter()
        _, r = search(q[None], k)
        times.append(time.perf_counter() - t)
        rows.append(r[0])
    ms = np.array(times) * 1e3
    return np.array(rows), float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def run_faiss(kind: str, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray) -> dict:
    gc.collect()
    before = rss()
    t = time.perf_counter()
    spec = auto_spec(len(vectors), vectors.shape[1]) if kind == "auto" else IndexSpec(kind)
    copy = vectors.copy() if spec.rerank else None  # the originals the default re-ranks from
    index = VectorIndex.build(copy if copy is not None else vectors, spec)
    build = time.perf_counter() - t
    rows, p50, p95 = timed_queries(index.search, queries)
    grown = rss() - before
    name = f"FAISS {spec.factory}" + (f" {spec.params}" if spec.params else "") + (
        f" rerank {spec.rerank}" if spec.rerank else "")
    out = {"backend": name, "build_s": build, "p50_ms": p50, "p95_ms": p95, "recall10": recall(rows, exact),
           "mem_mb": grown / 2**20, "bytes_per_vector": grown / len(vectors),
           "index_bytes_per_vector": index.nbytes / len(vectors)}
    del index, copy
    return out


def run_milvus(kind: str, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, tmp: Path) -> dict:
    n, dim = vectors.shape
    rows = tuple({"id": f"v{i}", "path": f"/gallery/{i}.jpg", "key": f"/gallery/{i}.jpg|1|{i}", "caption": None,
                  "label": None, "aesthetic": None, "style": None, "safety": None, "width": None, "height": None,
                  "bytes": 1, "thumbnail": None} for i in range(n))
    shards = ShardSet(tmp, ShardManifest("lite", "synthetic@0", dim, (), n), rows, vectors)
    gc.collect()
    before = rss()
    t = time.perf_counter()
    gallery, report = build_milvus(shards, f"milvus:{tmp / f'{kind}-{n}.db'}", kind)
    build = time.perf_counter() - t
    del shards, rows
    found, p50, p95 = timed_queries(gallery.index.search, queries)
    ids_only = MilvusIndex(gallery.client, gallery.target.collection, gallery.spec, dim, n, n)  # no fields fetched
    _, ids_p50, ids_p95 = timed_queries(ids_only.search, queries)
    gc.collect()
    grown = rss() - before
    disk = sum(f.stat().st_size for f in (tmp / f"{kind}-{n}.db").rglob("*") if f.is_file())
    spec = gallery.spec
    gallery.close()
    return {"backend": f"Milvus Lite {spec.index_type} {spec.build} {spec.search}", "build_s": build, "p50_ms": p50,
            "p95_ms": p95, "ids_p50_ms": ids_p50, "ids_p95_ms": ids_p95, "recall10": recall(found, exact),
            "mem_mb": grown / 2**20,
            "bytes_per_vector": grown / n, "disk_bytes_per_vector": disk / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512, help="512 as CLIP ViT-B/32 (lite: 1896)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--milvus", nargs="*", default=["HNSW"], help="Milvus index types")
    parser.add_argument("--faiss", nargs="*", default=["auto"], help="FAISS factory strings, or auto")
    args = parser.parse_args()
    print(f"dim {args.dim} · {args.queries} queries, one at a time · {os.cpu_count()} cores · "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    print("| vectors | backend | build s | p50 ms | p95 ms | recall@10 | RSS growth MB | bytes/vector |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for n in args.sizes:
        vectors = mixture(n, args.dim, seed=1)
        queries = mixture(args.queries, args.dim, seed=2)
        exact = truth(vectors, queries)
        results = [run_faiss(kind, vectors, queries, exact) for kind in args.faiss]
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            for kind in args.milvus:
                results.append(run_milvus(kind, vectors, queries, exact, Path(tmp)))
                r = results[-1]
                print(f"  ({r['backend']}: on disk {r['disk_bytes_per_vector']:.0f} bytes/vector; ids only, no "
                      f"fields: p50 {r['ids_p50_ms']:.2f} ms, p95 {r['ids_p95_ms']:.2f} ms)", flush=True)
        for r in results:
            print(f"| {n:,} | {r['backend']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                  f"{r['recall10']:.3f} | {r['mem_mb']:.0f} | {r['bytes_per_vector']:.0f} |", flush=True)
        del vectors
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
