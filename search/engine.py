"""A searchable gallery: an index directory + the encoder that made it; queries in, typed hits out."""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import Encoder, get_encoder
from models.query_bank import QueryBank
from models.style import check_readable, describe

from .config import CACHE_DIR
from .gallery import read_source
from .gallery_index import BuildReport, GalleryIndex, build_index, read_meta
from .hubness import HubCorrected, hub_penalties
from .layout import is_lowres, rerank_top
from .rankings import RankSettings, expand_queries, get_ranking
from .types import GalleryItem, Hit, Query, Skipped

if TYPE_CHECKING:
    from PIL import Image

    from models.aesthetic import AestheticScorer
    from models.safety import SafetyFilter

    from .rephrase import Rephraser, Rephrasing

log = logging.getLogger(__name__)


@dataclass
class SearchEngine:
    encoder: Encoder
    gallery: GalleryIndex
    rephraser_spec: str = "template"   # see search.rephrase.create_rephraser

    @property
    def items(self) -> list[GalleryItem]:
        return self.gallery.items

    @property
    def skipped(self) -> list[Skipped]:
        return self.gallery.skipped

    @classmethod
    def open(cls, index_dir: str | Path, encoder: str | Encoder | None = None) -> SearchEngine:
        """A built index directory, or hf://datasets/OWNER/NAME (a published one, fetched once: search/hub.py);
        the encoder defaults to the one it was built with."""
        from .hub import resolve_index

        index_dir = resolve_index(index_dir)
        meta = read_meta(index_dir)
        name = encoder or (meta.encoder if meta else "lite")
        enc = get_encoder(name) if isinstance(name, str) else name
        return cls(enc, GalleryIndex.load(index_dir, enc))

    @classmethod
    def build(cls, items: list[GalleryItem], encoder: str | Encoder = "lite", index_dir: str | Path | None = None,
              name: str = "gallery", skipped: list[Skipped] | None = None, cache_dir: str | Path = CACHE_DIR,
              scorer: str | None = "auto",
              safety: SafetyFilter | bool | str | None = None) -> tuple[SearchEngine, BuildReport]:
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
        return cls(enc, gallery), report

    @classmethod
    def from_source(cls, source: str | Path, encoder: str | Encoder = "lite", cache_dir: str | Path = CACHE_DIR,
                    scorer: str | None = "auto",
                    safety: SafetyFilter | bool | str | None = None) -> tuple[SearchEngine, BuildReport]:
        """A folder, manifest, zip or dataset (hf://datasets/...), indexed under the cache (the same code as
        `python -m search index`)."""
        from .hub import is_hub_spec

        enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
        name = str(source) if is_hub_spec(source) else str(Path(source).resolve())
        index_dir = cache_index_dir(cache_dir, name, enc)
        items, skipped = read_source(source, extract_to=index_dir / "files")
        return cls.build(items, enc, index_dir, str(source), skipped, scorer=scorer, safety=safety)

    def encode(self, query: Query, text: str | None = None, style: bool = True) -> EncodedQuery:
        """A query -> one unit vector. `text` replaces the query's text (e.g. its rephrasing); `style`
        lets a style-aware encoder condition the image on its detected style. Text + image: the two
        unit vectors mixed by `query.text_weight` (early fusion, so any index searches it)."""
        text = text or query.text
        vec = img = probs = None
        if text:
            vec = self.encoder.encode_texts([text])[0]
        if query.image is not None:
            check_readable(query.image)  # StyleError (a ValueError) for a blank canvas or a uniform image
            img_vecs, p = self.encoder.encode_query_tensors(self.encoder.preprocess(query.image)[None], style)
            img, probs = img_vecs[0], None if p is None else p[0]
        image_share = 1.0
        if vec is None:
            vec = img
        elif img is not None:
            vec = query.text_weight * vec + (1 - query.text_weight) * img
            image_share = 1 - query.text_weight
        vec = (vec / np.linalg.norm(vec)).astype(np.float32)
        weights = probs * image_share if style and probs is not None else None
        return EncodedQuery(vec, probs, describe(probs) if probs is not None else None, weights)

    def search(self, query: Query, k: int = 12, ranking: str = "baseline",
               settings: RankSettings | None = None) -> list[Hit]:
        settings = replace(settings or RankSettings(), k=k)
        encoded = self.encode(query)
        return self._rank(ranking, encoded.vector, settings, query, encoded)

    def _rank(self, ranking: str, vector: np.ndarray, settings: RankSettings, query: Query,
              encoded: EncodedQuery) -> list[Hit]:
        lowres = {0: query.image} if query.image is not None and is_lowres(encoded.style_weights) else {}
        weights = None if encoded.style_weights is None else encoded.style_weights[None]
        return rank_queries(ranking, vector[None], self.gallery, settings, [query.image is not None], lowres,
                            weights, self.encoder.query_bank)[0]

    def compare(self, query: Query, settings: RankSettings | None = None, rephrase: bool = True,
                style: bool = True) -> Comparison:
        """The baseline and the aesthetically-aligned ranking of one query, side by side.

        The aligned side searches with the rephrased text (when there is text and `rephrase`)."""
        t0 = time.perf_counter()
        settings = settings or RankSettings()
        base = self.encode(query, style=style)
        from .rephrase import rephrase as rephrase_text

        rephrasing = rephrase_text(self.rephraser, query.text) if rephrase and query.text else None
        if rephrasing is not None and rephrasing.rephrased != query.text:
            aligned_vec = self.encode(query, text=rephrasing.rephrased, style=style).vector
        else:
            aligned_vec = base.vector
        baseline_hits = self._rank("baseline", base.vector, settings, query, base)
        aligned_hits = self._rank("aligned", aligned_vec, settings, query, base)
        return Comparison(query, base.style, rephrasing, tuple(baseline_hits), tuple(aligned_hits),
                          time.perf_counter() - t0)

    @functools.cached_property
    def rephraser(self) -> Rephraser:
        from .rephrase import CachedRephraser, create_rephraser

        r = create_rephraser(self.rephraser_spec)
        # model-backed rephrasers take seconds: remember their answers (the template is instant)
        return r if self.rephraser_spec in ("template", "none") else CachedRephraser(r)


@dataclass(frozen=True)
class EncodedQuery:
    vector: np.ndarray             # (dim,) unit vector
    style_probs: np.ndarray | None  # (len(STYLES),) detected style of the query image, if any
    style: str | None              # the same, readable: "sketch 0.91 · cartoon 0.06"
    # style-conditioned queries: the mixture times the image's share of the vector, i.e. how much each
    # style's hub scores count in the ranking (querybank normalisation, models/query_bank.py); else None
    style_weights: np.ndarray | None = None


@dataclass(frozen=True)
class Comparison:
    query: Query
    style: str | None              # detected style of the query image ("sketch 0.91 · cartoon 0.06"), if any
    rephrasing: Rephrasing | None  # what the aligned side searched with, when the query has text
    baseline: tuple[Hit, ...]      # plain kNN
    aligned: tuple[Hit, ...]       # rephrased, re-scored with aesthetics, de-duplicated
    seconds: float                 # time to answer both


def rank_queries(ranking: str, vectors: np.ndarray, gallery: GalleryIndex, settings: RankSettings,
                 has_image: Sequence[bool], lowres: Mapping[int, Image.Image],
                 style_weights: np.ndarray | None = None, bank: QueryBank | None = None) -> list[list[Hit]]:
    """Query vectors -> `ranking`'s hits; the one path the app and the evaluator share.

    Image queries (`has_image`) are expanded by their top hits (`expand_queries`); those detected as low-res
    (`lowres`: row -> the query image) put near-duplicates of themselves first among the candidates
    (search/layout.py). Style-conditioned queries (`style_weights`, (Q, n_styles), rows of 0 for the others)
    have the gallery's hubs for their style discounted with the encoder's query `bank` (search/hubness.py)."""
    vectors = vectors.copy()
    rows = np.flatnonzero(np.asarray(has_image, bool))
    if len(rows):
        vectors[rows] = expand_queries(vectors[rows], gallery, settings.expand, settings.expand_alpha)
    penalties = hub_penalties(gallery, bank, style_weights)
    hits: list[list[Hit]] = [[] for _ in vectors]
    for near in (False, True):
        sel = [i for i in range(len(vectors)) if (i in lowres) == near]
        if not sel:
            continue
        wide = replace(settings, k=max(settings.k, settings.candidates)) if near else settings
        view = gallery if penalties is None else HubCorrected(gallery, penalties[sel])
        for i, row in zip(sel, get_ranking(ranking)(vectors[sel], view, wide)):
            hits[i] = rerank_top(row, lowres[i], settings.candidates)[: settings.k] if near else row
    return hits


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
