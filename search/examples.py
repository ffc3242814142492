"""Example queries made from a gallery's own photos: an edge-map "sketch" and a low-res copy of some,
plus the text of others, so a visitor can try every kind of query with one click."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from .images import load_image
from .types import GalleryItem


@dataclass(frozen=True)
class ExampleQuery:
    text: str | None               # text of the query, if any
    image: Path | None             # query image file, if any
    kind: str                      # "text", "sketch", "lowres", "sketch+text"


def edge_sketch(image: Image.Image, size: int = 384) -> Image.Image:
    """Dark strokes on white from an image's edges: how a quick drawing of it might look."""
    grey = ImageOps.grayscale(image)
    grey.thumbnail((size, size))
    edges = grey.filter(ImageFilter.GaussianBlur(2)).filter(ImageFilter.FIND_EDGES)
    strokes = edges.point(lambda v: 0 if v > 16 else 255).filter(ImageFilter.MinFilter(3))
    return strokes.convert("RGB")


def low_res(image: Image.Image, side: int = 24) -> Image.Image:
    """A thumbnail `side` pixels wide, blown back up (blocky), like a low-resolution photo."""
    small = image.resize((side, max(1, round(side * image.height / image.width))), Image.BOX)
    return small.resize(image.size, Image.NEAREST)


def make_examples(items: list[GalleryItem], out_dir: str | Path) -> list[ExampleQuery]:
    """Write example query images under `out_dir` (once) and return the examples."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {it.id.split("/")[-1]: it for it in items}
    examples = [ExampleQuery(t, None, "text") for t in ("a cat", "a cup of coffee", "a rocket launch")]
    for name, kind, make, text in (("rocket", "sketch", edge_sketch, None), ("chelsea", "lowres", low_res, None),
                                   ("motorcycle_left", "sketch+text", edge_sketch, "a red motorcycle")):
        item = by_id.get(name)
        if item is None:
            continue
        path = out_dir / f"{name}-{kind.split('+')[0]}.png"
        if not path.is_file():
            tmp = path.with_suffix(".tmp.png")
            make(load_image(item.path)).save(tmp)
            tmp.replace(path)
        examples.append(ExampleQuery(text, path, kind))
    return examples
