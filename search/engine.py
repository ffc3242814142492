"""A searchable gallery: an index directory + the encoder that made it; queries in, typed hits out."""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from models import Encoder, get_encoder
from search.config import CACHE_DIR, DEFAULT_REPHRASER
from search.index.gallery_index import BuildReport, GalleryIndex, build_index, read_meta
from search.index.sources import read_source
from search.pipeline import EncodedQuery, TextVectors, encode_query, rank_query
from search.rankings import RankSettings, blend_rephrasing, rephrase_weight
from search.types import GalleryItem, Hit, ImageFilter, Query, Skipped

if TYPE_CHECKING:

    from models.aesthetic import AestheticScorer
    from models.safety import SafetyFilter
    from search.rephrase import Rephraser, Rephrasing

log = logging.getLogger(__name__)
NO_FILTER = ImageFilter()


@dataclass(frozen=True)
class SearchEngine:
    """Complete when constructed; `open`, `build` and `from_source` make one from an index or images."""

    encoder: Encoder
    gallery: GalleryIndex
    rephraser_spec: str = DEFAULT_REPHRASER   # how the aligned side rephrases text: see search.rephrase

    @property
    def items(self) -> list[GalleryItem]:
        return self.gallery.items

    @property
    def skipped(self) -> list[Skipped]:
        return self.gallery.skipped

    @classmethod
    def open(cls, index_dir: str | Path, encoder: str | Encoder | None = None,
             rephraser: str = DEFAULT_REPHRASER) -> SearchEngine:
        """A built index directory, hf://datasets/OWNER/NAME (a published one, fetched once: search/hub.py), or
        a Milvus collection, milvus:PATH.db or milvus://HOST:PORT/COLLECTION (search/index/milvus_index.py);
        the encoder defaults to the one it was built with."""
        from search.index.hub import resolve_index

        if isinstance(index_dir, str) and index_dir.startswith("milvus:"):
            from search.index.gallery_index import check_encoder
            from search.index.milvus_index import open_gallery

            gallery = open_gallery(index_dir)
            name = encoder or gallery.meta.encoder
            enc = get_encoder(name) if isinstance(name, str) else name
            check_encoder(gallery.meta, enc, index_dir)
            return cls(enc, gallery, rephraser)
        index_dir = resolve_index(index_dir)
        meta = read_meta(index_dir)
        name = encoder or (meta.encoder if meta else "lite")
        enc = get_encoder(name) if isinstance(name, str) else name
        return cls(enc, GalleryIndex.load(index_dir, enc), rephraser)

    @classmethod
    def build(cls, items: list[GalleryItem], encoder: str | Encoder = "lite", index_dir: str | Path | None = None,
              name: str = "gallery", skipped: list[Skipped] | None = None, cache_dir: str | Path = CACHE_DIR,
              scorer: str | None = "auto", safety: SafetyFilter | bool | str | None = None,
              rephraser: str = DEFAULT_REPHRASER) -> tuple[SearchEngine, BuildReport]:
        """Index `items` (incrementally) into `index_dir`, by default a folder of the cache named after them.
        `scorer`: aesthetic scorer name, "auto" (the one that fits the encoder) or None.
        `safety`: a SafetyFilter, "on"/True (the default filter) or None/"off"/False (none): flagged images
        stay in the index but searches never return them (models/safety.py, docs/safety.md)."""
        from models.safety import as_safety_filter

        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        index_dir = index_dir or cache_index_dir(cache_dir, name, enc)
        gallery, report = build_index(items, index_dir, enc, source=name, skipped=skipped,
                                      scorer=make_scorer(scorer, enc), safety=as_safety_filter(safety))
        for s in report.skipped:
            log.warning("gallery: skipped %s", s)
        return cls(enc, gallery, rephraser), report

    @classmethod
    def from_source(cls, source: str | Path, encoder: str | Encoder = "lite", cache_dir: str | Path = CACHE_DIR,
                    scorer: str | None = "auto", safety: SafetyFilter | bool | str | None = None,
                    rephraser: str = DEFAULT_REPHRASER) -> tuple[SearchEngine, BuildReport]:
        """A folder, manifest, zip or dataset (hf://datasets/...), indexed under the cache (the same code as
        `python -m search index`)."""
        from search.index.hub import is_hub_spec

        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        name = str(source) if is_hub_spec(source) else str(Path(source).resolve())
        index_dir = cache_index_dir(cache_dir, name, enc)
        items, skipped = read_source(source, extract_to=index_dir / "files")
        return cls.build(items, enc, index_dir, str(source), skipped, scorer=scorer, safety=safety,
                         rephraser=rephraser)

    def encode(self, query: Query, texts: Sequence[str] = (), style: bool = True) -> EncodedQuery:
        """A query -> unit vectors, one per text variant (default: its own text); see pipeline.encode_query."""
        return encode_query(self.encoder, query, texts, style, self.text_vectors)

    def search(self, query: Query, k: int = 12, ranking: str = "baseline", settings: RankSettings | None = None,
               image_filter: ImageFilter = NO_FILTER) -> list[Hit]:
        settings = replace(settings or RankSettings(), k=k)
        encoded = self.encode(query)
        return rank_query(ranking, encoded.vector, encoded, query, self.gallery.where(image_filter), settings,
                          self.encoder.query_bank)

    def compare(self, query: Query, settings: RankSettings | None = None, rephrase: bool = True,
                style: bool = True, image_filter: ImageFilter = NO_FILTER) -> Comparison:
        """The baseline and the aesthetically-aligned ranking of one query, side by side, among the images
        that pass `image_filter`.

        The aligned side searches with the rephrased text (when there is text and `rephrase`); the image is
        encoded once and both texts in one batch."""
        t0 = time.perf_counter()
        settings = settings or RankSettings()
        gallery = self.gallery.where(image_filter)
        from search.rephrase import rephrase as rephrase_text

        rephrasing = rephrase_text(self.rephraser, query.text) if rephrase and query.text else None
        texts = [query.text, rephrasing.rephrased] if rephrasing and rephrasing.rephrased != query.text else []
        encoded = self.encode(query, texts, style)
        rank = functools.partial(rank_query, encoded=encoded, query=query, gallery=gallery, settings=settings,
                                 bank=self.encoder.query_bank)
        baseline = self._second_core.submit(rank, "baseline", encoded.vectors[0])  # the two rankings side by side
        aligned_hits = rank("aligned", blend_rephrasing(encoded.vectors[0], encoded.vectors[-1],
                                                        rephrase_weight(gallery, settings)))
        baseline_hits = baseline.result()
        return Comparison(query, encoded.style, rephrasing, tuple(baseline_hits), tuple(aligned_hits),
                          time.perf_counter() - t0)

    @functools.cached_property
    def text_vectors(self) -> TextVectors:
        return TextVectors(self.encoder)

    @functools.cached_property
    def _second_core(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix="baseline-ranking")

    @functools.cached_property
    def rephraser(self) -> Rephraser:
        from search.rephrase import CachedRephraser, create_rephraser

        r = create_rephraser(self.rephraser_spec)
        # model-backed rephrasers take seconds: remember their answers (the template is instant)
        return r if self.rephraser_spec in ("template", "none") else CachedRephraser(r)


@dataclass(frozen=True)
class Comparison:
    query: Query
    style: str | None              # detected style of the query image ("sketch 0.91 · cartoon 0.06"), if any
    rephrasing: Rephrasing | None  # what the aligned side searched with, when the query has text
    baseline: tuple[Hit, ...]      # plain kNN
    aligned: tuple[Hit, ...]       # rephrased, re-scored with aesthetics, de-duplicated
    seconds: float                 # time to answer both


def make_scorer(name: str | None, encoder: Encoder) -> AestheticScorer | None:
    """An aesthetic scorer by name; "auto" is the one that fits the encoder; None or "none" is no scoring."""
    if name in (None, "none"):
        return None
    from models.aesthetic import create_scorer, scorer_for

    if name != "auto":
        return create_scorer(name, encoder)
    try:
        return scorer_for(encoder)
    except (FileNotFoundError, RuntimeError) as e:  # weights not trained / not downloadable offline
        log.warning("indexing without aesthetic scores (the aligned ranking uses relevance only): %s", e)
        return None


def cache_index_dir(cache_dir: str | Path, name: str, encoder: Encoder) -> Path:
    """CACHE/indexes/<readable name>-<hash of name and encoder fingerprint> (retrained weights: a new index)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).name or "gallery").strip("-")[:40] or "gallery"
    digest = hashlib.sha1(f"{name}\0{encoder.fingerprint}".encode()).hexdigest()[:10]
    return Path(cache_dir) / "indexes" / f"{slug}-{digest}"
