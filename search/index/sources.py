"""Where gallery images come from: a folder, a manifest, a zip, or the photos that ship in packages."""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from search.types import GalleryItem, Skipped

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


def read_source(source: str | Path, extract_to: str | Path | None = None) -> tuple[list[GalleryItem], list[Skipped]]:
    """A folder (recursive), a manifest (.jsonl / .csv), a .zip or a dataset -> (gallery items, entries left out).

    A zip is extracted (only its image entries) under `extract_to`; entries that would land outside it
    (`../`, absolute names) are refused. A Hugging Face dataset (hf://datasets/OWNER/NAME[:SPLIT], or a local
    one in a format `datasets` writes) has its images written under `extract_to` (search/hub.py).
    """
    from search.index import hub

    if hub.is_dataset_source(source):  # hf://datasets/OWNER/NAME[:SPLIT], or Parquet / save_to_disk of `datasets`
        return hub.dataset_gallery(source, extract_to)
    source = Path(source)
    if source.is_dir():
        return folder_gallery(source)
    if not source.is_file():
        raise FileNotFoundError(f"gallery source {source} does not exist")
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".csv"):
        return manifest_gallery(source)
    if suffix == ".zip":
        if extract_to is None:
            raise ValueError("a .zip source needs a folder to extract to")
        return zip_gallery(source, Path(extract_to))
    raise ValueError(f"gallery source {source}: expected a folder, a .jsonl/.csv manifest or a .zip")


def folder_gallery(root: str | Path) -> tuple[list[GalleryItem], list[Skipped]]:
    """Every file with an image extension under `root` (recursive, sorted); ids are paths relative to `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"gallery folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    paths = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise ValueError(f"gallery folder {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    ignored = [Skipped(str(p), "not an image extension") for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    return [GalleryItem(p.relative_to(root).as_posix(), p) for p in paths], ignored


PATH_COLUMNS = ("path", "file_name", "file", "filepath", "image")  # file_name: Hugging Face imagefolder


def manifest_gallery(manifest: str | Path) -> tuple[list[GalleryItem], list[Skipped]]:
    """Rows of a .jsonl or .csv manifest with a path column (relative to the manifest) and optional
    `id`, `caption`/`captions`/`text` and `label` columns."""
    manifest = Path(manifest)
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8") as f:
            rows = list(enumerate(csv.DictReader(f), start=2))
    else:
        rows = []
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except ValueError as e:
                    rows.append((n, f"invalid JSON ({e})"))
    items, skipped, seen = [], [], set()
    for n, row in rows:
        where = f"{manifest}:{n}"
        rel = next((row[c] for c in PATH_COLUMNS if isinstance(row, dict) and row.get(c)), None)
        if not isinstance(row, dict) or not isinstance(rel, str):
            reason = row if isinstance(row, str) else f"no path column ({', '.join(PATH_COLUMNS)})"
            skipped.append(Skipped(where, reason))
            continue
        path = manifest.parent / rel
        item_id = str(row.get("id") or rel)
        if item_id in seen:
            skipped.append(Skipped(where, f"duplicate id {item_id!r}"))
        elif not path.is_file():
            skipped.append(Skipped(where, f"{rel}: no such file"))
        else:
            seen.add(item_id)
            captions = row.get("captions") or row.get("caption") or row.get("text")
            if isinstance(captions, list):
                captions = captions[0] if captions else None
            items.append(GalleryItem(item_id, path, captions or None, row.get("label") or None))
    if not items:
        raise ValueError(f"manifest {manifest} lists no usable images ({len(skipped)} bad rows)")
    return items, skipped


MAX_ENTRY_BYTES = 1 << 30        # zip entries that would inflate beyond this are refused (zip bombs)
MAX_ZIP_BYTES = 20 * (1 << 30)   # ... and an archive whose image entries inflate beyond this in total
MAX_RATIO = 100                  # images are compressed already: an entry that deflates 100x is a bomb


def zip_gallery(archive: str | Path, target: Path) -> tuple[list[GalleryItem], list[Skipped]]:
    """Extract the image entries of `archive` under `target` (unchanged files are not rewritten).

    Entries are refused before anything is written when their names escape `target`, their sizes are over
    the limits, or they deflate suspiciously well; an extracted entry that is not a readable image is deleted."""
    archive, target = Path(archive), Path(target).resolve()
    items, skipped = [], []
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{archive}: not a readable zip file ({e})") from e
    with zf:
        entries = []
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            dest = (target / name).resolve()
            if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or target not in dest.parents:
                skipped.append(Skipped(f"{archive}!{name}", "refused: entry name escapes the extraction folder"))
            elif Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(f"{archive}!{name}", "not an image extension"))
            elif info.file_size > MAX_ENTRY_BYTES:
                skipped.append(Skipped(f"{archive}!{name}", f"{info.file_size:,} bytes uncompressed is over the limit"))
            elif info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                skipped.append(Skipped(f"{archive}!{name}", f"refused: inflates {info.file_size:,} bytes from "
                                                            f"{info.compress_size:,} (a zip bomb?)"))
            else:
                entries.append((info, dest))
        total = sum(info.file_size for info, _ in entries)
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive}: its images inflate to {total:,} bytes, over the {MAX_ZIP_BYTES:,} limit; "
                             "split it or extract it yourself and index the folder")
        for info, dest in entries:
            name = info.filename
            mtime = datetime(*info.date_time).timestamp()
            if not (dest.is_file() and dest.stat().st_size == info.file_size and dest.stat().st_mtime == mtime):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".part")
                try:
                    with zf.open(info) as src, open(tmp, "wb") as out:
                        _copy_at_most(src, out, info.file_size)
                    _check_image_header(tmp)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                    tmp.unlink(missing_ok=True)
                    skipped.append(Skipped(f"{archive}!{name}", f"cannot extract ({e})"))
                    continue
                os.utime(tmp, (mtime, mtime))
                tmp.replace(dest)
            items.append(GalleryItem(name, dest))
    if not items:
        raise ValueError(f"zip {archive} holds no images")
    return items, skipped


def _copy_at_most(src, out, limit: int) -> None:  # noqa: ANN001 (file objects)
    """Copy, failing once more than `limit` bytes arrive (an entry whose header lies about its size)."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > limit:
            raise ValueError(f"entry inflates past its declared {limit:,} bytes")
        out.write(chunk)


def _check_image_header(path: Path) -> None:
    """ValueError unless PIL recognises the file as an image (reads the header only)."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError("not a readable image") from e
