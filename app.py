"""Serve visual search in the browser: `python app.py [--gallery DIR] [--encoder NAME] ...`.

Type a text, upload an image, or both, and get the gallery ranked by similarity.
The search is also an API endpoint: `gradio_client.Client(url).predict(text, image, api_name="/search")`.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import threading

import gradio as gr
from PIL import Image

from search.config import CACHE_DIR, DEFAULT_ENCODER, DEFAULT_TOP_K
from search.engine import SearchEngine
from search.gallery import default_gallery
from search.types import Hit, Query

log = logging.getLogger("app")


# ---------------------------------------------------------------- adapters: component values <-> domain objects
def to_query(text: str | None, image: Image.Image | None) -> Query:
    """Textbox + Image(type="pil") values -> a Query (ValueError "empty query: ..." if both are empty)."""
    return Query(text=text, image=image.convert("RGB") if image is not None else None)


def to_gallery(hits: list[Hit]) -> list[tuple[str, str]]:
    """Hits -> gr.Gallery value: (image file, "caption-or-id · score") in rank order."""
    return [(str(h.item.path), f"{h.item.caption or h.item.id} · {h.score:.3f}") for h in hits]


# ---------------------------------------------------------------- UI
def build_ui(engine: SearchEngine, top_k: int = DEFAULT_TOP_K) -> gr.Blocks:
    """One query panel and one ranked gallery (more rankings can go beside `results` later)."""
    warm_up_once = functools.cache(lambda: threading.Thread(target=engine.encoder.warm_up, daemon=True).start())
    with gr.Blocks(title="Visual search", analytics_enabled=False) as demo:
        gr.Markdown(f"# Visual search\n{len(engine.gallery)} images · encoder `{engine.encoder.name}`. "
                    "Type a description, upload an image, or both.")
        with gr.Row():
            with gr.Column(scale=1):
                text = gr.Textbox(label="Text query", placeholder="e.g. a cat", lines=1)
                image = gr.Image(label="Image query", type="pil", sources=["upload", "clipboard"])
                button = gr.Button("Search", variant="primary")
            with gr.Column(scale=3):
                results = gr.Gallery(label="Results", columns=4, object_fit="contain", height="auto")

        def search(text: str | None = None, image: Image.Image | None = None) -> list[tuple[str, str]]:
            try:
                query = to_query(text, image)
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e
            hits = engine.search(query, k=top_k)
            warm_up_once()  # the first answer went out without waiting for it; now load the rest
            log.info("query text=%r image=%s -> %d hits", query.text, query.image is not None, len(hits))
            return to_gallery(hits)

        gr.on([button.click, text.submit], search, inputs=[text, image], outputs=results, api_name="search")
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
    add("--top-k", metavar="K", type=int, default=DEFAULT_TOP_K, help="results shown (default %(default)s)")
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
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
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
    except (OSError, ValueError) as e:  # missing folder, bad source, unknown encoder, index of another encoder
        raise SystemExit(f"app.py: error: {e}") from e
    log.info("serving %d images with encoder %s (%d skipped)", len(engine.gallery), engine.encoder.fingerprint,
             len(engine.skipped))
    build_ui(engine, args.top_k).launch(server_name=args.host, server_port=args.port, share=args.share,
                                        allowed_paths=engine.gallery.folders())  # Gradio serves only these


if __name__ == "__main__":
    main()
