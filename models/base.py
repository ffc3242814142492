"""The encoder contract every model family fulfils."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .query_bank import QueryBank


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def file_sha256(path: str | Path, n_hex: int = 12) -> str:
    """Short content hash of a weights file, for encoder fingerprints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]


class Encoder(ABC):
    """Maps images and texts into one space of L2-normalised float32 vectors.

    Images go through `preprocess` (PIL -> CHW tensor; cheap, safe to run in worker threads)
    and then `encode_image_tensors` (batched model forward), so decoding can overlap inference.
    """

    name: str
    dim: int
    preprocess: Callable[[Image.Image], torch.Tensor]
    batch_size: int = 32
    query_bank: QueryBank | None = None  # style-aware encoders: hubness of gallery images per query style

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """`name@weights-hash`: indexes store it and refuse vectors from any other encoder."""

    def warm_up(self) -> None:
        """Load whatever loads lazily, so the first query of each kind is fast (serving calls this)."""
        return None

    @abstractmethod
    def encode_image_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed pixels -> (B, dim) float32, rows of unit norm."""

    def style_probs(self, pixels: torch.Tensor) -> np.ndarray | None:
        """(B, 3, H, W) -> (B, len(models.style.STYLES)) detected style probabilities, or None if this
        encoder does not read style."""
        return None

    def encode_query_tensors(self, pixels: torch.Tensor,
                             condition: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Query images -> (vectors, style probabilities or None). Style-aware encoders condition the
        vectors on the detected style when `condition`; gallery images go through `encode_image_tensors`."""
        return self.encode_image_tensors(pixels), self.style_probs(pixels)

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N strings -> (N, dim) float32, rows of unit norm."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """N PIL images (any mode) -> (N, dim) float32, rows of unit norm."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            batch = [self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]]
            out.append(self.encode_image_tensors(torch.stack(batch)))
        return np.concatenate(out)


class RegistryError(ValueError):
    """An unknown encoder name or an invalid encoder config."""
