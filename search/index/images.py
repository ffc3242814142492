"""Opening image files defensively and feeding them to an encoder in batches."""
from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000  # larger images are refused (decompression-bomb guard)


class ImageLoadError(ValueError):
    """A file that is not a usable image: `path` and why (`reason`)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def load_image(path: str | Path, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as upright RGB, or raise ImageLoadError saying why it cannot be used.

    The pixel count is checked from the header, before decoding. With `max_side`, the image is shrunk to fit
    (JPEGs are decoded at a reduced scale, so a huge photo never takes its full size in memory)."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageLoadError(path, f"{im.width}x{im.height} pixels is over the {max_pixels:,} limit "
                                             "(decompression bomb guard)")
            if max_side:
                im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale (no-op otherwise)
            im.load()
            if max_side:  # in place, before any copy: a huge PNG is held full-size only once
                im.thumbnail((max_side, max_side), Image.LANCZOS)
            return to_rgb(ImageOps.exif_transpose(im))
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL's messages name the file: keep only its name (a server path is nobody's business)
        raise ImageLoadError(path, f"not a readable image ({str(e).replace(str(path), path.name)})") from e


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """The image scaled down (never up) so that its long side is at most `max_side`."""
    if max(image.size) <= max_side:
        return image
    small = image.copy()
    small.thumbnail((max_side, max_side), Image.LANCZOS)
    return small


def to_webp(image: Image.Image, quality: int = 90) -> bytes:
    """Compact bytes for keeping or storing a query image (a 1024-px photo: ~100 KB)."""
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (palette, alpha, CMYK, 16-bit, grayscale) -> RGB; transparency becomes white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr * 255.0 / max(arr.max(), 1.0)).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def iter_batches(
    paths: Sequence[str | Path],
    preprocess: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 32,
    transform: Callable[[Image.Image], Image.Image] | None = None,
    workers: int = 2,
    prefetch: int = 3,
    on_image: Callable[[int, Image.Image], None] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, list[tuple[int, str]]]]:
    """Decode + preprocess in threads, a few batches ahead of the consumer (the model).

    Yields (positions of the good images, their stacked pixels, [(position, reason)] for bad ones).
    `on_image(position, upright RGB image)` runs in the decoding thread (e.g. to write a thumbnail).
    """

    def prepare(i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            im = load_image(paths[i])
            if on_image:
                on_image(i, im)
            return i, preprocess(transform(im) if transform else im), None
        except ImageLoadError as e:
            return i, None, e.reason

    starts = list(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(s: int) -> list:
            return [pool.submit(prepare, i) for i in range(s, min(s + batch_size, len(paths)))]

        # Keep `prefetch` batches decoding while the consumer (the model) works on the current one.
        pending = deque(submit(s) for s in starts[:prefetch])
        for nxt in starts[prefetch:] + [None] * min(prefetch, len(starts)):
            results = [f.result() for f in pending.popleft()]
            if nxt is not None:
                pending.append(submit(nxt))
            good = [(i, x) for i, x, err in results if err is None]
            bad = [(i, err) for i, _, err in results if err is not None]
            pixels = torch.stack([x for _, x in good]) if good else torch.zeros(0, 3, 1, 1)
            yield [i for i, _ in good], pixels, bad
