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
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

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
from PIL import Image  # noqa: E402

from search.config import APP_VERSION, CACHE_DIR, DATA_DIR, DEFAULT_ENCODER, DEFAULT_TOP_K  # noqa: E402
from search.engine import Comparison, SearchEngine  # noqa: E402
from search.examples import make_examples  # noqa: E402
from search.gallery import default_gallery  # noqa: E402
from search.images import ImageLoadError, load_image  # noqa: E402
from search.rankings import RankSettings  # noqa: E402
from search.types import Hit, Query  # noqa: E402
from search.votes import CHOICES, RankedId, Vote, VoteStore  # noqa: E402

if __name__ == "__main__":  # imported: later collections need not scan these modules' objects again
    gc.freeze()
    gc.enable()

log = logging.getLogger("app")
# After the first answer, the encoder loads what it loads lazily (the image tower: ~3 s of imports) this long
# later: started at once, it held the GIL while that answer and its images were being sent (+0.5-5 s).
WARM_UP_DELAY = 2.0
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
CONSENT = ("Votes are stored to improve the aligned ranking: the query (text, or the image you drew or "
           "uploaded), both rankings and your choice, with an anonymous session id and nothing else.")


# ---------------------------------------------------------------- adapters: component values <-> domain objects
@dataclass
class Shown:
    """What one session was shown for its last query (kept in gr.State until the vote)."""

    comparison: Comparison
    baseline_side: str                       # "A" or "B", hidden until the vote
    settings: dict                           # as searched
    voted: str | None = None                 # the choice, once voted
    vote_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def side(self, name: str) -> tuple[Hit, ...]:
        c = self.comparison
        return c.baseline if (name == self.baseline_side) else c.aligned


def sketch_image(value: dict | None) -> Image.Image | None:
    """Sketchpad value -> its RGBA composite flattened onto white, or None if nothing was drawn."""
    composite = (value or {}).get("composite")
    if composite is None:
        return None
    rgba = composite.convert("RGBA")
    if rgba.getchannel("A").getextrema()[1] == 0:  # fully transparent: an untouched canvas
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def upload_image(path: str | None) -> Image.Image | None:
    """An uploaded file, opened defensively (ImageLoadError says why a file cannot be used)."""
    if not path:
        return None
    try:
        return load_image(path)
    except ImageLoadError as e:  # name the visitor's file, not the server's temporary copy of it
        raise ImageLoadError(Path(path).name, e.reason) from e


class ImageUpload(gr.Image):
    """gr.Image whose undecodable upload is a clear message (Gradio's own check raises a generic error)."""

    is_template = True  # drawn by gr.Image's front end

    def preprocess(self, payload):  # noqa: ANN001, ANN201 (gr.Image's signature)
        try:
            return super().preprocess(payload)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            name = Path(getattr(payload, "orig_name", None) or "the upload").name
            reason = str(e) if isinstance(e, Image.DecompressionBombError) else "not a readable image"
            raise gr.Error(f"{name}: {reason}", print_exception=False) from e


def to_query(text: str | None, sketch: dict | None, upload: str | None, source: str, text_weight: float) -> Query:
    """Component values -> a Query. `source` is the image tab in use ("Sketch" or "Upload")."""
    drawn, uploaded = sketch_image(sketch), upload_image(upload)
    image = drawn if source == "Sketch" else uploaded
    image = image or drawn or uploaded
    if image is None and not (text or "").strip() and source == "Sketch" and sketch is not None:
        raise ValueError("the canvas is blank: draw something, type a text, or upload an image")
    return Query(text=text, image=image, text_weight=text_weight)


def caption(hit: Hit, show_scores: bool) -> str:
    label = hit.item.caption or hit.item.label or hit.item.id
    if not show_scores:
        return label
    rel = hit.score if hit.relevance is None else hit.relevance
    aes = "–" if hit.item.aesthetic is None else f"{hit.item.aesthetic:.2f}"
    return f"{label} · relevance {rel:.3f} · aesthetic {aes}"


def to_gallery(hits: tuple[Hit, ...], show_scores: bool) -> list[tuple[str, str]]:
    """Hits -> gr.Gallery value: (image file, caption) in rank order (thumbnails where indexed)."""
    return [(str(h.item.thumbnail or h.item.path), caption(h, show_scores)) for h in hits]


def describe(shown: Shown) -> str:
    c = shown.comparison
    parts = [f"**Query style:** {c.style}" if c.style else "**Query:** text"]
    if c.rephrasing is not None:
        parts.append(f"**Rephrased:** {c.rephrasing.rephrased} _({c.rephrasing.source})_")
    parts.append(f"{len(c.baseline)} results per side in {c.seconds * 1000:.0f} ms")
    return " · ".join(parts)


def to_vote(shown: Shown, choice: str, session: str, image_hash: str | None, engine: SearchEngine) -> Vote:
    c = shown.comparison

    def ranked(hits: tuple[Hit, ...]) -> tuple[RankedId, ...]:
        return tuple(RankedId(h.item.id, h.score, h.item.aesthetic) for h in hits)

    return Vote(shown.vote_id, time.time(), session, c.query.text, image_hash,
                c.rephrasing.rephrased if c.rephrasing else None, c.style, ranked(shown.side("A")),
                ranked(shown.side("B")), shown.baseline_side, choice, APP_VERSION, engine.encoder.fingerprint,
                f"{engine.gallery.meta.fingerprint}/{engine.gallery.meta.snapshot}", shown.settings)


# ---------------------------------------------------------------- UI
def build_ui(engine: SearchEngine, store: VoteStore, top_k: int = DEFAULT_TOP_K,
             examples_dir: str | os.PathLike | None = None) -> gr.Blocks:
    @functools.cache
    def warm_up_once() -> None:
        timer = threading.Timer(WARM_UP_DELAY, engine.encoder.warm_up)
        timer.daemon = True
        timer.start()

    side_of = random.SystemRandom()
    with gr.Blocks(title="Visual search", analytics_enabled=False) as demo:
        gr.Markdown(f"# Visual search\nFind images with words, a sketch, an artwork or a blurry photo · "
                    f"{len(engine.gallery)} images · encoder `{engine.encoder.name}`. Two rankings appear side by "
                    "side in a random order: vote for the better one to see which was which.")
        shown = gr.State(None)
        image_source = gr.State("Sketch")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                text = gr.Textbox(label="Text", placeholder="e.g. a cat on a sofa", lines=1, max_lines=3)
                with gr.Tabs():
                    with gr.Tab("Sketch") as sketch_tab:
                        sketch = gr.Sketchpad(label="Draw", type="pil", canvas_size=(512, 512), height=360,
                                              layers=False, brush=gr.Brush(default_size=3, colors=["#000000"],
                                                                           color_mode="fixed"))
                    with gr.Tab("Upload") as upload_tab:
                        upload = ImageUpload(label="Image (artwork, low-res or photo)", type="filepath",
                                             image_mode=None, sources=["upload", "clipboard"], height=360)
                text_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Text weight",
                                        info="with a sketch or image plus text: the text's share of the query")
                search_btn = gr.Button("Search", variant="primary")
                with gr.Accordion("Settings", open=False):
                    k = gr.Slider(1, 48, value=top_k, step=1, label="Results per side")
                    aesthetic_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Aesthetic weight",
                                                 info="share of beauty vs relevance in the aligned ranking")
                    rephrase = gr.Checkbox(True, label="Rephrase the query for the aligned ranking")
                    dedup = gr.Checkbox(True, label="Remove near-duplicates from the aligned ranking")
                    show_scores = gr.Checkbox(False, label="Show relevance and aesthetic scores")
            with gr.Column(scale=5):
                with gr.Row():
                    gallery_a = gr.Gallery(label="A", columns=4, height=520, object_fit="cover",
                                           interactive=False, allow_preview=False)
                    gallery_b = gr.Gallery(label="B", columns=4, height=520, object_fit="cover",
                                           interactive=False, allow_preview=False)
                info = gr.Markdown("Ask something to see two rankings. Click a result to search for more like it.")
                with gr.Row():
                    vote_btns = {c: gr.Button(CHOICE_LABELS[c], variant="secondary", interactive=False)
                                 for c in CHOICES}
                consent = gr.Checkbox(False, label="I agree that my votes are stored", info=CONSENT)
                reveal = gr.Markdown()
        picked = gr.Textbox(visible=False)  # the id of a clicked result, for "more like this"

        if examples_dir is not None:
            examples = make_examples(engine.items, examples_dir)
            # two blocks: text alone renders as compact chips, images (with their text, if any) as a table
            gr.Examples([[e.text] for e in examples if e.image is None], [text], label="Example texts")
            gr.Examples([[str(e.image), e.text or ""] for e in examples if e.image is not None], [upload, text],
                        label="Example images: an edge-map sketch and a low-res copy of gallery photos, "
                              "a sketch with text")

        # ------------------------------------------------------------ handlers (short; logic lives in search/)
        def answer(query: Query, settings: dict):
            comparison = engine.compare(query, RankSettings(k=settings["k"],
                                                            aesthetic_weight=settings["aesthetic_weight"],
                                                            dedup=settings["dedup"]),
                                        rephrase=settings["rephrase"])
            warm_up_once()  # the first answer went out without waiting for it; now load the rest
            state = Shown(comparison, side_of.choice("AB"), settings)
            log.info("query text=%r image=%s style=%s -> %d+%d hits in %.0f ms", query.text, query.image is not None,
                     comparison.style, len(comparison.baseline), len(comparison.aligned), comparison.seconds * 1e3)
            buttons = [gr.Button(interactive=True) for _ in CHOICES]
            return (to_gallery(state.side("A"), settings["show_scores"]),
                    to_gallery(state.side("B"), settings["show_scores"]), describe(state), state, "", *buttons)

        def search(text: str, sketch: dict | None, upload: str | None, source: str, text_weight: float, k: int,
                   aesthetic_weight: float, rephrase: bool, dedup: bool, show_scores: bool):
            try:
                query = to_query(text, sketch, upload, source, text_weight)
            except (ValueError, ImageLoadError) as e:
                raise gr.Error(str(e), print_exception=False) from e
            settings = {"k": int(k), "aesthetic_weight": float(aesthetic_weight), "rephrase": bool(rephrase),
                        "dedup": bool(dedup), "show_scores": bool(show_scores), "text_weight": float(text_weight)}
            try:
                return answer(query, settings)
            except ValueError as e:  # a blank or uniform image: no style or content to search with
                raise gr.Error(str(e), print_exception=False) from e

        def more_like_this(item_id: str, k: int, aesthetic_weight: float, rephrase: bool, dedup: bool,
                           show_scores: bool):
            row = engine.gallery.row_of(item_id)
            if row is None:
                raise gr.Error(f"no gallery image with id {item_id!r}", print_exception=False)
            query = Query(image=load_image(engine.gallery.item(row).path))
            settings = {"k": int(k), "aesthetic_weight": float(aesthetic_weight), "rephrase": bool(rephrase),
                        "dedup": bool(dedup), "show_scores": bool(show_scores), "more_like": item_id}
            return answer(query, settings)

        def pick(state: Shown | None, side: str, evt: gr.SelectData) -> str:
            if state is None:
                raise gr.Error("search first", print_exception=False)
            return state.side(side)[evt.index].item.id

        def vote(choice: str, state: Shown | None, agreed: bool, request: gr.Request = None) -> tuple:
            if choice not in CHOICES:
                raise gr.Error(f"unknown choice {choice!r}; expected one of {', '.join(CHOICES)}",
                               print_exception=False)
            if state is None:
                raise gr.Error("search first, then vote for the better side", print_exception=False)
            if not agreed:
                raise gr.Error("tick \"I agree that my votes are stored\" to vote", print_exception=False)
            if state.voted is None:
                q = state.comparison.query
                image_hash = store.save_query_image(q.image) if q.image is not None else None
                session = getattr(request, "session_hash", None) or "api"
                store.record(to_vote(state, choice, session, image_hash, engine))
                state.voted = choice
            aligned = "B" if state.baseline_side == "A" else "A"
            text = (f"Thanks! **{state.baseline_side}** was the baseline ranking and **{aligned}** the "
                    f"aesthetically-aligned one. You chose: {CHOICE_LABELS[state.voted]}.")
            return text, state, *[gr.Button(interactive=False) for _ in CHOICES]

        def rerender(state: Shown | None, show: bool):
            if state is None:
                return [], []
            return to_gallery(state.side("A"), show), to_gallery(state.side("B"), show)

        # ------------------------------------------------------------ wiring
        settings_in = [k, aesthetic_weight, rephrase, dedup, show_scores]
        outputs = [gallery_a, gallery_b, info, shown, reveal, *vote_btns.values()]
        sketch_tab.select(lambda: "Sketch", None, image_source, api_name=False)
        upload_tab.select(lambda: "Upload", None, image_source, api_name=False)
        upload.change(lambda v: "Upload" if v else "Sketch", upload, image_source, api_name=False)
        # progress and a bad input's error show on the info line only: the galleries keep their results
        gr.on([search_btn.click, text.submit], search, [text, sketch, upload, image_source, text_weight, *settings_in],
              outputs, api_name="search", show_progress_on=info)
        # API-only endpoints are hidden buttons, so they share the session's state with /search
        more_btn, vote_btn, choice = gr.Button(visible=False), gr.Button(visible=False), gr.Textbox(visible=False)
        more_btn.click(more_like_this, [picked, *settings_in], outputs, api_name="more_like_this",
                       show_progress_on=info)
        for side, g in (("A", gallery_a), ("B", gallery_b)):
            def pick_on(state: Shown | None, evt: gr.SelectData, side: str = side) -> str:
                return pick(state, side, evt)  # a def, not functools.partial: Gradio finds evt by its type hint

            g.select(pick_on, shown, picked, api_name=False).then(
                more_like_this, [picked, *settings_in], outputs, api_name=False, show_progress_on=info)
        vote_io = ([choice, shown, consent], [reveal, shown, *vote_btns.values()])
        vote_btn.click(vote, *vote_io, api_name="vote")
        for c, btn in vote_btns.items():
            btn.click(lambda c=c: c, None, choice, api_name=False).then(vote, *vote_io, api_name=False)
        show_scores.change(rerender, [shown, show_scores], [gallery_a, gallery_b], api_name=False)
    return demo


# ---------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--gallery", metavar="SOURCE",
        help="index a folder (recursive), a .jsonl/.csv manifest or a .zip of images (default: built-in photos)")
    add("--index", metavar="DIR", help="serve an index directory built by `python -m search index`")
    add("--encoder", metavar="NAME", help=f"encoder name (default {DEFAULT_ENCODER}; with --index, the index's own)")
    add("--cache-dir", metavar="DIR", default=str(CACHE_DIR),
        help="where --gallery and the built-in photos are indexed (default %(default)s)")
    add("--data-dir", metavar="DIR", default=str(DATA_DIR),
        help="where votes (votes.db) and voted query images are kept (default %(default)s; env VISUAL_SEARCH_DATA)")
    add("--hub-repo", metavar="ID", default=os.environ.get("VOTES_DATASET_REPO"),
        help="also sync votes to this Hugging Face dataset repo (needs HF_TOKEN; env VOTES_DATASET_REPO)")
    add("--rephraser", default=os.environ.get("VISUAL_SEARCH_REPHRASER", "template"),
        help="query rephraser: template, none, llm:PATH_OR_ID or http:URL (default %(default)s)")
    add("--top-k", metavar="K", type=int, default=DEFAULT_TOP_K, help="results per side (default %(default)s)")
    add("--concurrency", type=int, default=4, help="searches served in parallel (default %(default)s)")
    add("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on (default %(default)s; env GRADIO_SERVER_NAME)")
    add("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port to serve on (default %(default)s; env GRADIO_SERVER_PORT)")
    add("--share", action="store_true", help="also serve through a public gradio.live link")
    add("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.gallery and args.index:
        parser.error("give --gallery or --index, not both")
    if not args.index:
        args.encoder = args.encoder or DEFAULT_ENCODER
    if args.top_k < 1 or args.concurrency < 1:
        parser.error("--top-k and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.index:
            engine = SearchEngine.open(args.index, args.encoder)
        elif args.gallery:
            engine, _ = SearchEngine.from_source(args.gallery, args.encoder, args.cache_dir)
        else:
            engine, _ = SearchEngine.build(default_gallery(), args.encoder, name="default-gallery",
                                           cache_dir=args.cache_dir)
        engine.rephraser_spec = args.rephraser
        store = VoteStore(args.data_dir, hub_repo=args.hub_repo)
    except (OSError, ValueError) as e:  # missing folder, bad source, unknown encoder, index of another encoder
        raise SystemExit(f"app.py: error: {e}") from e
    log.info("serving %d images with encoder %s (%d skipped); votes in %s", len(engine.gallery),
             engine.encoder.fingerprint, len(engine.skipped), store.path)
    examples_dir = os.path.join(args.cache_dir, "examples") if not (args.index or args.gallery) else None
    demo = build_ui(engine, store, args.top_k, examples_dir)
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                allowed_paths=[*engine.gallery.folders(), *([examples_dir] if examples_dir else [])])


if __name__ == "__main__":
    main()
