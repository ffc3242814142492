"""The page's two input components, bounded: every image is checked before Gradio decodes it."""
from __future__ import annotations

import gradio as gr

from search import config

from .adapters import RequestError, check_pixels, public_message


def user_error(error: BaseException | str) -> gr.Error:
    return gr.Error(public_message(error), print_exception=False)


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
