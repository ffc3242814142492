"""The one query path, in stages: encode (texts in one batch, the image once) -> fuse -> search -> expand /
hub-correct / re-rank -> hits. The app, the REST API, the MCP tool and `eval` all rank through `rank_queries`.

Stages (as in clip-retrieval's back end): `encode_query` turns a Query into unit vectors, `rank_queries`
turns vectors into a named ranking's hits.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from threading import Lock

import numpy as np
from PIL import Image

from models import Encoder
from models.query_bank import QueryBank
from models.style import check_readable, describe
from models.style_probe import StyleProbe
from models.style_words import StyleRead
from search.batching import MicroBatcher
from search.hubness import MIN_POOL, HubCorrected, hub_penalties
from search.index.gallery_index import GalleryIndex
from search.layout import is_lowres, rerank_top
from search.rankings import RankSettings, expand_queries, get_ranking
from search.style_text import STYLE_POOL, content_text, read_text_style, style_bonus, style_probe_for
from search.types import Hit, Query


@dataclass(frozen=True)
class EncodedQuery:
    vectors: tuple[np.ndarray, ...]  # (dim,) unit vector per text variant (the query's text, then its rephrasing)
    style_probs: np.ndarray | None  # (len(STYLES),) detected style of the query image, if any
    style: str | None              # the same, readable: "sketch 0.91 · cartoon 0.06"
    # style-conditioned queries: the mixture times the image's share of the vector, i.e. how much each
    # style's hub scores count in the ranking (querybank normalisation, models/query_bank.py); else None
    style_weights: np.ndarray | None = None
    # the style its text names ("a pencil sketch of a horse": sketch), searched as the vectors of the text without
    # it and matched by the encoder's style probe (search/style_text.py); None: the text is searched as it is
    text_style: StyleRead | None = None
    style_probe: StyleProbe | None = field(default=None, repr=False)

    @property
    def vector(self) -> np.ndarray:
        """The query's own vector (its text as typed)."""
        return self.vectors[0]


class TextVectors:
    """Text -> vector, remembered (least recently used first out): a text is encoded once, however often it
    is asked for (example texts, a rephrasing shared by many queries). Missing texts go in one batch, and
    so do those of concurrent queries: texts that threads ask for while the encoder is busy share its next
    forward (search/batching.py; a lone query's batch is its own texts, as without batching)."""

    def __init__(self, encoder: Encoder, size: int = 4096, max_batch: int = 64) -> None:
        self.encoder, self.size = encoder, size
        self._seen: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = Lock()
        self.batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(self._encode, max_batch)
        self._second_core = ThreadPoolExecutor(1, thread_name_prefix="text-encoder")

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """One encoder forward for the texts not remembered yet (another batch may just have done some); two
        or more are split in two halves encoded side by side, one per core (a query and its rephrasing: the
        wait of one text, not two; one forward's own threads gain less on such small products)."""
        with self._lock:
            known = {t: self._seen[t] for t in texts if t in self._seen}
        missing = [t for t in texts if t not in known]
        if missing:
            ordered = sorted(missing, key=len)  # alternate by length: halves of about equal work
            first, second = ordered[0::2], ordered[1::2]
            other = self._second_core.submit(self.encoder.encode_texts, second) if second else None
            fresh = self.encoder.encode_texts(first)
            fresh, missing = (fresh if other is None else np.concatenate([fresh, other.result()])), first + second
            with self._lock:
                for t, v in zip(missing, fresh):
                    self._seen[t] = known[t] = v
                while len(self._seen) > self.size:
                    self._seen.popitem(last=False)
        return [known[t] for t in texts]

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._seen))
            found = {t: self._seen[t] for t in texts if t in self._seen}
        if missing:
            found.update(zip(missing, self.batcher(missing)))
        with self._lock:
            for t in texts:
                if t in self._seen:
                    self._seen.move_to_end(t)
        return [found[t] for t in texts]


def encode_query(encoder: Encoder, query: Query, texts: Sequence[str] = (), style: bool = True,
                 text_vectors: TextVectors | None = None, style_words: bool = True) -> EncodedQuery:
    """A query -> one unit vector per text variant (`texts`, default the query's own text; with an image
    alone, one vector). The image is encoded once and fused with each text by `query.text_weight` (early
    fusion, so any index searches it); `style` lets a style-aware encoder condition it on its detected style.
    With `style_words`, a text naming a style is encoded without its style words (search/style_text.py)."""
    texts = list(texts) or ([query.text] if query.text else [])
    read = read_text_style(encoder, query.text, style_words)
    if read is not None:
        texts = [content_text(read_text_style(encoder, t), t) for t in texts]
    tvecs = (text_vectors or encoder.encode_texts)(texts) if texts else []
    img = probs = None
    if query.image is not None:
        check_readable(query.image)  # StyleError (a ValueError) for a blank canvas or a uniform image
        img_vecs, p = encoder.encode_query_tensors(encoder.preprocess(query.image)[None], style)
        img, probs = img_vecs[0], None if p is None else p[0]
    if img is None:
        fused, image_share = list(tvecs), 1.0
    elif not tvecs:
        fused, image_share = [img], 1.0
    else:
        fused = [query.text_weight * t + (1 - query.text_weight) * img for t in tvecs]
        image_share = 1 - query.text_weight
    vectors = tuple((v / np.linalg.norm(v)).astype(np.float32) for v in fused)
    weights = probs * image_share if style and probs is not None else None
    return EncodedQuery(vectors, probs, describe(probs) if probs is not None else None, weights, read,
                        style_probe_for(encoder) if read is not None else None)


def rank_query(ranking: str, vector: np.ndarray, encoded: EncodedQuery, query: Query, gallery: GalleryIndex,
               settings: RankSettings, bank: QueryBank | None) -> list[Hit]:
    """One encoded query's `ranking` (see `rank_queries`)."""
    lowres = {0: query.image} if query.image is not None and is_lowres(encoded.style_weights) else {}
    weights = None if encoded.style_weights is None else encoded.style_weights[None]
    bonus = None if encoded.text_style is None else style_bonus(gallery, encoded.style_probe,
                                                                [encoded.text_style.label])
    return rank_queries(ranking, vector[None], gallery, settings, [query.image is not None], lowres, weights,
                        bank, bonus)[0]


def rank_queries(ranking: str, vectors: np.ndarray, gallery: GalleryIndex, settings: RankSettings,
                 has_image: Sequence[bool], lowres: Mapping[int, Image.Image],
                 style_weights: np.ndarray | None = None, bank: QueryBank | None = None,
                 style_bonus: np.ndarray | None = None) -> list[list[Hit]]:
    """Query vectors -> `ranking`'s hits; the one path the app and the evaluator share.

    Image queries (`has_image`) are expanded by their top hits (`expand_queries`); those detected as low-res
    (`lowres`: row -> the query image) put near-duplicates of themselves first among the candidates
    (search/layout.py). Style-conditioned queries (`style_weights`, (Q, n_styles), rows of 0 for the others)
    have the gallery's hubs for their style discounted with the encoder's query `bank` (search/hubness.py).
    Text queries naming a style have `style_bonus` ((Q, N), rows of 0 for the others) added to their
    similarities: each image's match to that style (search/style_text.py)."""
    vectors = vectors.copy()
    rows = np.flatnonzero(np.asarray(has_image, bool))
    if len(rows):
        vectors[rows] = expand_queries(vectors[rows], gallery, settings.expand, settings.expand_alpha)
    penalties = hub_penalties(gallery, bank, style_weights)
    if style_bonus is not None:
        penalties = (0 if penalties is None else penalties) - style_bonus
    hits: list[list[Hit]] = [[] for _ in vectors]
    for near in (False, True):
        sel = [i for i in range(len(vectors)) if (i in lowres) == near]
        if not sel:
            continue
        wide = replace(settings, k=max(settings.k, settings.candidates)) if near else settings
        pool = STYLE_POOL if style_bonus is not None else MIN_POOL
        view = gallery if penalties is None else HubCorrected(gallery, penalties[sel], pool)
        for i, row in zip(sel, get_ranking(ranking)(vectors[sel], view, wide)):
            hits[i] = rerank_top(row, lowres[i], settings.candidates)[: settings.k] if near else row
    return hits
