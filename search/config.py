"""Project-wide settings in one place (each overridable by an environment variable or CLI flag)."""
from __future__ import annotations

import os
from pathlib import Path

APP_VERSION = "0.2.0"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENCODER = os.environ.get("VISUAL_SEARCH_ENCODER", "lite")
CACHE_DIR = Path(os.environ.get("VISUAL_SEARCH_CACHE", Path.home() / ".cache" / "visual-search"))
# votes (votes.db) and query images: data to keep, so not under the cache
DATA_DIR = Path(os.environ.get("VISUAL_SEARCH_DATA", Path.home() / ".local" / "share" / "visual-search"))
DEFAULT_TOP_K = 12
# query rephrasing (search/rephrase.py): "template" | "none" | "llm:PATH_OR_ID" | "http:URL"
DEFAULT_REPHRASER = os.environ.get("VISUAL_SEARCH_REPHRASER", "template")
REPHRASE_CACHE_DIR = CACHE_DIR / "rephrase"  # rephrasings.sqlite, and de-quantised GGUF models under llm/
