"""Pure adapters between the page's component values and the search library's objects (no gradio here)."""
from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from search import config
from search.engine import SearchEngine
from search.index.images import ImageLoadError, load_image, shrink
from search.style_text import text_style_caption
from search.types import Hit, ImageFilter, Query, row_style
from search.votes.store import RankedId, Vote

CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
ANY_STYLE = "any"


@dataclass(frozen=True)
class Shown:
    """What one session was shown for its last query (kept in gr.State until the vote): small by design, the
    query image only as the compact WebP that a vote stores."""

    session: str                             # made by the server (never the visitor's own session hash)
    text: str | None                         # the query text, if any
    image: bytes | None                      # the query image (WebP, <= config.QUERY_MAX_SIDE), if any
    rephrased: str | None                    # what the aligned side searched with
    style: str | None                        # detected style of the query image
    baseline: tuple[Hit, ...]
    aligned: tuple[Hit, ...]
    baseline_side: str                       # "A" or "B", hidden until the vote
    settings: dict                           # as searched
    voted: str | None = None                 # the choice, once voted
    vote_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # arena mode (app.py --arena): the systems shown on A and B, and the encoder / index fingerprints they used
    systems: tuple[str, str] | None = None
    encoder: str | None = None
    index: str | None = None

    def side(self, name: str) -> tuple[Hit, ...]:
        return self.baseline if (name == self.baseline_side) else self.aligned


class RequestError(ValueError):
    """Something a visitor sent that cannot be served; its message is shown to them."""


_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^/\\\s'\"()]+)+[/\\]([^/\\\s'\"()]+)")


def public_message(error: BaseException | str) -> str:
    """An error's text with any absolute path cut to its file name (server paths are nobody's business)."""
    return _SERVER_PATH.sub(r"\1", str(error))


def check_pixels(path: str | None, limit: int, what: str) -> None:
    """RequestError if the image file's header says it has more than `limit` pixels (nothing is decoded)."""
    if not path:
        return
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return  # not an image: the loader says so with the file's name
    if w * h > limit:
        raise RequestError(f"{what} is {w}x{h} pixels, over the {limit:,} limit")


def sketch_image(value: dict | None) -> Image.Image | None:
    """Sketchpad value -> its RGBA composite flattened onto white and shrunk, or None if nothing was drawn."""
    composite = (value or {}).get("composite")
    if composite is None:
        return None
    rgba = composite.convert("RGBA")
    if rgba.getchannel("A").getextrema()[1] == 0:  # fully transparent: an untouched canvas
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return shrink(Image.alpha_composite(white, rgba).convert("RGB"), config.QUERY_MAX_SIDE)


def upload_image(path: str | None) -> Image.Image | None:
    """An uploaded file, opened defensively and shrunk (ImageLoadError says why a file cannot be used)."""
    if not path:
        return None
    try:
        return load_image(path, max_side=config.QUERY_MAX_SIDE)
    except ImageLoadError as e:  # name the visitor's file, not the server's temporary copy of it
        raise ImageLoadError(Path(path).name, e.reason) from e


def to_query(text: str | None, sketch: dict | None, upload: str | None, source: str, text_weight: float) -> Query:
    """Component values -> a Query. `source` is the image tab in use ("Sketch" or "Upload")."""
    if text is not None and not isinstance(text, str):
        raise RequestError("the text must be a string")
    if text and len(text) > config.MAX_TEXT_CHARS:
        raise RequestError(f"the text is {len(text):,} characters long; at most {config.MAX_TEXT_CHARS:,} "
                           "are searched")
    drawn, uploaded = sketch_image(sketch), upload_image(upload)
    image = drawn if source == "Sketch" else uploaded
    image = image or drawn or uploaded
    if image is None and not (text or "").strip() and source == "Sketch" and sketch is not None:
        raise ValueError("the canvas is blank: draw something, type a text, or upload an image")
    return Query(text=text, image=image, text_weight=text_weight)


def caption(hit: Hit, show_scores: bool, percentile: Callable[[float], int] | None = None) -> str:
    """An item's caption; with scores, on scales a visitor can read: relevance as cosine similarity, the
    aesthetic score as its percentile among the gallery's images (the scorer's own scale is arbitrary)."""
    label = hit.item.caption or hit.item.label or hit.item.id
    if not show_scores:
        return label
    rel = hit.score if hit.relevance is None else hit.relevance
    aes = ("no aesthetic score" if hit.item.aesthetic is None or percentile is None
           else f"aesthetic {percentile(hit.item.aesthetic)}th percentile")
    return f"{label} · relevance {rel:.3f} (cosine) · {aes}"


def to_gallery(hits: tuple[Hit, ...], show_scores: bool,
               percentile: Callable[[float], int] | None = None) -> list[tuple[str, str]]:
    """Hits -> gr.Gallery value: (thumbnail file, caption) in rank order (only thumbnails are ever served)."""
    return [(str(h.item.thumbnail), caption(h, show_scores, percentile)) for h in hits]


def has_styles(engine: SearchEngine) -> bool:
    """Whether the gallery's rows carry a detected style (indexes built from embedded shards do)."""
    rows = engine.gallery.rows
    return any(row_style(rows[i]) for i in range(min(len(rows), 5)))


def to_filter(style: str | None, min_look: float | None, scores: np.ndarray) -> ImageFilter:
    """The page's filter controls -> an ImageFilter. `min_look`: a percentile (0-100) of the gallery's aesthetic
    scores (`scores`, sorted), made a score threshold; 0, or a gallery without scores: no threshold."""
    if style is not None and not isinstance(style, str):
        raise RequestError("the style must be a string")
    try:
        look = float(min_look or 0)
    except (TypeError, ValueError):
        raise RequestError("the minimum look must be a number from 0 to 100") from None
    if not 0 <= look <= 100:
        raise RequestError(f"the minimum look must be from 0 to 100, got {look:g}")
    threshold = float(np.quantile(scores, look / 100)) if look > 0 and len(scores) else None
    try:
        return ImageFilter(None if style in (None, "", ANY_STYLE) else style, threshold)
    except ValueError as e:
        raise RequestError(str(e)) from None


def percentiles(scores: list[float]) -> Callable[[float], int]:
    """score -> the percentage (0-100) of `scores` at or below it."""
    ordered = np.sort(np.asarray(scores, np.float64))
    return lambda x: int(round(100 * np.searchsorted(ordered, x, side="right") / max(len(ordered), 1)))


def describe(shown: Shown, seconds: float) -> str:
    parts = [f"**Query style:** {shown.style}" if shown.style else "**Query:** text"]
    if style_words := text_style_caption(shown.text):  # "a pencil sketch of a horse": searched as sketches
        parts.append(style_words)
    if shown.rephrased is not None:
        parts.append(f"**Rephrased:** {shown.rephrased}")
    parts.append(f"{len(shown.baseline)} results per side in {seconds * 1000:.0f} ms")
    return " · ".join(parts)


def to_vote(shown: Shown, choice: str, image_hash: str | None, engine: SearchEngine) -> Vote:
    def ranked(hits: tuple[Hit, ...]) -> tuple[RankedId, ...]:
        return tuple(RankedId(h.item.id, h.score, h.item.aesthetic) for h in hits)

    return Vote(shown.vote_id, time.time(), shown.session, shown.text, image_hash, shown.rephrased, shown.style,
                ranked(shown.side("A")), ranked(shown.side("B")), shown.baseline_side, choice, config.APP_VERSION,
                shown.encoder or engine.encoder.fingerprint,
                shown.index or f"{engine.gallery.meta.fingerprint}/{engine.gallery.meta.snapshot}",
                shown.settings, *(shown.systems or (None, None)))


def visitor(request: object) -> tuple[str, str]:
    """(IP address, Gradio session) of a gr.Request, as rate-limit keys. Behind a proxy, uvicorn takes the
    address from X-Forwarded-For when the proxy is trusted (env FORWARDED_ALLOW_IPS)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) or "unknown"
    return f"ip:{host}", f"session:{(getattr(request, 'session_hash', None) or '')[:64]}"


# ---------------------------------------------------------------- UI
