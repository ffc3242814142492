"""Style words in text queries, at search time: "a pencil sketch of a horse" ranks sketches of horses first.

A text that names a style (models/style_words.py) is searched by its content ("a horse") and re-scored by how
well each gallery image matches the style, read from its stored vector by the encoder's style probe
(models/style_probe.py):

    cosine(content text, image) + weight * match(image, style)

The matches are computed once per gallery. A text without style words, or an encoder without a probe, ranks
exactly as before. Figures: docs/style_text.md.
"""
from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Sequence

import numpy as np

from models import Encoder
from models.style_probe import StyleProbe
from models.style_words import LABELS, StyleRead, read_style
from search.config import STYLE_PROBES
from search.index.gallery_index import GalleryIndex

log = logging.getLogger(__name__)

STYLE_POOL = 1000  # a style query re-scores this many of its nearest images by content (the whole of a smaller gallery)


@functools.lru_cache(maxsize=8)
def _load(path: str) -> StyleProbe:
    return StyleProbe.load(path)


def style_probe_for(encoder: Encoder) -> StyleProbe | None:
    """The style probe fitted for this encoder (None when it has none: style words are then ordinary words)."""
    path = STYLE_PROBES.get(encoder.name)
    if path is None or not path.is_file():
        return None
    probe = _load(str(path))
    if probe.encoder != encoder.fingerprint:
        log.warning("style probe %s was fitted for %s, not %s: style words are read as plain text; refit it with "
                    "`python -m search train-style-words`", path, probe.encoder, encoder.fingerprint)
        return None
    return probe


def read_text_style(encoder: Encoder, text: str | None, enabled: bool = True) -> StyleRead | None:
    """The style `text` names, when the encoder can match it (else None: search the text as it is)."""
    if not enabled or not text or style_probe_for(encoder) is None:
        return None
    return read_style(text)


def text_style_caption(text: str | None) -> str | None:
    """What the page shows of the style a text names: "**Style in text:** sketch" (None when it names none)."""
    read = read_style(text)
    return None if read is None else f"**Style in text:** {read.describe()}"


def content_text(read: StyleRead | None, text: str) -> str:
    """What to search by content: the text without its style words (the text itself if nothing else is left)."""
    return read.content if read is not None and read.content else text


_MATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def gallery_matches(gallery: GalleryIndex, probe: StyleProbe) -> np.ndarray:
    """(N, len(LABELS)) each gallery image's match to each style label (computed once per gallery)."""
    base = getattr(gallery, "gallery", gallery)
    cached = _MATCHES.get(base)
    if cached is None or cached[0] is not probe or len(cached[1]) != len(base):
        cached = (probe, probe.matches(base.index.vectors))
        _MATCHES[base] = cached
    return cached[1]


def style_bonus(gallery: GalleryIndex, probe: StyleProbe | None, labels: Sequence[str | None],
                weight: float | None = None) -> np.ndarray | None:
    """(Q, N) amounts added to the queries' similarities (`weight`, default the probe's, times each image's
    match to the query's style label; 0 for queries without one), or None when no query names a style."""
    if probe is None or not any(labels):
        return None
    matches = gallery_matches(gallery, probe)
    w = probe.weight if weight is None else weight
    out = np.zeros((len(labels), len(matches)), np.float32)
    for i, label in enumerate(labels):
        if label:
            out[i] = w * matches[:, LABELS.index(label)]
    return out
