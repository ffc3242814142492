"""The browser page (the only package that imports gradio): `build_ui(engine, store, ...)`."""
from .handlers import Limits
from .page import BRUSH_READY, CSS, build_tools, build_ui

__all__ = ["BRUSH_READY", "CSS", "Limits", "build_tools", "build_ui"]
