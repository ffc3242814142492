"""What the page's events do: short handlers over the search library, each behind the per-visitor limits."""
from __future__ import annotations

import functools
import logging
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import gradio as gr
import numpy as np

from search import config
from search.api import search_json
from search.engine import SearchEngine
from search.index.images import ImageLoadError, load_image, to_webp
from search.limits import RateLimited, RateLimiter
from search.rankings import RankSettings
from search.types import Query
from search.votes.arena import System, compare_pair, draw_pair, reveal, shown_sides
from search.votes.store import CHOICES, ImageQuotaExceeded, VoteStore

from .adapters import (
    CHOICE_LABELS,
    RequestError,
    Shown,
    describe,
    percentiles,
    to_filter,
    to_gallery,
    to_query,
    to_vote,
    visitor,
)
from .components import user_error

log = logging.getLogger("app")
# After the first answer, the encoder loads what it loads lazily (the image tower: ~3 s of imports) this long
# later: started at once, it held the GIL while that answer and its images were being sent (+0.5-5 s).
WARM_UP_DELAY = 2.0


@dataclass(frozen=True)
class Limits:
    """Per-visitor limits of one running app (the numbers are in search/config.py)."""

    searches: RateLimiter = field(default_factory=lambda: RateLimiter("searches", config.SEARCHES_PER_MINUTE))
    votes: RateLimiter = field(default_factory=lambda: RateLimiter("votes", config.VOTES_PER_MINUTE))
    concurrency: int = config.CONCURRENCY    # searches served at once (and, apart, votes)


def guarded(handler: Callable, limiter: RateLimiter) -> Callable:
    """Rate limit first; a visitor's bad input (or a full quota) becomes a message without server paths."""

    @functools.wraps(handler)  # Gradio reads the handler's signature: its gr.Request comes last
    def run(*args):  # noqa: ANN002, ANN202
        try:
            limiter.take(*visitor(args[-1]))
            return handler(*args)
        except (RateLimited, RequestError, ImageLoadError, ValueError) as e:
            raise user_error(e) from e
    return run


def settings_of(k: int, aesthetic_weight: float, rephrase: bool, dedup: bool, show_scores: bool, min_look: float,
                style: str | None, **extra) -> dict:
    """The settings a search ran with, as a vote stores them (filters included)."""
    return {"k": int(k), "aesthetic_weight": float(aesthetic_weight), "rephrase": bool(rephrase),
            "dedup": bool(dedup), "show_scores": bool(show_scores), "min_look": min_look, "style": style, **extra}


class Handlers:
    """The page's handlers over one engine and vote store. `refuse(image)` raises ValueError for an image the
    safety filter flags (None: no filter). `arena`: systems (search/votes/arena.py) of which each query shows a
    drawn pair, each run on `engines[system.encoder]`; None: the engine's baseline vs aligned ranking."""

    def __init__(self, engine: SearchEngine, store: VoteStore, limits: Limits, refuse: Callable | None = None,
                 arena: tuple[System, ...] | None = None, engines: dict[str, SearchEngine] | None = None) -> None:
        self.engine, self.store, self.limits, self.refuse = engine, store, limits, refuse
        self.arena, self.engines = arena, engines or {engine.encoder.name: engine}
        self.side_of = random.SystemRandom()
        self._warm = threading.Event()

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """The gallery's aesthetic scores, sorted (read once, at first use)."""
        return np.sort([r["aesthetic"] for r in self.engine.gallery.rows if r.get("aesthetic") is not None])

    @functools.cached_property
    def percentile(self) -> Callable[[float], int]:
        """Aesthetic score -> percentile among the gallery's images."""
        return percentiles(self.scores.tolist())

    def answer(self, query: Query, settings: dict, previous: Shown | None) -> tuple:
        if self.refuse is not None and query.image is not None:
            self.refuse(query.image)
        ranks = RankSettings(k=settings["k"], aesthetic_weight=settings["aesthetic_weight"], dedup=settings["dedup"])
        only = to_filter(settings["style"], settings["min_look"], self.scores)
        session = previous.session if previous else uuid.uuid4().hex
        image = to_webp(query.image) if query.image is not None else None
        if self.arena is None:
            c = self.engine.compare(query, ranks, rephrase=settings["rephrase"], image_filter=only)
            state = Shown(session, query.text, image, c.rephrasing.rephrased if c.rephrasing else None, c.style,
                          c.baseline, c.aligned, self.side_of.choice("AB"), settings)
        else:  # listed-first system as "baseline", so Shown.side() and the vote read as in the default app
            c = compare_pair(self.engines, draw_pair(self.arena, self.side_of), query, ranks, settings["rephrase"],
                             only)
            side, first, other = shown_sides(c, self.arena)
            state = Shown(session, query.text, image, c.rephrased, c.style, first, other, side, settings,
                          systems=c.systems, encoder=c.encoder, index=c.index)
        if not self._warm.is_set():  # the first answer went out without waiting for it; now load the rest
            self._warm.set()
            for engine in self.engines.values():
                timer = threading.Timer(WARM_UP_DELAY, engine.encoder.warm_up)
                timer.daemon = True
                timer.start()
        log.info("query text=%r image=%s style=%s -> %d+%d hits in %.0f ms%s", (query.text or "")[:100],
                 query.image is not None, state.style, len(state.baseline), len(state.aligned), c.seconds * 1e3,
                 f" ({' vs '.join(state.systems)})" if state.systems else "")
        # the vote buttons as updates, not gr.Button(...): Gradio builds each updated component once anyway
        return (*self.galleries(state, settings["show_scores"]), describe(state, c.seconds), state, "",
                *[gr.update(interactive=True) for _ in CHOICES])

    def galleries(self, state: Shown | None, show_scores: bool) -> tuple[list, list]:
        if state is None:
            return [], []
        return tuple(to_gallery(state.side(s), show_scores, self.percentile) for s in "AB")

    def search(self, text: str, sketch: dict | None, upload: str | None, source: str, text_weight: float, k: int,
               aesthetic_weight: float, rephrase: bool, dedup: bool, show_scores: bool, min_look: float,
               style: str | None, previous: Shown | None, request: gr.Request = None) -> tuple:
        query = to_query(text, sketch, upload, source, float(text_weight))
        return self.answer(query, settings_of(k, aesthetic_weight, rephrase, dedup, show_scores, min_look, style,
                                              text_weight=float(text_weight)), previous)

    def more_like_this(self, item_id: str, k: int, aesthetic_weight: float, rephrase: bool, dedup: bool,
                       show_scores: bool, min_look: float, style: str | None, previous: Shown | None,
                       request: gr.Request = None) -> tuple:
        gallery = self.engine.gallery
        row = gallery.row_of(item_id) if isinstance(item_id, str) else None
        if row is None or gallery.is_flagged(row):
            raise RequestError(f"no gallery image with id {str(item_id)[:100]!r}")
        item = gallery.item(row)  # a published index has thumbnails, not always the originals
        source = item.path if item.path.is_file() or item.thumbnail is None else item.thumbnail
        query = Query(image=load_image(source, max_side=config.QUERY_MAX_SIDE))
        return self.answer(query, settings_of(k, aesthetic_weight, rephrase, dedup, show_scores, min_look, style,
                                              more_like=item_id),
                           previous)

    def vote(self, choice: str, state: Shown | None, agreed: bool, request: gr.Request = None) -> tuple:
        if choice not in CHOICES:
            raise RequestError(f"unknown choice {str(choice)[:20]!r}; expected one of {', '.join(CHOICES)}")
        if not isinstance(state, Shown):
            raise RequestError("search first, then vote for the better side")
        if agreed is not True:  # exactly True: "false", 1 or "yes" through the API are not consent
            raise RequestError("tick \"I agree that my votes are stored\" to vote")
        if state.voted is None:
            try:
                image_hash = self.store.save_query_image(state.image) if state.image is not None else None
                self.store.record(to_vote(state, choice, image_hash, self.engine))
            except ImageQuotaExceeded as e:
                raise RequestError(f"vote not saved: {e}") from e
            except (OSError, sqlite3.Error) as e:
                log.exception("vote %s not saved", state.vote_id)
                raise RequestError(f"vote not saved: the server could not write it ({type(e).__name__}: "
                                   f"{getattr(e, 'strerror', None) or e}); please try again later") from e
            state = replace(state, voted=choice)
        aligned = "B" if state.baseline_side == "A" else "A"
        shown = reveal(state.systems) if state.systems else (
            f"**{state.baseline_side}** was the baseline ranking and **{aligned}** the aesthetically-aligned one.")
        text = f"Thanks! {shown} You chose: {CHOICE_LABELS[state.voted]}."
        return text, state, *[gr.update(interactive=False) for _ in CHOICES]

    def find_images(self, text: str, k: int = 8, ranking: str = "aligned", request: gr.Request = None) -> list[dict]:
        """Find images in this app's gallery that match a text description, e.g. "a cat on a sofa".

        Args:
            text: what to look for, in plain words (at most 1,000 characters)
            k: how many images to return, 1 to 48
            ranking: "aligned" (relevant images ordered by how good they look) or "baseline" (relevance only)

        Returns:
            the best matches first, each with id, caption, relevance, aesthetic score and thumbnail URL
        """
        if ranking not in ("aligned", "baseline") or not 1 <= int(k) <= 48:
            raise RequestError("ranking must be \"aligned\" or \"baseline\", and k in 1..48")
        query = to_query(text, None, None, "Upload", 0.5)
        # the server's root, not this app's mount point (/agent/ for the MCP tools): /api/ lives at the root
        base = urlsplit(str(getattr(request, "base_url", "") or ""))
        return search_json(self.engine, query, int(k), ranking, f"{base.scheme}://{base.netloc}/")["hits"]
