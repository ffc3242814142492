"""`python -m search query-bank`: an encoder's bank of training queries per style (models/query_bank.py).

Up to `per_style` train images of every style but photo (low-res ones made from train photos, as for the
style space), encoded as queries are at search time: style detected, tower conditioned on it.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models import get_encoder
from models.query_bank import QueryBank
from search.index.images import iter_batches
from search.training.style import style_samples
from search.training.tower_cache import TRANSFORMS

log = logging.getLogger(__name__)


def build_query_bank(data: str | Path, out: str | Path, encoder: str = "lite", per_style: int = 512,
                     seed: int = 0) -> Path:
    samples = [s for s in style_samples(Path(data), "train", per_style, seed) if s[2] != "photo"]
    if not samples:
        raise ValueError(f"no train images of a non-photo style under {data}")
    enc = get_encoder(encoder, query_bank=None)  # the bank being built is not needed to build it
    vectors: dict[str, list[np.ndarray]] = defaultdict(list)
    for view in sorted({v for _, v, _ in samples}):
        group = [s for s in samples if s[1] == view]
        with tqdm(total=len(group), desc=f"query bank {view or 'original'}", unit="img") as bar:
            for good, pixels, failed in iter_batches([f for f, _, _ in group], enc.preprocess, enc.batch_size,
                                                     TRANSFORMS[view]):
                if good:
                    vecs, _ = enc.encode_query_tensors(pixels, True)
                    for i, v in zip(good, vecs):
                        vectors[group[i][2]].append(v)
                for i, reason in failed:
                    log.warning("query bank: skipped %s: %s", group[i][0], reason)
                bar.update(len(good) + len(failed))
    bank = QueryBank({s: np.stack(v) for s, v in sorted(vectors.items())})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bank.save(out)
    log.info("saved %s (%s)", out, ", ".join(f"{s} {len(v)}" for s, v in bank.vectors.items()))
    return out
