"""A searchable gallery: an index directory + the encoder that made it; queries in, typed hits out."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import Encoder, get_encoder

from .config import CACHE_DIR
from .gallery import read_source
from .gallery_index import BuildReport, GalleryIndex, build_index, read_meta
from .rankings import get_ranking
from .types import GalleryItem, Hit, Query, Skipped

log = logging.getLogger(__name__)


@dataclass
class SearchEngine:
    encoder: Encoder
    gallery: GalleryIndex

    @property
    def items(self) -> list[GalleryItem]:
        return self.gallery.items

    @property
    def skipped(self) -> list[Skipped]:
        return self.gallery.skipped

    @classmethod
    def open(cls, index_dir: str | Path, encoder: str | Encoder | None = None) -> SearchEngine:
        """A built index directory; the encoder defaults to the one it was built with."""
        meta = read_meta(Path(index_dir))
        name = encoder or (meta.encoder if meta else "lite")
        enc = get_encoder(name) if isinstance(name, str) else name
        return cls(enc, GalleryIndex.load(index_dir, enc))

    @classmethod
    def build(cls, items: list[GalleryItem], encoder: str | Encoder = "lite", index_dir: str | Path | None = None,
              name: str = "gallery", skipped: list[Skipped] | None = None,
              cache_dir: str | Path = CACHE_DIR) -> tuple[SearchEngine, BuildReport]:
        """Index `items` (incrementally) into `index_dir`, by default a folder of the cache named after them."""
        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        index_dir = index_dir or cache_index_dir(cache_dir, name, enc)
        gallery, report = build_index(items, index_dir, enc, source=name, skipped=skipped)
        for s in report.skipped:
            log.warning("gallery: skipped %s", s)
        return cls(enc, gallery), report

    @classmethod
    def from_source(cls, source: str | Path, encoder: str | Encoder = "lite",
                    cache_dir: str | Path = CACHE_DIR) -> tuple[SearchEngine, BuildReport]:
        """A folder, manifest or zip, indexed under the cache (the same code as `python -m search index`)."""
        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        index_dir = cache_index_dir(cache_dir, str(Path(source).resolve()), enc)
        items, skipped = read_source(source, extract_to=index_dir / "files")
        return cls.build(items, enc, index_dir, str(source), skipped)

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
        return get_ranking(ranking)(self.encode(query)[None], self.gallery, k)[0]


def cache_index_dir(cache_dir: str | Path, name: str, encoder: Encoder) -> Path:
    """CACHE/indexes/<readable name>-<hash of name and encoder>."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).name or "gallery").strip("-")[:40] or "gallery"
    digest = hashlib.sha1(f"{name}\0{encoder.name}".encode()).hexdigest()[:10]
    return Path(cache_dir) / "indexes" / f"{slug}-{digest}"
