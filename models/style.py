"""Query style, as in FreestyleRet (ECCV 2024): Gram matrices of shallow CNN features -> style bases.

A Gram matrix (channel co-activations, averaged over positions) of an early feature map says how an
image is drawn (strokes, flat colours, blur, texture), not what it shows. The descriptors are
standardised and projected by a linear discriminant (fit on training images of known styles, so the
few directions that separate styles dominate the many that follow content); K-means in that space,
per known style, gives the style bases. An image's style is its soft assignment to the bases (softmax
of cosine similarities), summed per style; an unseen style comes out as a mixture of known ones.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

STYLES = ("photo", "sketch", "doodle", "painting", "cartoon", "lowres")
GRAM_BLOCKS = (0, 1, 2)   # EfficientNet-Lite0 blocks with 16, 24 and 40 channels (112, 56, 28 px maps)
MIN_CONTRAST = 3.0        # grey-level std (0..255) below which an image is blank or uniform


class StyleError(ValueError):
    """An image whose style cannot be read (blank canvas, uniform colour)."""


def check_readable(image: Image.Image) -> None:
    """Raise StyleError for a blank or uniform image (its Gram matrix says nothing)."""
    grey = np.asarray(image.convert("L").resize((64, 64), Image.BOX), np.float32)  # BOX: 10x cheaper than bicubic
    if grey.std() < MIN_CONTRAST:
        raise StyleError("the image is blank or a single colour, so it has no style or content to search "
                         "with: draw something or upload another image")


@torch.inference_mode()
def gram_descriptors(tower: nn.Module, pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, 224, 224) preprocessed pixels -> (B, D) Gram descriptors of the shallow blocks."""
    x = tower.bn1(tower.conv_stem(pixels.contiguous(memory_format=torch.channels_last)))
    maps = []
    for block in tower.blocks[: max(GRAM_BLOCKS) + 1]:
        x = block(x)
        maps.append(x)
    return grams(maps)


def grams(maps: Sequence[torch.Tensor]) -> np.ndarray:
    """The tower's block outputs, from block 0 on -> (B, D) Gram descriptors of the GRAM_BLOCKS ones.

    Upper triangles of each block's Gram matrix, signed-square-rooted (tames the heavy tail of
    co-activation energies, as for bilinear pooling)."""
    parts = []
    for i in GRAM_BLOCKS:
        f = maps[i].float().flatten(2)                                # (B, C, HW)
        gram = f @ f.transpose(1, 2) / f.shape[2]                     # (B, C, C)
        rows, cols = torch.triu_indices(gram.shape[1], gram.shape[1])
        parts.append(gram[:, rows, cols])
    d = torch.cat(parts, 1)
    return (d.sign() * d.abs().sqrt()).numpy()


@dataclass
class StyleSpace:
    """Style bases in a projected Gram-descriptor space, each labelled with the style it came from."""

    mean: np.ndarray           # (D,) descriptor standardisation
    std: np.ndarray
    projection: np.ndarray     # (D, P) standardised descriptor -> style space (before centring)
    center: np.ndarray         # (P,) subtracted after projecting
    bases: np.ndarray          # (K, P) unit vectors
    base_styles: list[str]     # (K,) style of each basis
    temperature: float         # softmax temperature of the assignment

    def embed(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) descriptors -> (N, P) unit vectors in the style space."""
        z = ((descriptors - self.mean) / self.std) @ self.projection - self.center
        return (z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)).astype(np.float32)

    def mixture(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) descriptors -> (N, K) soft assignment to the bases (rows sum to 1)."""
        logits = self.embed(descriptors) @ self.bases.T / self.temperature
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def style_probs(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, len(STYLES)): the mixture summed over each style's bases."""
        mix = self.mixture(descriptors)
        onehot = np.array([[s == t for t in STYLES] for s in self.base_styles], np.float32)
        return mix @ onehot

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {k: np.asarray(v, np.float32) for k, v in asdict(self).items() if k != "base_styles"}
        np.savez(tmp, base_styles=np.array(self.base_styles), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> StyleSpace:
        z = np.load(path)
        return cls(**{f.name: z[f.name] for f in fields(cls) if f.name not in ("base_styles", "temperature")},
                   base_styles=z["base_styles"].tolist(), temperature=float(z["temperature"]))


def describe(probs: np.ndarray, top: int = 2, floor: float = 0.03) -> str:
    """(len(STYLES),) probabilities -> "sketch 0.91 · cartoon 0.06"."""
    order = np.argsort(-probs)[:top]
    return " · ".join(f"{STYLES[i]} {probs[i]:.2f}" for i in order if i == order[0] or probs[i] >= floor)
