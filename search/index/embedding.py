"""Turning image files into vectors with an encoder, with a progress bar and a report of bad files."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import Encoder
from search.index.images import iter_batches

log = logging.getLogger(__name__)


def embed_files(encoder: Encoder, paths: Sequence[str | Path], desc: str = "embedding", progress: bool = True,
                style: bool | None = None) -> tuple[np.ndarray, np.ndarray | None, list[int], list[tuple[int, str]]]:
    """-> (vectors of the readable files, their detected style mixtures or None, their positions in `paths`,
    [(position, reason)] for the rest).

    `style` None embeds gallery images; True/False embeds query images, conditioned on their detected
    style or not (for style-aware encoders, which also give the mixtures)."""
    vecs, probs, ok, bad = [np.zeros((0, encoder.dim), np.float32)], [], [], []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for pos, pixels, failed in iter_batches(paths, encoder.preprocess, encoder.batch_size):
            if pos:
                if style is None:
                    vecs.append(encoder.encode_image_tensors(pixels))
                else:
                    v, p = encoder.encode_query_tensors(pixels, style)
                    vecs.append(v)
                    probs.append(p)
                ok += pos
            bad += failed
            bar.update(len(pos) + len(failed))
    has_probs = bool(probs) and all(p is not None for p in probs)
    return np.concatenate(vecs), np.concatenate(probs) if has_probs else None, ok, bad
