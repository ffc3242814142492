"""Project-wide settings in one place (each overridable by an environment variable or CLI flag)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENCODER = os.environ.get("VISUAL_SEARCH_ENCODER", "lite")
CACHE_DIR = Path(os.environ.get("VISUAL_SEARCH_CACHE", Path.home() / ".cache" / "visual-search"))
DEFAULT_TOP_K = 12
