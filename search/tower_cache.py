"""Disk cache of the frozen `lite` towers' outputs, so heads train in seconds, not hours."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.lite import image_tower_outputs, load_image_tower, preprocess_image

from .images import iter_batches

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
}


class TowerCache:
    """key ("path|transform") -> (features float16 (1280,), logits float16 (1000,)) in one .npz."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index: dict[str, int] = {}
        self.feats = np.zeros((0, 1280), np.float16)
        self.logits = np.zeros((0, 1000), np.float16)
        if self.path.is_file():
            z = np.load(self.path)
            self.index = {k: i for i, k in enumerate(z["keys"].tolist())}
            self.feats, self.logits = z["feats"], z["logits"]

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.index[k] for k in keys]
        return self.feats[rows].astype(np.float32), self.logits[rows].astype(np.float32)

    def fill(self, paths: Sequence[str], transforms: Sequence[str], batch_size: int = 64) -> list[str]:
        """Compute what is missing; return the keys of images that could not be read."""
        keys = [f"{p}|{t}" for p, t in zip(paths, transforms)]
        todo = sorted({k for k in keys if k not in self.index})
        if not todo:
            return []
        tower = load_image_tower()
        bad, new_keys, new_f, new_l = [], [], [], []
        for t in sorted({k.rsplit("|", 1)[1] for k in todo}):
            group = [k for k in todo if k.rsplit("|", 1)[1] == t]
            group_paths = [k.rsplit("|", 1)[0] for k in group]
            bar = tqdm(total=len(group), desc=f"tower outputs {t or 'original'}", unit="img")
            for pos, pixels, failed in iter_batches(group_paths, preprocess_image, batch_size, TRANSFORMS[t]):
                if pos:
                    f, lg = image_tower_outputs(tower, pixels)
                    new_keys += [group[i] for i in pos]
                    new_f.append(f.half().numpy())
                    new_l.append(lg.half().numpy())
                bad += [group[i] for i, _ in failed]
                bar.update(len(pos) + len(failed))
            bar.close()
            self._append(new_keys, new_f, new_l)
            new_keys, new_f, new_l = [], [], []
        return bad

    def _append(self, keys: list[str], feats: list[np.ndarray], logits: list[np.ndarray]) -> None:
        if not keys:
            return
        base = len(self.index)
        self.index.update({k: base + i for i, k in enumerate(keys)})
        self.feats = np.concatenate([self.feats, *feats])
        self.logits = np.concatenate([self.logits, *logits])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.index)), feats=self.feats, logits=self.logits)
        tmp.replace(self.path)


@torch.inference_mode()
def text_embeddings(texts: Sequence[str]) -> np.ndarray:
    from models.lite import TextTower

    return TextTower()(list(texts)).numpy()
