"""The page: layout first, then the wiring of its events to short handlers (ui/handlers.py)."""
from __future__ import annotations

import gradio as gr

from models.style import STYLES
from search import config
from search.engine import SearchEngine
from search.votes.report import LiveResults
from search.votes.store import CHOICES, VoteStore

from .adapters import ANY_STYLE, CHOICE_LABELS, Shown, has_styles
from .components import ImageUpload, Sketchpad
from .handlers import Handlers, Limits, guarded

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
CONSENT = ("Votes are stored to improve the aligned ranking: the query (text, or the image you drew or "
           "uploaded), both rankings and your choice, with an anonymous session id and nothing else.")




def build_ui(engine: SearchEngine, store: VoteStore, top_k: int = config.DEFAULT_TOP_K,
             examples: list | None = None, limits: Limits | None = None, refuse=None,  # noqa: ANN001
             note: str | None = None, arena=None, engines=None) -> gr.Blocks:  # noqa: ANN001
    """The page. `examples`: search.examples.ExampleQuery list; `refuse(image)`: raises ValueError for an
    image the safety filter flags; `note`: a last sentence for the header; `arena`, `engines`: see Handlers.
    Launch with `css=CSS, js=BRUSH_READY`."""
    limits = limits or Limits()
    h = Handlers(engine, store, limits, refuse, arena, engines)
    pair = (f"two of {len(arena)} systems ({', '.join(f'`{s}`' for s in arena)})" if arena else
            "the plain one and the aesthetically-aligned one")
    with gr.Blocks(title="Visual search", analytics_enabled=False, delete_cache=config.CACHE_CLEANUP) as demo:
        gr.Markdown(f"# Visual search\nFind images with words, a sketch, an artwork or a blurry photo in "
                    f"{len(engine.gallery):,} images (encoder `{engine.encoder.name}`). Two rankings appear side by "
                    f"side in a random order, {pair}: vote for the better side to see which was which."
                    f"{' ' + note if note else ''}", elem_id="header")
        shown = gr.State(None, time_to_live=config.SESSION_TTL_SECONDS)
        image_source = gr.State("Sketch")
        with gr.Tabs():
            with gr.Tab("Search"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2, min_width=320):
                        text = gr.Textbox(label="Text", placeholder="e.g. a cat on a sofa", lines=1, max_lines=3,
                                          max_length=config.MAX_TEXT_CHARS)
                        with gr.Tabs() as image_tabs:
                            with gr.Tab("Sketch", id="Sketch") as sketch_tab:
                                sketch = Sketchpad(label="Draw", type="pil", canvas_size=(512, 512), height=260,
                                                   layers=False, elem_id="sketchpad",
                                                   brush=gr.Brush(default_size=4, colors=["#000000"],
                                                              color_mode="fixed"))
                            with gr.Tab("Upload", id="Upload") as upload_tab:
                                upload = ImageUpload(label="Image (artwork, low-res or photo)", type="filepath",
                                                     image_mode=None, sources=["upload", "clipboard"], height=260)
                        search_btn = gr.Button("Search", variant="primary")
                        if examples:
                            pictures = [e for e in examples if e.image is not None]
                            gr.Examples([[e.text] for e in examples if e.image is None], [text], label="Try a text")
                            gr.Examples([[str(e.image)] for e in pictures if not e.text], [upload],
                                    examples_per_page=12,
                                        label="… a picture (drawings, a painting-like photo, a low-res photo)")
                            with_text = [e for e in pictures if e.text]
                            gr.Examples([[str(e.image), e.text] for e in with_text], [upload, text],
                                        example_labels=[e.caption for e in with_text],
                                        label="… or a drawing with words")
                        with gr.Accordion("Settings", open=False):
                            text_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Text weight",
                                                    info="with a sketch or image plus text: the text's share")
                            k = gr.Slider(1, 48, value=top_k, step=1, label="Results per side")
                            aesthetic_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Aesthetic weight",
                                                         info="share of beauty vs relevance in the aligned ranking")
                            rephrase = gr.Checkbox(True, label="Rephrase the query for the aligned ranking")
                            dedup = gr.Checkbox(True, label="Remove near-duplicates from the aligned ranking")
                            show_scores = gr.Checkbox(False, label="Show relevance and aesthetic scores",
                                                      info="relevance: cosine similarity to the query (-1 to 1); "
                                                           "aesthetic: percentile among this gallery's images")
                            # filters (both sides): shown when the index holds what they read
                            min_look = gr.Slider(0, 90, value=0, step=10, label="Only images that look at least",
                                                 info="this aesthetic percentile of the gallery (0: every image)",
                                                 visible=len(h.scores) > 1)
                            style_only = gr.Dropdown([ANY_STYLE, *STYLES], value=ANY_STYLE, label="Only this style",
                                                     info="the style detected when the images were indexed",
                                                     visible=has_styles(engine))
                    with gr.Column(scale=5):
                        with gr.Row():
                            gallery_a, gallery_b = (
                                gr.Gallery(label=side, columns=3, height=440, object_fit="cover", interactive=False,
                                           allow_preview=False, elem_classes="side") for side in "AB")
                        info = gr.Markdown("Ask something to see two rankings. "
                                           "Click a result to search for more like it.")
                        with gr.Row():
                            vote_btns = {c: gr.Button(CHOICE_LABELS[c], variant="secondary", interactive=False)
                                         for c in CHOICES}
                        consent = gr.Checkbox(False, label="I agree that my votes are stored")
                        gr.Markdown(CONSENT, elem_id="consent")
                        reveal = gr.Markdown()
            with gr.Tab("Results") as results_tab:
                results_md = gr.Markdown("What the votes say appears here.")
                results_plots = gr.Gallery(label="Plots", columns=2, height="auto", allow_preview=True,
                                           object_fit="contain", interactive=False)

        picked = gr.Textbox(visible=False)  # the id of a clicked result, for "more like this"

        # ------------------------------------------------------------ wiring
        settings_in = [k, aesthetic_weight, rephrase, dedup, show_scores, min_look, style_only]
        outputs = [gallery_a, gallery_b, info, shown, reveal, *vote_btns.values()]
        # search and more like this share one pool of workers (together they never run more than this); votes,
        # a few ms of SQLite each, have their own, so that a vote never waits behind searches
        heavy = {"concurrency_id": "heavy", "concurrency_limit": limits.concurrency}
        votes = {"concurrency_id": "votes", "concurrency_limit": limits.concurrency}
        search, more_like_this = guarded(h.search, limits.searches), guarded(h.more_like_this, limits.searches)
        vote = guarded(h.vote, limits.votes)
        sketch_tab.select(lambda: "Sketch", None, image_source, api_name=False)
        upload_tab.select(lambda: "Upload", None, image_source, api_name=False)
        upload.change(lambda v: ("Upload", gr.Tabs(selected="Upload")) if v else ("Sketch", gr.Tabs()), upload,
                      [image_source, image_tabs], api_name=False)
        # progress and a bad input's error show on the info line only: the galleries keep their results
        gr.on([search_btn.click, text.submit], search,
              [text, sketch, upload, image_source, text_weight, *settings_in, shown], outputs, api_name="search",
              show_progress_on=info, **heavy)
        # API-only endpoints are hidden buttons, so they share the session's state with /search
        more_btn, vote_btn, choice = gr.Button(visible=False), gr.Button(visible=False), gr.Textbox(visible=False)
        more_btn.click(more_like_this, [picked, *settings_in, shown], outputs, api_name="more_like_this",
                       show_progress_on=info, **heavy)
        for side, g in (("A", gallery_a), ("B", gallery_b)):
            def pick(state: Shown | None, evt: gr.SelectData, side: str = side) -> str:
                if state is None:  # a def, not functools.partial: Gradio finds evt by its type hint
                    raise gr.Error("search first", print_exception=False)
                return state.side(side)[evt.index].item.id

            g.select(pick, shown, picked, api_name=False).then(
                more_like_this, [picked, *settings_in, shown], outputs, api_name=False, show_progress_on=info,
                **heavy)
        vote_io = ([choice, shown, consent], [reveal, shown, *vote_btns.values()])
        # a vote is callable by gradio_client (positional arguments) but left out of the API docs
        vote_btn.click(vote, *vote_io, api_name="vote", api_visibility="undocumented", **votes)
        for c, btn in vote_btns.items():
            btn.click(lambda c=c: c, None, choice, api_name=False).then(vote, *vote_io, api_name=False, **votes)
        show_scores.change(h.galleries, [shown, show_scores], [gallery_a, gallery_b], api_name=False)
        live = LiveResults(store.votes, store.count, ttl=5.0)  # read from the store, recomputed at most every 5 s
        results_tab.select(live.get, None, [results_md, results_plots], api_name="results", concurrency_limit=1)
        gr.api(guarded(h.find_images, limits.searches), api_name="find_images", **heavy)
    return demo


def build_tools(engine: SearchEngine, limits: Limits, refuse=None) -> gr.Blocks:  # noqa: ANN001
    """The tools an agent sees over MCP: the search alone (the page's endpoints take its state and widgets,
    and votes are a person's to give)."""
    h = Handlers(engine, None, limits, refuse)
    with gr.Blocks(title="Visual search tools", analytics_enabled=False) as tools:
        gr.api(guarded(h.find_images, limits.searches), api_name="find_images",
               concurrency_id="heavy", concurrency_limit=limits.concurrency)
    return tools
