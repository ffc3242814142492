"""Visual search in the browser: `python app.py [--gallery SOURCE | --index DIR] [--encoder NAME] ...`.

Ask with a text, a sketch, an image (artwork, low-res or photo) or a sketch/image plus text. Two rankings
of the gallery appear side by side, A and B: the plain baseline and the aesthetically-aligned one, in a
random, hidden order. Vote for the better side; votes are stored (SQLite under --data-dir) as training data.
Beside the page: a REST API (/api/search, docs at /api/docs) and, with --mcp, an MCP tool.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os

from search import config

log = logging.getLogger("app")
DEFAULT_GALLERY_NOTE = ("This is the built-in sample of package photos: serve your own with "
                        "`python app.py --gallery FOLDER` (or a .zip, a manifest, a Hugging Face dataset).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--gallery", metavar="SOURCE",
        help="index a folder (recursive), a .jsonl/.csv manifest, a .zip of images or a Hugging Face dataset "
             "(hf://datasets/OWNER/NAME[:SPLIT]); default: built-in photos")
    add("--index", metavar="DIR",
        help="serve an index directory built by `python -m search index`, or a Hub dataset repo holding one: "
             "hf://datasets/OWNER/NAME (default: env VISUAL_SEARCH_INDEX, else the built-in photos)")
    add("--encoder", metavar="NAME",
        help=f"encoder name (default {config.DEFAULT_ENCODER}; with --index, the index's own)")
    add("--cache-dir", metavar="DIR", default=str(config.CACHE_DIR),
        help="where --gallery and the built-in photos are indexed (default %(default)s)")
    add("--data-dir", metavar="DIR", default=str(config.DATA_DIR),
        help="where votes (votes.db) and voted query images are kept (default %(default)s; env VISUAL_SEARCH_DATA)")
    add("--hub-repo", metavar="ID", default=os.environ.get("VOTES_DATASET_REPO"),
        help="also sync votes to this Hugging Face dataset repo (needs HF_TOKEN; env VOTES_DATASET_REPO)")
    add("--rephraser", default=config.DEFAULT_REPHRASER,
        help="query rephraser: template, none, llm:PATH_OR_ID or http:URL (default %(default)s)")
    add("--top-k", metavar="K", type=int, default=config.DEFAULT_TOP_K, help="results per side (default %(default)s)")
    add("--concurrency", type=int, default=config.CONCURRENCY, help="searches served in parallel (default %(default)s)")
    add("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to serve on (default %(default)s; env GRADIO_SERVER_NAME)")
    add("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port to serve on (default %(default)s; env GRADIO_SERVER_PORT)")
    add("--share", action="store_true", help="also serve through a public gradio.live link (page and Gradio API only)")
    add("--mcp", action="store_true",
        help="also serve the search as an MCP tool (find_images) at /agent/gradio_api/mcp/")
    add("--public", action="store_true", default=config.PUBLIC,
        help="public-demo defaults: the safety filter on (default on a Hugging Face Space, where SPACE_ID is set)")
    add("--safety", choices=["auto", "on", "off"], default="auto",
        help="refuse unsafe query images and hide unsafe gallery images (NudeNet); auto: on with --public")
    add("--arena", metavar="SYSTEMS", default=os.environ.get("VISUAL_SEARCH_ARENA"),
        help="blind votes between any two of these systems, ENCODER:RANKING[:KEY=VALUE...] comma-separated, e.g. "
             "lite:baseline,lite:aligned,lite-aligned:baseline (default: baseline vs aligned; env VISUAL_SEARCH_ARENA)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.gallery and args.index:
        parser.error("give --gallery or --index, not both")
    if not args.gallery and not args.index:
        args.index = config.DEFAULT_INDEX
    if not args.index:
        args.encoder = args.encoder or config.DEFAULT_ENCODER
    if args.top_k < 1 or args.concurrency < 1:
        parser.error("--top-k and --concurrency must be >= 1")
    args.systems = None
    if args.arena:
        from search.votes.arena import parse_arena

        try:
            args.systems = parse_arena(args.arena)
        except ValueError as e:
            parser.error(f"--arena: {e}")
        encoders = list(dict.fromkeys(s.encoder for s in args.systems))
        if args.index and len(encoders) > 1:  # an index holds one encoder's vectors; a gallery can be re-indexed
            parser.error(f"--arena names {len(encoders)} encoders ({', '.join(encoders)}): serve a --gallery (or the "
                         "built-in photos), which each encoder indexes, not one --index")
        args.encoder = args.encoder or encoders[0]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # before the heavy imports: --help and bad arguments answer at once
    config.setup_process(verbose=args.verbose)
    # Importing gradio and torch creates ~0.5M objects that live as long as the process: the cyclic GC would
    # scan them ~10 times while they load (~1 s); they are frozen once imported.
    gc.disable()
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from search.api import LimitBody, create_router
    from search.engine import SearchEngine
    from search.examples import ASSETS_DIR, load_examples
    from search.index.sources import default_gallery
    from search.limits import RateLimiter
    from search.votes.arena import engines_for
    from search.votes.store import VoteStore, check_writable
    from ui import BRUSH_READY, CSS, Limits, build_tools, build_ui
    gc.freeze()
    gc.enable()

    try:
        check_writable(args.data_dir)  # an unwritable --data-dir stops the app before the slow part
        safety = load_safety_filter() if args.safety == "on" or (args.safety == "auto" and args.public) else None
        def open_engine(encoder: str | None) -> SearchEngine:
            if args.index:
                return SearchEngine.open(args.index, encoder, rephraser=args.rephraser)
            if args.gallery:
                return SearchEngine.from_source(args.gallery, encoder, args.cache_dir, safety=safety,
                                                rephraser=args.rephraser)[0]
            return SearchEngine.build(default_gallery(), encoder, name="default-gallery", cache_dir=args.cache_dir,
                                      safety=safety, rephraser=args.rephraser)[0]

        engine = open_engine(args.encoder)
        # the arena: one engine per encoder it names (the first is the one above: REST, MCP, "more like this")
        engines = engines_for(args.systems, lambda name: engine if name == engine.encoder.name else open_engine(name)) \
            if args.systems else {engine.encoder.name: engine}
        store = VoteStore(args.data_dir, hub_repo=args.hub_repo, images_quota_bytes=config.VOTE_IMAGES_QUOTA_BYTES)
    except (OSError, ValueError, ImportError) as e:  # a missing folder, a bad source, an unknown encoder, an index
        # of another encoder, an unwritable --data-dir, nudenet not installed
        raise SystemExit(f"app.py: error: {e}") from e
    log.info("serving %d images with encoder %s (%d skipped); votes in %s; safety filter %s", len(engine.gallery),
             engine.encoder.fingerprint, len(engine.skipped), store.path, "on" if safety else "off")
    refuse = safety.refuse if safety else None
    note = None if (args.index or args.gallery) else DEFAULT_GALLERY_NOTE
    demo = build_ui(engine, store, args.top_k, load_examples(), Limits(concurrency=args.concurrency), refuse, note,
                    args.systems, engines)
    demo.queue(max_size=config.QUEUE_SIZE, default_concurrency_limit=args.concurrency)
    # Only two folders are public, and both hold nothing but files written to be shown: the index's thumbnails
    # (named by digest; those of images the safety filter flagged are blocked) and the example queries.
    # Originals, index files and whatever lies beside a gallery never are.
    galleries = [e.gallery for e in engines.values()]
    flagged = [str(g.item(r).thumbnail) for g in galleries for r in g.flagged_rows if g.item(r).thumbnail]
    thumbs = [str(g.root / "thumbs") for g in galleries]
    serve = {"max_file_size": config.MAX_UPLOAD_BYTES, "blocked_paths": flagged, "css": CSS, "js": BRUSH_READY,
             "allowed_paths": [*thumbs, str(ASSETS_DIR / "examples")]}
    # thumbnails are served where they are, not hashed and copied into Gradio's cache with every answer (blocked
    # paths are still checked first)
    gr.set_static_paths(thumbs)
    if args.share:  # a gradio.live link serves the page and its API only (no REST routes through the tunnel)
        demo.launch(server_name=args.host, server_port=args.port, share=True, **serve)
        return
    # the REST API and the page on one server: /api/... first, the page (and its own API) at /
    app = FastAPI(title="Visual search", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.add_middleware(LimitBody)
    app.include_router(create_router(engine, RateLimiter("searches", config.SEARCHES_PER_MINUTE), refuse,
                                     args.concurrency))
    limits = Limits(concurrency=args.concurrency)
    if args.mcp:  # its own small app, so that the tool list holds the search alone
        app = gr.mount_gradio_app(app, build_tools(engine, limits, refuse), path="/agent", mcp_server=True)
    app = gr.mount_gradio_app(app, demo, path="/", **serve)
    print(f"* Running on local URL:  http://{args.host}:{args.port}  (REST API: /api/search, docs: /api/docs"
          f"{', MCP: /agent/gradio_api/mcp/' if args.mcp else ''})", flush=True)
    # an open page keeps a stream open: stopping waits for streams this long at most, not until visitors leave
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3)


def load_safety_filter():  # noqa: ANN201 (models.safety is imported only when the filter is on)
    from models.safety import DEFAULT_UNSAFE_CLASSES, SafetyFilter

    return SafetyFilter(config.SAFETY_CLASSES or DEFAULT_UNSAFE_CLASSES)


if __name__ == "__main__":
    main()
