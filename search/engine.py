"""A searchable gallery: items + their vectors in an index + the encoder that made them."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import Encoder, get_encoder

from .config import CACHE_DIR
from .embedding import cached_embed_files
from .index import VectorIndex
from .rankings import get_ranking
from .types import GalleryItem, Hit, Query

log = logging.getLogger(__name__)


@dataclass
class SearchEngine:
    encoder: Encoder
    items: list[GalleryItem]          # row i of the index is items[i]
    index: VectorIndex
    skipped: list[tuple[Path, str]]   # gallery files that could not be read, with the reason

    @classmethod
    def build(cls, items: list[GalleryItem], encoder: str | Encoder = "lite",
              cache_dir: str | Path | None = CACHE_DIR) -> SearchEngine:
        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        vecs, ok, bad = cached_embed_files(enc, [it.path for it in items], Path(cache_dir or CACHE_DIR), "gallery")
        skipped = [(items[i].path, reason) for i, reason in bad]
        for _, reason in skipped:
            log.warning("gallery: skipped %s", reason)
        index = VectorIndex(enc.dim)
        index.add(vecs)
        return cls(enc, [items[i] for i in ok], index, skipped)

    def encode(self, query: Query) -> np.ndarray:
        """(dim,) unit vector; a text + image query averages the two (composite weighting comes later)."""
        parts = []
        if query.text:
            parts.append(self.encoder.encode_texts([query.text])[0])
        if query.image is not None:
            parts.append(self.encoder.encode_images([query.image])[0])
        v = np.mean(parts, axis=0)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def search(self, query: Query, k: int = 12, ranking: str = "baseline") -> list[Hit]:
        scores, rows = get_ranking(ranking)(self.encode(query)[None], self.index, k)
        return [Hit(self.items[r], float(s), n) for n, (s, r) in enumerate(zip(scores[0], rows[0]), start=1)]
