"""Disk cache of the frozen `lite` towers' outputs, so heads train in seconds, not hours."""
from __future__ import annotations

import hashlib
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.lite import FEATURE_DIMS, image_tower_outputs, load_image_tower, preprocess_image, shallow_stages
from models.style_adapters import FIRST_ADAPTED, SHALLOW_SHAPE
from search.index.images import iter_batches

log = logging.getLogger(__name__)

# Named image transforms applied before preprocessing (cached outputs are keyed by them).
TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "": lambda im: im,
    # 16x block mosaic at the original size, as in the DSR low-resolution benchmark
    "mosaic16": lambda im: im.resize((max(1, im.width // 16), max(1, im.height // 16)), Image.BOX)
    .resize(im.size, Image.NEAREST),
    # a 32-pixel thumbnail
    "tiny32": lambda im: im.resize(
        (max(1, round(32 * im.width / max(im.size))), max(1, round(32 * im.height / max(im.size)))), Image.BOX),
    # a mirror image (training augmentation: sketch and photo mirrored together keep their pose match)
    "hflip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
}
DEGRADED = "deg:"  # view "deg:<degradation id>", e.g. "deg:jpeg:15": a search.training.degradations copy


def get_transform(view: str) -> Callable[[Image.Image], Image.Image]:
    """A named view: one of TRANSFORMS, or "deg:<id>" (`search.training.degradations.degrade`, seeded by the image's
    pixels so every photo gets its own random hue or crop corner, the same on every run)."""
    if view.startswith(DEGRADED):
        from search.training.degradations import degrade, get_degradation

        d = get_degradation(view[len(DEGRADED):])
        return lambda im: degrade(im, d, seed=zlib.crc32(im.convert("RGB").resize((8, 8)).tobytes()))
    if view not in TRANSFORMS:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(map(repr, TRANSFORMS))} or '{DEGRADED}<id>'")
    return TRANSFORMS[view]


Outputs = Callable[[torch.nn.Module, torch.Tensor], dict[str, torch.Tensor]]


@torch.inference_mode()
def shallow_outputs(tower: torch.nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The shared shallow stages' map, flattened: what the style-adapted later stages start from."""
    return {"shallow": shallow_stages(tower, pixels).flatten(1)}


SHALLOW_DIMS = {"shallow": math.prod(SHALLOW_SHAPE)}
SHALLOW_CACHE = f"shallow{FIRST_ADAPTED}.npz"  # named by the block it stops before, so a changed split never reads it


class TowerCache:
    """key ("path|transform") -> every named tower output (float16) in one .npz.

    By default the outputs are `image_tower_outputs` (what the heads read); `outputs`/`dims` choose others
    (e.g. `shallow_outputs`, what the style adapters train on)."""

    def __init__(self, path: str | Path, outputs: Outputs = image_tower_outputs,
                 dims: dict[str, int] = FEATURE_DIMS) -> None:
        self.path = Path(path)
        self.outputs, self.dims = outputs, dims
        self.index: dict[str, int] = {}
        self.arrays = {name: np.zeros((0, dim), np.float16) for name, dim in dims.items()}
        if self.path.is_file():
            z = np.load(self.path)
            self.index = {k: i for i, k in enumerate(z["keys"].tolist())}
            self.arrays = {name: z[name] for name in dims}

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        rows = [self.index[k] for k in keys]
        return {name: a[rows].astype(np.float32) for name, a in self.arrays.items()}

    def fill(self, paths: Sequence[str], transforms: Sequence[str], batch_size: int = 64) -> list[str]:
        """Compute what is missing; return the keys of images that could not be read."""
        keys = [f"{p}|{t}" for p, t in zip(paths, transforms)]
        todo = sorted({k for k in keys if k not in self.index})
        if not todo:
            return []
        tower = load_image_tower()
        bad = []
        for t in sorted({k.rsplit("|", 1)[1] for k in todo}):
            group = [k for k in todo if k.rsplit("|", 1)[1] == t]
            new_keys, new = [], {name: [] for name in self.dims}
            bar = tqdm(total=len(group), desc=f"tower outputs {t or 'original'}", unit="img")
            for pos, pixels, failed in iter_batches([k.rsplit("|", 1)[0] for k in group], preprocess_image,
                                                    batch_size, get_transform(t)):
                if pos:
                    for name, v in self.outputs(tower, pixels).items():
                        new[name].append(v.half().numpy())
                    new_keys += [group[i] for i in pos]
                bad += [group[i] for i, _ in failed]
                bar.update(len(pos) + len(failed))
            bar.close()
            self._append(new_keys, new)
        return bad

    def _append(self, keys: list[str], new: dict[str, list[np.ndarray]]) -> None:
        if not keys:
            return
        base = len(self.index)
        self.index.update({k: base + i for i, k in enumerate(keys)})
        self.arrays = {name: np.concatenate([a, *new[name]]) for name, a in self.arrays.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.index)), **self.arrays)
        tmp.replace(self.path)


@torch.inference_mode()
def text_embeddings(texts: Sequence[str], cache_dir: str | Path | None = None) -> np.ndarray:
    """MiniLM embeddings of `texts`; with `cache_dir`, kept there by content (a re-run of a training command
    skips the ~2,000 class texts, ~12 s on 2 cores)."""
    from models.lite import TextTower

    texts = list(texts)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"texts-{digest}.npy"
        if path.is_file():
            return np.load(path)
    out = TextTower()(texts).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out
