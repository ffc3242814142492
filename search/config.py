"""Project-wide settings in one place (each overridable by an environment variable or CLI flag)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

APP_VERSION = "0.3.0"  # recorded with every vote
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENCODER = os.environ.get("VISUAL_SEARCH_ENCODER", "lite")
CACHE_DIR = Path(os.environ.get("VISUAL_SEARCH_CACHE", Path.home() / ".cache" / "visual-search"))
# votes (votes.db) and query images: data to keep, so not under the cache
DATA_DIR = Path(os.environ.get("VISUAL_SEARCH_DATA", Path.home() / ".local" / "share" / "visual-search"))
DEFAULT_TOP_K = 12
# a prebuilt index served when neither --gallery nor --index is given, e.g. hf://datasets/OWNER/NAME (docs/space.md)
DEFAULT_INDEX = os.environ.get("VISUAL_SEARCH_INDEX") or None
# searches (and "more like this") a server runs at once; the rest wait in Gradio's queue. Each search uses two
# cores (a query's two texts, or a sketch's two late passes, side by side), and searches sharing the cores also
# share the GIL, each torch call waiting for it: on 2 cores one at a time serves 16 visitors faster than 4 at once
# (benchmarks/serving.py: searches/s 0.90x vs 0.88x of a bare Gradio app, server-side p50 2.8x vs 5.3x one
# visitor's, visitors' p50 3.4 s vs 3.8 s). Votes have a pool of the same size of their own.
CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)
# query rephrasing (search/rephrase.py): "template" | "none" | "llm:PATH_OR_ID" | "http:URL"
DEFAULT_REPHRASER = os.environ.get("VISUAL_SEARCH_REPHRASER", "template")
REPHRASE_CACHE_DIR = CACHE_DIR / "rephrase"  # rephrasings.sqlite, and de-quantised GGUF models under llm/
# style words in text ("a pencil sketch of a horse"): encoder name -> its style probe (`train-style-words`)
STYLE_PROBES = {"lite": PROJECT_ROOT / "models" / "weights" / "lite_style_probe.npz"}

# ---------------------------------------------------------------- limits for a public app (app.py applies them)
PUBLIC = bool(os.environ.get("SPACE_ID"))  # on a Hugging Face Space: public-demo defaults (safety filter on)
MAX_TEXT_CHARS = 1_000            # a longer query text is refused
QUERY_MAX_SIDE = 1_024            # a query image is shrunk to this long side before it is kept or stored
SKETCH_MAX_PIXELS = 16_000_000    # a canvas (composite, background or layer) larger than 4000x4000 is refused
MAX_UPLOAD_BYTES = 20 * 1024**2   # any upload larger than this is refused by the server (HTTP 413)
QUEUE_SIZE = int(os.environ.get("VISUAL_SEARCH_QUEUE_SIZE", 64))  # requests waiting beyond this: "queue is full"
SESSION_TTL_SECONDS = 3_600       # a visitor's last comparison is forgotten after this long
CACHE_CLEANUP = (900, 3_600)      # every 15 min, delete uploads and served copies older than an hour
# per visitor (IP address and session), with a burst of the same size
SEARCHES_PER_MINUTE = int(os.environ.get("VISUAL_SEARCH_SEARCHES_PER_MINUTE", 30))
VOTES_PER_MINUTE = int(os.environ.get("VISUAL_SEARCH_VOTES_PER_MINUTE", 20))
VOTE_IMAGES_QUOTA_BYTES = int(os.environ.get("VISUAL_SEARCH_IMAGE_QUOTA", 2 * 1024**3))  # stored query images
# the safety filter's unsafe NudeNet classes, comma-separated (default: models/safety.py's exposed-nudity set)
SAFETY_CLASSES = tuple(c for c in os.environ.get("VISUAL_SEARCH_SAFETY_CLASSES", "").split(",") if c) or None


def setup_process(verbose: bool = False) -> None:
    """Process-wide settings for a server or a command, called before numpy and torch are imported.

    One BLAS/OpenMP thread per request: requests run side by side, and for one query's small products a
    thread hand-off costs more than it saves (benchmarks/app_load.py). A server draws nothing on a screen:
    matplotlib's Agg backend (finding the default one imports pyplot, ~0.5 s of the first answer).
    Library loggers that narrate their own start-up (faiss's loader) are kept quiet. A thread waiting for the
    GIL gets it within 1 ms, not 5: a query's text halves and image passes run on both cores and hand the GIL
    back and forth between their torch calls (a query and its rephrasing: 31 -> 24 ms; at 5 ms, 39 ms)."""
    sys.setswitchinterval(0.001)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MPLBACKEND", "agg")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
