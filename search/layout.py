"""Near-duplicate matching for low-resolution queries: a colour-layout re-rank.

A thumbnail or a block mosaic of a photo has lost the detail an encoder reads, but not the photo's coarse
colour layout (MPEG-7's colour layout descriptor works the same way). When a query is detected as low-res,
the top candidates whose layout is nearly the query's (cosine of mean-removed 4 x 4 RGB grids above
`threshold`) get a bonus, so the original of a thumbnail comes first; an ordinary match is left alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from models.style import STYLES
from search.index.images import load_image
from search.types import Hit

SIDE = 4                # grid side: 4 x 4 x RGB = 48 numbers per image
THRESHOLD = 0.9         # layout cosine above which a candidate counts as a near-duplicate
BONUS = 1.0             # score added at layout cosine 1 (linear from 0 at THRESHOLD)


def is_lowres(style_probs: np.ndarray | None) -> bool:
    """Whether a query image's detected style mixture (models/style.py) is mostly low-res."""
    return style_probs is not None and STYLES[int(np.argmax(style_probs))] == "lowres"


def signature(image: Image.Image) -> np.ndarray:
    """(48,) unit vector: the image's mean colour per cell of a 4 x 4 grid, overall mean removed."""
    image = image.convert("RGB")
    image.draft("RGB", (SIDE * 16, SIDE * 16))  # JPEGs decode at a fraction of their size: much faster
    a = np.asarray(image.resize((SIDE, SIDE), Image.BOX), np.float32).reshape(-1)
    a = a - a.mean()
    return a / max(float(np.linalg.norm(a)), 1e-6)


def hit_signatures(hits: Sequence[Hit]) -> np.ndarray:
    """(len(hits), 48) signatures of the hits' images, from their thumbnails where the index has them."""
    return np.stack([signature(load_image(h.item.thumbnail or h.item.path)) for h in hits]) if hits else \
        np.zeros((0, SIDE * SIDE * 3), np.float32)


def rerank_near_duplicates(hits: Sequence[Hit], query: np.ndarray, candidates: np.ndarray,
                           threshold: float = THRESHOLD, bonus: float = BONUS) -> list[Hit]:
    """Hits re-sorted by score + bonus * max(0, (layout cosine - threshold) / (1 - threshold)).

    `query`: the query's `signature`; `candidates`: the hits' signatures (`hit_signatures`)."""
    sims = candidates @ query
    boost = bonus * np.clip((sims - threshold) / (1 - threshold), 0, None)
    scores = np.array([h.score for h in hits]) + boost
    order = np.argsort(-scores, kind="stable")
    return [replace(hits[i], score=float(scores[i]), rank=r + 1,
                    relevance=hits[i].score if hits[i].relevance is None else hits[i].relevance)
            for r, i in enumerate(order)]


def rerank_top(hits: Sequence[Hit], image: Image.Image, top: int) -> list[Hit]:
    """`rerank_near_duplicates` of the first `top` hits for the query image `image`; the rest follow."""
    head = list(hits[:top])
    return rerank_near_duplicates(head, signature(image), hit_signatures(head)) + list(hits[top:])
