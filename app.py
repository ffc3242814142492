"""Visual search in the browser: `python app.py [--gallery SOURCE | --index DIR] [--encoder NAME] ...`.

Ask with a text, a sketch, an image (artwork, low-res or photo) or a sketch/image plus text. Two rankings
of the gallery appear side by side, A and B: the plain baseline and the aesthetically-aligned one, in a
random, hidden order. Vote for the better side; votes are stored (SQLite under --data-dir) as training data.
Every action is an API endpoint (`gradio_client.Client(url).predict(..., api_name="/search")`).
"""
from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

# Importing gradio and torch creates ~0.5M objects that live as long as the process: the cyclic GC would scan
# them ~10 times while they load (~1 s). It is off until they are imported, then they are frozen (see below).
if __name__ == "__main__":
    gc.disable()

# One BLAS/OpenMP thread per request (set before numpy/torch load): --concurrency requests run side by side,
# and for one query's small products a thread hand-off costs more than it saves (benchmarks/app_load.py).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Gradio switches matplotlib to Agg around every request; finding the default backend first imports pyplot
# (~0.5 s of the first answer). A server draws nothing on a screen: Agg is the default here.
os.environ.setdefault("MPLBACKEND", "agg")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from PIL import Image  # noqa: E402

from search import config  # noqa: E402
from search.api import create_router, search_json  # noqa: E402
from search.engine import SearchEngine  # noqa: E402
from search.examples import ASSETS_DIR, load_examples  # noqa: E402
from search.gallery import default_gallery  # noqa: E402
from search.images import ImageLoadError, load_image, shrink, to_webp  # noqa: E402
from search.limits import RateLimited, RateLimiter  # noqa: E402
from search.rankings import RankSettings  # noqa: E402
from search.types import Hit, Query  # noqa: E402
from search.votes import CHOICES, ImageQuotaExceeded, RankedId, Vote, VoteStore, check_writable  # noqa: E402

if TYPE_CHECKING:
    from models.safety import SafetyFilter

if __name__ == "__main__":  # imported: later collections need not scan these modules' objects again
    gc.freeze()
    gc.enable()

log = logging.getLogger("app")
# After the first answer, the encoder loads what it loads lazily (the image tower: ~3 s of imports) this long
# later: started at once, it held the GIL while that answer and its images were being sent (+0.5-5 s).
WARM_UP_DELAY = 2.0
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
# The Sketchpad opens with no tool selected ("select the draw tool to start"): pick the brush once it is there.
BRUSH_READY = """() => {
  const pick = (tries) => {
    const brush = document.querySelector('#sketchpad button[aria-label="Brush"], #sketchpad button[title="Brush"]');
    if (brush) brush.click(); else if (tries > 0) setTimeout(() => pick(tries - 1), 100);
  };
  pick(100);
}"""
CSS = """#consent p { font-size: var(--text-md); color: var(--body-text-color); }
.side .caption-label { white-space: normal; overflow-wrap: anywhere; max-width: calc(100% - 8px); line-height: 1.25; }
"""
DEFAULT_GALLERY_NOTE = ("This is the built-in sample of package photos: serve your own with "
                        "`python app.py --gallery FOLDER` (or a .zip, a manifest, a Hugging Face dataset).")
CONSENT = ("Votes are stored to improve the aligned ranking: the query (text, or the image you drew or "
           "uploaded), both rankings and your choice, with an anonymous session id and nothing else.")


# ---------------------------------------------------------------- adapters: component values <-> domain objects
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

    def side(self, name: str) -> tuple[Hit, ...]:
        return self.baseline if (name == self.baseline_side) else self.aligned


class RequestError(ValueError):
    """Something a visitor sent that cannot be served; its message is shown to them."""


_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^/\\\s'\"()]+)+[/\\]([^/\\\s'\"()]+)")


def public_message(error: BaseException | str) -> str:
    """An error's text with any absolute path cut to its file name (server paths are nobody's business)."""
    return _SERVER_PATH.sub(r"\1", str(error))


def user_error(error: BaseException | str) -> gr.Error:
    return gr.Error(public_message(error), print_exception=False)


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


class Sketchpad(gr.Sketchpad):
    """gr.Sketchpad that checks the size of every image it is sent (composite, background, layers) from the
    header, before Gradio decodes it: a canvas is at most config.SKETCH_MAX_PIXELS."""

    is_template = True

    def get_block_name(self) -> str:
        return "imageeditor"  # drawn by gr.Sketchpad's front end (itself gr.ImageEditor's)

    def convert_and_format_image(self, file, flatten_on_white: bool = False):  # noqa: ANN001, ANN201 (Gradio's)
        try:
            check_pixels(getattr(file, "path", None), config.SKETCH_MAX_PIXELS, "the drawing")
        except RequestError as e:
            raise user_error(e) from e
        if isinstance(file, (bytes, bytearray, memoryview)):
            raise gr.Error("send the drawing as a file", print_exception=False)
        return super().convert_and_format_image(file, flatten_on_white)


class ImageUpload(gr.Image):
    """gr.Image that hands over the uploaded file's path untouched: Gradio's own preprocessing would decode
    (and re-save) any image, however large, before the app could check it; the app loads it, bounded."""

    is_template = True  # drawn by gr.Image's front end

    def preprocess(self, payload):  # noqa: ANN001, ANN201 (gr.Image's signature)
        return None if payload is None else payload.path


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


def percentiles(scores: list[float]) -> Callable[[float], int]:
    """score -> the percentage (0-100) of `scores` at or below it."""
    ordered = np.sort(np.asarray(scores, np.float64))
    return lambda x: int(round(100 * np.searchsorted(ordered, x, side="right") / max(len(ordered), 1)))


def describe(shown: Shown, seconds: float) -> str:
    parts = [f"**Query style:** {shown.style}" if shown.style else "**Query:** text"]
    if shown.rephrased is not None:
        parts.append(f"**Rephrased:** {shown.rephrased}")
    parts.append(f"{len(shown.baseline)} results per side in {seconds * 1000:.0f} ms")
    return " · ".join(parts)


def to_vote(shown: Shown, choice: str, image_hash: str | None, engine: SearchEngine) -> Vote:
    def ranked(hits: tuple[Hit, ...]) -> tuple[RankedId, ...]:
        return tuple(RankedId(h.item.id, h.score, h.item.aesthetic) for h in hits)

    return Vote(shown.vote_id, time.time(), shown.session, shown.text, image_hash, shown.rephrased, shown.style,
                ranked(shown.side("A")), ranked(shown.side("B")), shown.baseline_side, choice, config.APP_VERSION,
                engine.encoder.fingerprint, f"{engine.gallery.meta.fingerprint}/{engine.gallery.meta.snapshot}",
                shown.settings)


def visitor(request: gr.Request | None) -> tuple[str, str]:
    """(IP address, Gradio session) of a request, as rate-limit keys. Behind a proxy, uvicorn takes the
    address from X-Forwarded-For when the proxy is trusted (env FORWARDED_ALLOW_IPS)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) or "unknown"
    return f"ip:{host}", f"session:{(getattr(request, 'session_hash', None) or '')[:64]}"


# ---------------------------------------------------------------- UI
@dataclass(frozen=True)
class Limits:
    """Per-visitor limits of one running app (the numbers are in search/config.py)."""

    searches: RateLimiter = field(default_factory=lambda: RateLimiter("searches", config.SEARCHES_PER_MINUTE))
    votes: RateLimiter = field(default_factory=lambda: RateLimiter("votes", config.VOTES_PER_MINUTE))
    concurrency: int = 4                     # heavy requests (search, more like this, vote) served at once


def build_ui(engine: SearchEngine, store: VoteStore, top_k: int = config.DEFAULT_TOP_K,
             examples: list | None = None, limits: Limits | None = None, safety: SafetyFilter | None = None,
             note: str | None = None) -> gr.Blocks:
    """The page. `examples`: search.examples.ExampleQuery list; `safety`: refuses flagged query images;
    `note`: a last sentence for the header."""
    limits = limits or Limits()
    unsafe = refuse_unsafe(safety)

    @functools.cache
    def warm_up_once() -> None:
        timer = threading.Timer(WARM_UP_DELAY, engine.encoder.warm_up)
        timer.daemon = True
        timer.start()

    side_of = random.SystemRandom()

    @functools.cache
    def aesthetic_percentile() -> Callable[[float], int]:  # read once, at the first search that shows scores
        return percentiles([r["aesthetic"] for r in engine.gallery.rows if r.get("aesthetic") is not None])
    with gr.Blocks(title="Visual search", analytics_enabled=False, delete_cache=config.CACHE_CLEANUP) as demo:
        gr.Markdown(f"# Visual search\nFind images with words, a sketch, an artwork or a blurry photo in "
                    f"{len(engine.gallery):,} images (encoder `{engine.encoder.name}`). Two rankings appear side by "
                    f"side in a random order, the plain one and the aesthetically-aligned one: vote for the better "
                    f"side to see which was which.{' ' + note if note else ''}", elem_id="header")
        shown = gr.State(None, time_to_live=config.SESSION_TTL_SECONDS)
        image_source = gr.State("Sketch")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                text = gr.Textbox(label="Text", placeholder="e.g. a cat on a sofa", lines=1, max_lines=3,
                                  max_length=config.MAX_TEXT_CHARS)
                with gr.Tabs() as image_tabs:
                    with gr.Tab("Sketch", id="Sketch") as sketch_tab:
                        sketch = Sketchpad(label="Draw", type="pil", canvas_size=(512, 512), height=300,
                                           layers=False, elem_id="sketchpad",
                                           brush=gr.Brush(default_size=4, colors=["#000000"], color_mode="fixed"))
                    with gr.Tab("Upload", id="Upload") as upload_tab:
                        upload = ImageUpload(label="Image (artwork, low-res or photo)", type="filepath",
                                             image_mode=None, sources=["upload", "clipboard"], height=300)
                search_btn = gr.Button("Search", variant="primary")
                if examples:
                    pictures = [e for e in examples if e.image is not None]
                    gr.Examples([[e.text] for e in examples if e.image is None], [text], label="Try a text")
                    gr.Examples([[str(e.image)] for e in pictures if not e.text], [upload], examples_per_page=12,
                                label="… a picture (drawings, a painting-like photo, a low-res photo)")
                    with_text = [e for e in pictures if e.text]
                    gr.Examples([[str(e.image), e.text] for e in with_text], [upload, text],
                                example_labels=[e.caption for e in with_text],
                                label="… or a drawing with words")
                with gr.Accordion("Settings", open=False):
                    text_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Text weight",
                                            info="with a sketch or image plus text: the text's share of the query")
                    k = gr.Slider(1, 48, value=top_k, step=1, label="Results per side")
                    aesthetic_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Aesthetic weight",
                                                 info="share of beauty vs relevance in the aligned ranking")
                    rephrase = gr.Checkbox(True, label="Rephrase the query for the aligned ranking")
                    dedup = gr.Checkbox(True, label="Remove near-duplicates from the aligned ranking")
                    show_scores = gr.Checkbox(False, label="Show relevance and aesthetic scores",
                                              info="relevance: cosine similarity to the query (-1 to 1); "
                                                   "aesthetic: percentile among this gallery's images")
            with gr.Column(scale=5):
                with gr.Row():
                    gallery_a, gallery_b = (gr.Gallery(label=side, columns=3, height=440, object_fit="cover",
                                                       interactive=False, allow_preview=False, elem_classes="side")
                                            for side in "AB")
                info = gr.Markdown("Ask something to see two rankings. Click a result to search for more like it.")
                with gr.Row():
                    vote_btns = {c: gr.Button(CHOICE_LABELS[c], variant="secondary", interactive=False)
                                 for c in CHOICES}
                consent = gr.Checkbox(False, label="I agree that my votes are stored")
                gr.Markdown(CONSENT, elem_id="consent")
                reveal = gr.Markdown()
        picked = gr.Textbox(visible=False)  # the id of a clicked result, for "more like this"

        # ------------------------------------------------------------ handlers (short; logic lives in search/)
        def answer(query: Query, settings: dict, previous: Shown | None, request: gr.Request | None):
            if unsafe is not None and query.image is not None:
                unsafe(query.image)  # ValueError: refused by the safety filter
            c = engine.compare(query, RankSettings(k=settings["k"], aesthetic_weight=settings["aesthetic_weight"],
                                                   dedup=settings["dedup"]), rephrase=settings["rephrase"])
            warm_up_once()  # the first answer went out without waiting for it; now load the rest
            state = Shown(previous.session if previous else uuid.uuid4().hex, c.query.text,
                          to_webp(c.query.image) if c.query.image is not None else None,
                          c.rephrasing.rephrased if c.rephrasing else None, c.style, c.baseline, c.aligned,
                          side_of.choice("AB"), settings)
            log.info("query text=%r image=%s style=%s -> %d+%d hits in %.0f ms", (query.text or "")[:100],
                     query.image is not None, c.style, len(c.baseline), len(c.aligned), c.seconds * 1e3)
            buttons = [gr.Button(interactive=True) for _ in CHOICES]
            show = settings["show_scores"]
            return (to_gallery(state.side("A"), show, aesthetic_percentile()),
                    to_gallery(state.side("B"), show, aesthetic_percentile()), describe(state, c.seconds), state, "",
                    *buttons)

        def guarded(handler):  # noqa: ANN001, ANN202
            """Rate limits first; a visitor's bad input (or a full quota) becomes a message without server paths."""
            limiter = limits.votes if handler.__name__ == "vote" else limits.searches

            @functools.wraps(handler)  # Gradio reads the handler's signature: its gr.Request comes last
            def run(*args):  # noqa: ANN002, ANN202
                try:
                    limiter.take(*visitor(args[-1]))
                    return handler(*args)
                except (RateLimited, RequestError, ImageLoadError, ValueError) as e:
                    raise user_error(e) from e
            return run

        def search(text: str, sketch: dict | None, upload: str | None, source: str, text_weight: float, k: int,
                   aesthetic_weight: float, rephrase: bool, dedup: bool, show_scores: bool, previous: Shown | None,
                   request: gr.Request = None):
            query = to_query(text, sketch, upload, source, float(text_weight))
            settings = {"k": int(k), "aesthetic_weight": float(aesthetic_weight), "rephrase": bool(rephrase),
                        "dedup": bool(dedup), "show_scores": bool(show_scores), "text_weight": float(text_weight)}
            return answer(query, settings, previous, request)

        def more_like_this(item_id: str, k: int, aesthetic_weight: float, rephrase: bool, dedup: bool,
                           show_scores: bool, previous: Shown | None, request: gr.Request = None):
            row = engine.gallery.row_of(item_id) if isinstance(item_id, str) else None
            if row is None or engine.gallery.is_flagged(row):
                raise RequestError(f"no gallery image with id {str(item_id)[:100]!r}")
            query = Query(image=load_image(engine.gallery.item(row).path, max_side=config.QUERY_MAX_SIDE))
            settings = {"k": int(k), "aesthetic_weight": float(aesthetic_weight), "rephrase": bool(rephrase),
                        "dedup": bool(dedup), "show_scores": bool(show_scores), "more_like": item_id}
            return answer(query, settings, previous, request)

        def pick(state: Shown | None, side: str, evt: gr.SelectData) -> str:
            if state is None:
                raise gr.Error("search first", print_exception=False)
            return state.side(side)[evt.index].item.id

        def vote(choice: str, state: Shown | None, agreed: bool, request: gr.Request = None) -> tuple:
            if choice not in CHOICES:
                raise RequestError(f"unknown choice {str(choice)[:20]!r}; expected one of {', '.join(CHOICES)}")
            if not isinstance(state, Shown):
                raise RequestError("search first, then vote for the better side")
            if agreed is not True:  # exactly True: "false", 1 or "yes" through the API are not consent
                raise RequestError("tick \"I agree that my votes are stored\" to vote")
            if state.voted is None:
                try:
                    image_hash = store.save_query_image(state.image) if state.image is not None else None
                    store.record(to_vote(state, choice, image_hash, engine))
                except ImageQuotaExceeded as e:
                    raise RequestError(f"vote not saved: {e}") from e
                except (OSError, sqlite3.Error) as e:
                    log.exception("vote %s not saved", state.vote_id)
                    raise RequestError(f"vote not saved: the server could not write it ({type(e).__name__}: "
                                       f"{getattr(e, 'strerror', None) or e}); please try again later") from e
                state = replace(state, voted=choice)
            aligned = "B" if state.baseline_side == "A" else "A"
            text = (f"Thanks! **{state.baseline_side}** was the baseline ranking and **{aligned}** the "
                    f"aesthetically-aligned one. You chose: {CHOICE_LABELS[state.voted]}.")
            return text, state, *[gr.Button(interactive=False) for _ in CHOICES]

        def rerender(state: Shown | None, show: bool):
            if state is None:
                return [], []
            return (to_gallery(state.side("A"), show, aesthetic_percentile()),
                    to_gallery(state.side("B"), show, aesthetic_percentile()))

        # ------------------------------------------------------------ wiring
        settings_in = [k, aesthetic_weight, rephrase, dedup, show_scores]
        outputs = [gallery_a, gallery_b, info, shown, reveal, *vote_btns.values()]
        # search, more like this and vote share one pool of workers: together they never run more than this
        heavy = {"concurrency_id": "heavy", "concurrency_limit": limits.concurrency}
        sketch_tab.select(lambda: "Sketch", None, image_source, api_name=False)
        upload_tab.select(lambda: "Upload", None, image_source, api_name=False)
        upload.change(lambda v: ("Upload", gr.Tabs(selected="Upload")) if v else ("Sketch", gr.Tabs()), upload,
                      [image_source, image_tabs], api_name=False)
        # progress and a bad input's error show on the info line only: the galleries keep their results
        gr.on([search_btn.click, text.submit], guarded(search),
              [text, sketch, upload, image_source, text_weight, *settings_in, shown], outputs, api_name="search",
              show_progress_on=info, api_visibility="undocumented", **heavy)
        # API-only endpoints are hidden buttons, so they share the session's state with /search
        more_btn, vote_btn, choice = gr.Button(visible=False), gr.Button(visible=False), gr.Textbox(visible=False)
        more_btn.click(guarded(more_like_this), [picked, *settings_in, shown], outputs, api_name="more_like_this",
                       show_progress_on=info, api_visibility="undocumented", **heavy)
        for side, g in (("A", gallery_a), ("B", gallery_b)):
            def pick_on(state: Shown | None, evt: gr.SelectData, side: str = side) -> str:
                return pick(state, side, evt)  # a def, not functools.partial: Gradio finds evt by its type hint

            g.select(pick_on, shown, picked, api_name=False).then(
                guarded(more_like_this), [picked, *settings_in, shown], outputs, api_name=False,
                show_progress_on=info, **heavy)
        vote_io = ([choice, shown, consent], [reveal, shown, *vote_btns.values()])
        vote_btn.click(guarded(vote), *vote_io, api_name="vote", api_visibility="undocumented", **heavy)
        for c, btn in vote_btns.items():
            btn.click(lambda c=c: c, None, choice, api_name=False).then(guarded(vote), *vote_io, api_name=False,
                                                                         **heavy)
        show_scores.change(rerender, [shown, show_scores], [gallery_a, gallery_b], api_name=False)

        def find_images(text: str, k: int = 8, ranking: str = "aligned", request: gr.Request = None) -> list[dict]:
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
            base = str(getattr(request, "base_url", "") or "")
            return search_json(engine, query, int(k), ranking, base)["hits"]

        # the tool an agent sees (MCP) and the plain API call; the page's own endpoints stay callable by
        # gradio_client but are left out of the API docs and the MCP tool list (votes are never a tool)
        gr.api(guarded(find_images), api_name="find_images", **heavy)
    return demo


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--gallery", metavar="SOURCE",
        help="index a folder (recursive), a .jsonl/.csv manifest or a .zip of images (default: built-in photos)")
    add("--index", metavar="DIR", help="serve an index directory built by `python -m search index`")
    add("--encoder", metavar="NAME", 
        help=f"encoder name (default {config.DEFAULT_ENCODER}; with --index, the index's own)")
    add("--cache-dir", metavar="DIR", default=str(config.CACHE_DIR),
        help="where --gallery and the built-in photos are indexed (default %(default)s)")
    add("--data-dir", metavar="DIR", default=str(config.DATA_DIR),
        help="where votes (votes.db) and voted query images are kept (default %(default)s; env VISUAL_SEARCH_DATA)")
    add("--hub-repo", metavar="ID", default=os.environ.get("VOTES_DATASET_REPO"),
        help="also sync votes to this Hugging Face dataset repo (needs HF_TOKEN; env VOTES_DATASET_REPO)")
    add("--rephraser", default=os.environ.get("VISUAL_SEARCH_REPHRASER", "template"),
        help="query rephraser: template, none, llm:PATH_OR_ID or http:URL (default %(default)s)")
    add("--top-k", metavar="K", type=int, default=config.DEFAULT_TOP_K, help="results per side (default %(default)s)")
    add("--concurrency", type=int, default=4, help="searches served in parallel (default %(default)s)")
    add("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on (default %(default)s; env GRADIO_SERVER_NAME)")
    add("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port to serve on (default %(default)s; env GRADIO_SERVER_PORT)")
    add("--share", action="store_true", help="also serve through a public gradio.live link (page and Gradio API only)")
    add("--mcp", action="store_true", help="also serve the search as an MCP tool (find_images) at /gradio_api/mcp/")
    add("--public", action="store_true", default=config.PUBLIC,
        help="public-demo defaults: the safety filter on (default on a Hugging Face Space, where SPACE_ID is set)")
    add("--safety", choices=["auto", "on", "off"], default="auto",
        help="refuse unsafe query images and hide unsafe gallery images (NudeNet); auto: on with --public")
    add("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.gallery and args.index:
        parser.error("give --gallery or --index, not both")
    if not args.index:
        args.encoder = args.encoder or config.DEFAULT_ENCODER
    if args.top_k < 1 or args.concurrency < 1:
        parser.error("--top-k and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    safety_on = args.safety == "on" or (args.safety == "auto" and args.public)
    try:
        check_writable(args.data_dir)  # an unwritable --data-dir stops the app before the slow part
        safety = load_safety_filter() if safety_on else None
        if args.index:
            engine = SearchEngine.open(args.index, args.encoder)
        elif args.gallery:
            engine, _ = SearchEngine.from_source(args.gallery, args.encoder, args.cache_dir, safety=safety)
        else:
            engine, _ = SearchEngine.build(default_gallery(), args.encoder, name="default-gallery",
                                           cache_dir=args.cache_dir, safety=safety)
        engine.rephraser_spec = args.rephraser
        examples = load_examples()
        store = VoteStore(args.data_dir, hub_repo=args.hub_repo,
                          images_quota_bytes=config.VOTE_IMAGES_QUOTA_BYTES)
    except (OSError, ValueError, ImportError) as e:  # a missing folder, a bad source, an unknown encoder, an index
        # of another encoder, an unwritable --data-dir, nudenet not installed
        raise SystemExit(f"app.py: error: {e}") from e
    log.info("serving %d images with encoder %s (%d skipped); votes in %s; safety filter %s", len(engine.gallery),
             engine.encoder.fingerprint, len(engine.skipped), store.path, "on" if safety else "off")
    note = None if (args.index or args.gallery) else DEFAULT_GALLERY_NOTE
    demo = build_ui(engine, store, args.top_k, examples, Limits(concurrency=args.concurrency), safety, note)
    demo.queue(max_size=config.QUEUE_SIZE, default_concurrency_limit=args.concurrency)
    # Only two folders are public, and both hold nothing but files written to be shown: the index's thumbnails
    # (named by digest; those of images the safety filter flagged are blocked) and the example queries.
    # Originals, index files and whatever lies beside a gallery never are.
    flagged = [str(engine.gallery.item(r).thumbnail) for r in engine.gallery.flagged_rows
               if engine.gallery.item(r).thumbnail]
    serve = {"max_file_size": config.MAX_UPLOAD_BYTES, "blocked_paths": flagged, "css": CSS, "js": BRUSH_READY,
             "allowed_paths": [str(engine.gallery.root / "thumbs"), str(ASSETS_DIR / "examples")]}
    if args.share:  # a gradio.live link serves the page and its API only (no REST routes through the tunnel)
        demo.launch(server_name=args.host, server_port=args.port, share=True, mcp_server=args.mcp, **serve)
        return
    # the REST API and the page on one server: /api/... first, the page (and its own API) at /
    app = FastAPI(title="Visual search", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.include_router(create_router(engine, RateLimiter("searches", config.SEARCHES_PER_MINUTE),
                                     check_image=refuse_unsafe(safety)))
    app = gr.mount_gradio_app(app, demo, path="/", mcp_server=args.mcp, **serve)
    print(f"* Running on local URL:  http://{args.host}:{args.port}  (REST API: /api/search, docs: /api/docs"
          f"{', MCP: /gradio_api/mcp/' if args.mcp else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def refuse_unsafe(safety: SafetyFilter | None) -> Callable | None:
    """A check that raises ValueError for an image the safety filter flags (None without a filter)."""
    if safety is None:
        return None

    def check(image: Image.Image) -> None:
        verdict = safety.check(image)
        if verdict.flagged:
            raise ValueError(f"this image was refused by the safety filter ({verdict.reason})")
    return check


def load_safety_filter():  # noqa: ANN201 (models.safety is imported only when the filter is on)
    from models.safety import DEFAULT_UNSAFE_CLASSES, SafetyFilter

    return SafetyFilter(config.SAFETY_CLASSES or DEFAULT_UNSAFE_CLASSES)


if __name__ == "__main__":
    main()
