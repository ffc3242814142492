"""Turning image files into vectors with an encoder, with a progress bar and a report of bad files."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import Encoder

from .images import iter_batches

log = logging.getLogger(__name__)


def embed_files(encoder: Encoder, paths: Sequence[str | Path], desc: str = "embedding",
                progress: bool = True) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """-> (vectors of the readable files, their positions in `paths`, [(position, reason)] for the rest)."""
    vecs, ok, bad = [np.zeros((0, encoder.dim), np.float32)], [], []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for pos, pixels, failed in iter_batches(paths, encoder.preprocess, encoder.batch_size):
            if pos:
                vecs.append(encoder.encode_image_tensors(pixels))
                ok += pos
            bad += failed
            bar.update(len(pos) + len(failed))
    return np.concatenate(vecs), ok, bad


def files_digest(paths: Sequence[Path], *salt: str) -> str:
    """A key that changes when any file's path, size or mtime changes (for embedding caches)."""
    h = hashlib.sha256("\0".join(salt).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cached_embed_files(encoder: Encoder, paths: Sequence[Path], cache_dir: Path,
                       desc: str = "embedding") -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """`embed_files`, remembered on disk under `cache_dir` by encoder fingerprint and file stats."""
    cache = Path(cache_dir) / "embeddings" / f"{files_digest(paths, encoder.fingerprint)}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        log.info("reusing cached embeddings %s", cache)
        return z["vecs"], z["ok"].tolist(), list(zip(z["bad_pos"].tolist(), z["bad_reason"].tolist()))
    vecs, ok, bad = embed_files(encoder, paths, desc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, vecs=vecs, ok=np.array(ok, np.int64), bad_pos=np.array([b[0] for b in bad], np.int64),
             bad_reason=np.array([b[1] for b in bad], dtype=str))
    tmp.replace(cache)
    return vecs, ok, bad
