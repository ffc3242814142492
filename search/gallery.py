"""Where gallery images come from: a folder, or the default set of photos that ship in packages."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .types import GalleryItem

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# (package, file inside the package, caption): permissively licensed photos installed with the app.
PACKAGE_PHOTOS = [
    ("skimage", "data/astronaut.png", "astronaut Eileen Collins, NASA portrait"),
    ("skimage", "data/chelsea.png", "a cat (Chelsea)"),
    ("skimage", "data/coffee.png", "a cup of coffee"),
    ("skimage", "data/rocket.jpg", "a rocket launch"),
    ("skimage", "data/motorcycle_left.png", "a motorcycle"),
    ("skimage", "data/camera.png", "cameraman, grayscale"),
    ("skimage", "data/coins.png", "Greek coins, grayscale"),
    ("skimage", "data/moon.png", "the surface of the moon, grayscale"),
    ("skimage", "data/hubble_deep_field.jpg", "Hubble deep field"),
    ("skimage", "data/brick.png", "brick wall texture"),
    ("skimage", "data/grass.png", "grass texture"),
    ("skimage", "data/gravel.png", "gravel texture"),
    ("skimage", "data/page.png", "a scanned page of text"),
    ("skimage", "data/retina.jpg", "human retina fundus"),
    ("skimage", "data/cell.png", "cell microscopy"),
    ("skimage", "data/ihc.png", "immunohistochemistry microscopy"),
    ("skimage", "data/color.png", "colour chart"),
    ("sklearn", "datasets/images/china.jpg", "a Chinese temple"),
    ("sklearn", "datasets/images/flower.jpg", "a flower close-up"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "portrait of Grace Hopper"),
]


def default_gallery() -> list[GalleryItem]:
    """The built-in gallery: sample photos shipped inside installed packages (no download)."""
    items = []
    for package, rel, caption in PACKAGE_PHOTOS:
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / rel if spec and spec.origin else None
        if path is None or not path.is_file():
            log.warning("default gallery: %s/%s is not installed; skipped", package, rel)
            continue
        items.append(GalleryItem(f"{package}/{Path(rel).stem}", path, caption))
    if not items:
        raise FileNotFoundError("no default gallery photos found: install scikit-image (requirements.txt)")
    return items


def folder_gallery(root: str | Path) -> list[GalleryItem]:
    """Every image file under `root` (recursive, sorted); ids are paths relative to `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"gallery folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"gallery folder {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return [GalleryItem(p.relative_to(root).as_posix(), p) for p in paths]
