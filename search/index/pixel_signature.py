"""Pixel signatures: which gallery images are versions of one picture, whatever a degradation did to them.

A semantic embedding is not invariant to blur, pixelation, noise or compression (only 69 % of held-out
degraded copies lie within `lite` cosine 0.78 of their original), so near-duplicates are also found in
pixel space: the grey image shrunk to 16x16 by area averaging (blur, noise, pixelation and compression
average out), minus its best quadratic surface (brightness, contrast, a colour cast, haze, uneven light
and vignetting are smooth: they go), as a unit vector. The cosine of two signatures is the correlation of
what is left: the picture's layout.

`DUPLICATE_THRESHOLD` comes from `train` photos only (benchmarks/aligned_dev.py pixels): 1 % of 600 ImageNet
and Sketchy train photos have a distinct photo whose signature is that close (median nearest 0.455); it
catches 93 % of their copies made with the training degradations (all but crops and the strongest
over-exposure). Stored per image as 256 int8 values in base64 (the row's "pixels")."""
from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 16
DUPLICATE_THRESHOLD = 0.713

_y, _x = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1) - 0.5
_SURFACE = np.stack([np.ones_like(_x), _x, _y, _x * _x, _y * _y, _x * _y], -1).reshape(-1, 6)
_PROJECT = _SURFACE @ np.linalg.pinv(_SURFACE)   # projection onto the quadratic surfaces


def signature(image: Image.Image) -> np.ndarray:
    """(256,) float32 unit vector of an image's layout (see the module docstring)."""
    grey = image.convert("L")
    grey.thumbnail((256, 256))   # as the index's thumbnails: a signature from either is the same
    a = np.asarray(grey.resize((SIDE, SIDE), Image.BOX), np.float64).ravel()
    rest = a - _PROJECT @ a
    norm = np.linalg.norm(rest)
    return (rest / norm if norm > 1e-6 else rest).astype(np.float32)


def encode(sig: np.ndarray) -> str:
    """A signature as 344 base64 characters (int8, scaled to its largest value; the cosine is unchanged)."""
    peak = float(np.abs(sig).max()) or 1.0
    return base64.b64encode(np.round(sig / peak * 127).astype(np.int8).tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    v = np.frombuffer(base64.b64decode(text), np.int8).astype(np.float32)
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def signatures(rows: Sequence[dict], root: Path) -> np.ndarray:
    """(len(rows), 256) signatures of index rows: stored ("pixels"), else made from the row's thumbnail for an
    index built before signatures were stored; zeros (a duplicate of nothing) for a row with neither (never
    the original: decoding a large file in a search would cost more than the de-duplication is worth)."""
    out = np.zeros((len(rows), SIDE * SIDE), np.float32)
    for i, row in enumerate(rows):
        if row.get("pixels"):
            out[i] = decode(row["pixels"])
            continue
        if not row.get("thumbnail"):
            continue
        try:
            with Image.open(root / row["thumbnail"]) as im:
                out[i] = signature(im)
        except (OSError, ValueError):
            pass
    return out
