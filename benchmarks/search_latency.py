"""Search latency, recall and memory per index type at 10k, 100k and 1M vectors.

    python benchmarks/search_latency.py [--data ../shared/data] [--sizes 10000 100000 1000000] [--json OUT]

10k: real `lite` embeddings of 10,000 images from the data folder (indexed once with `python -m search
index`, kept under --work). Beyond that, synthetic vectors shaped like them: each is a real embedding
plus Gaussian noise with the real embeddings' covariance (x0.5), re-normalised, so the data keeps the
clusters and the spectrum of real embeddings. Queries: 200 vectors from the same distribution, not in
the base; for the 10k set, `lite` text embeddings of class prompts.

Each query is searched alone (k=10), as the app does. p50/p95 latency after 10 warm-up queries, recall@10
against exact brute force, FAISS memory per vector (serialized size / n). Indexes with exact re-ranking
read their originals from a memory-mapped .npy, as an index directory does. For those, a fresh process
also loads the saved index + memory-mapped originals, answers the queries and reports its resident
memory (RSS) and anonymous memory (RssAnon: what it cannot give back; page cache of the map excluded).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from search.config import PROJECT_ROOT
from search.index.faiss_index import IndexSpec, VectorIndex, auto_spec

N_QUERIES, K, WARMUP = 200, 10, 10


def specs_for(n: int, dim: int) -> dict[str, IndexSpec]:
    """The index types compared at each size ("auto" is what the project picks by default)."""
    nlist = 128 if n <= 10_000 else 1024 if n <= 100_000 else 4096
    specs = {"exact (Flat)": IndexSpec("Flat"),
             f"IVF{nlist},SQ8": IndexSpec(f"IVF{nlist},SQ8", "nprobe=16", rerank=0)}
    if n <= 100_000:  # HNSW's build is too slow at 1M x 1256-d on 2 cores
        specs["HNSW32"] = IndexSpec("HNSW32", "efSearch=64")
    specs["auto"] = auto_spec(n, dim)
    return specs


def real_vectors(data: Path, work: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n real lite image embeddings, lite text embeddings of class prompts) via the project's own index."""
    from models import get_encoder
    from search.index.gallery_index import GalleryIndex, build_index
    from search.types import GalleryItem

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:n]]
    enc = get_encoder("lite")
    index_dir = work / f"real-{n}"
    try:
        index = GalleryIndex.load(index_dir, enc)
    except (FileNotFoundError, ValueError):
        print(f"indexing {len(files)} real images into {index_dir} (once)...", flush=True)
        index, _ = build_index([GalleryItem(str(p), p) for p in files], index_dir, enc, spec=IndexSpec("Flat"),
                               rebuild=True)
    labels = sorted({json.loads(line).get("label") or "" for f in data.glob("*/items.jsonl")
                     for line in f.read_text().splitlines()} - {""})
    rng = np.random.default_rng(1)
    prompts = [f"a photo of a {labels[i]}" for i in rng.permutation(len(labels))[:N_QUERIES]]
    return np.asarray(index.index.vectors, np.float32), enc.encode_texts(prompts)


def synthetic(real: np.ndarray, n: int, seed: int, scale: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, v = np.linalg.eigh(np.cov(real.T))
    mix = (v * np.sqrt(np.clip(w, 0, None))).T.astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        x = real[rng.integers(0, len(real), m)] + scale * (rng.standard_normal((m, len(w)), np.float32) @ mix)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    top = []
    for q in np.array_split(queries, max(1, len(queries) // 50)):
        sims = q @ base.T
        top.append(np.argsort(-sims, axis=1)[:, :k])
    return np.concatenate(top)


def memory_mb() -> tuple[float, float]:
    """(RSS, RssAnon) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024


def probe_memory(index_path: str, originals_path: str, queries_path: str, spec_json: str) -> None:
    """(run in a fresh process) load an index as the app would, answer the queries, print RSS figures."""
    spec = IndexSpec(**json.loads(spec_json))
    index = VectorIndex.load(index_path, spec, np.load(originals_path, mmap_mode="r"))
    for q in np.load(queries_path):
        index.search(q[None], K)
    print(json.dumps(dict(zip(("rss_mb", "rss_anon_mb"), memory_mb()))))


def fresh_process_memory(index: VectorIndex, originals: Path, queries: np.ndarray, work: Path) -> dict:
    import subprocess
    from dataclasses import asdict

    index.save(work / "probe.index")
    np.save(work / "probe-queries.npy", queries)
    out = subprocess.run([sys.executable, __file__, "--probe", str(work / "probe.index"), str(originals),
                          str(work / "probe-queries.npy"), json.dumps(asdict(index.spec))],
                         capture_output=True, text=True, check=True)
    (work / "probe.index").unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, spec: IndexSpec, base: np.ndarray, originals: np.ndarray, queries: np.ndarray,
            truth: np.ndarray, work: Path) -> dict:
    t = time.perf_counter()
    index = VectorIndex.build(base, spec)
    build_s = time.perf_counter() - t
    index.vectors = originals  # re-rank from the memory-mapped file, as a loaded index directory does
    n_timed = len(queries) if not spec.exact or len(base) <= 100_000 else 30  # brute force at 1M is slow
    for q in queries[:WARMUP]:
        index.search(q[None], K)
    lat, found = [], []
    for q in queries[:n_timed]:
        t = time.perf_counter()
        _, rows = index.search(q[None], K)
        lat.append((time.perf_counter() - t) * 1000)
        found.append(rows[0])
    recall = float(np.mean([len(set(f) & set(g)) / K for f, g in zip(found, truth)]))
    row = {"n": len(base), "index": name, "factory": spec.factory, "params": spec.params, "rerank": spec.rerank,
           "build_s": round(build_s, 1), "p50_ms": float(np.percentile(lat, 50)),
           "p95_ms": float(np.percentile(lat, 95)), "recall@10": recall, "bytes_per_vector": index.nbytes / len(base),
           "queries": n_timed}
    if spec.rerank:
        row.update(fresh_process_memory(index, Path(originals.filename), queries, work))
    del index
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--real", type=int, default=10_000, help="real embeddings to index (default %(default)s)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "visual-search-bench"))
    parser.add_argument("--json", help="also write the rows as JSON")
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)  # internal: the fresh-process memory probe
    args = parser.parse_args()
    if args.probe:
        return probe_memory(*args.probe)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    real, text_queries = real_vectors(Path(args.data), work, args.real)
    rows = []
    print(f"{'n':>9} {'index':<28} {'build s':>8} {'p50 ms':>8} {'p95 ms':>8} {'R@10':>6} {'B/vec':>7} "
          f"{'RSS MB':>8} {'anon MB':>8}", flush=True)
    for n in args.sizes:
        if n <= len(real):
            base, queries = real[:n], text_queries
        else:
            data = synthetic(real, n + N_QUERIES, seed=n)
            base, queries = data[:n], data[n:]
            del data
        path = work / "originals.npy"   # the originals, memory-mapped like an index directory's vectors.npy
        np.save(path, base)
        originals = np.load(path, mmap_mode="r")
        truth = exact_top_k(base, queries, K)
        for name, spec in specs_for(n, base.shape[1]).items():
            r = measure(name, spec, base, originals, queries, truth, work)
            rows.append(r)
            label = f"{name} ({spec.factory})" if name == "auto" else name
            print(f"{n:>9} {label[:28]:<28} {r['build_s']:>8.1f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
                  f"{r['recall@10']:>6.3f} {r['bytes_per_vector']:>7.0f} {r.get('rss_mb', float('nan')):>8.0f} "
                  f"{r.get('rss_anon_mb', float('nan')):>8.0f}", flush=True)
        del base, originals
        path.unlink()
        gc.collect()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
