"""Typed values that cross module borders. Each validates itself on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class GalleryItem:
    id: str                        # unique within its gallery
    path: Path                     # image file
    caption: str | None = None     # human description, if known
    label: str | None = None       # class name, if known
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # any other metadata
    # filled in by indexing:
    size: tuple[int, int] | None = None    # (width, height) in pixels, upright
    bytes: int | None = None               # file size
    thumbnail: Path | None = None          # small JPEG preview
    aesthetic: float | None = None         # aesthetic score (higher = better), when a scorer ran


@dataclass(frozen=True)
class Query:
    text: str | None = None        # free text (may accompany an image)
    image: Image.Image | None = field(default=None, compare=False)  # RGB query image
    text_weight: float = 0.5       # with both: the text's share of the fused query vector (0..1)

    def __post_init__(self) -> None:
        text = (self.text or "").strip()
        object.__setattr__(self, "text", text or None)
        if self.text is None and self.image is None:
            raise ValueError("empty query: give a text, an image, or both")
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"text_weight must be in 0..1, got {self.text_weight}")


@dataclass(frozen=True)
class Hit:
    item: GalleryItem              # the gallery image found
    score: float                   # what the ranking sorted by (baseline: the similarity)
    rank: int                      # 1 = best
    row: int = -1                  # the item's row in its gallery index (its vector)
    relevance: float | None = None  # similarity to the query, when `score` is something else


@dataclass(frozen=True)
class Skipped:
    """Something left out of a gallery, and why (shown in summaries and index logs)."""

    where: str                     # file path, "manifest:line" or "archive!entry"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class ImageFilter:
    """Which gallery images a search may return: the page's and the REST API's filters. Each index backend
    applies it its own way (GalleryIndex.where: rows hidden from the FAISS search; Milvus: `expression()`,
    run inside the database). Values are checked here, so an expression never carries a visitor's text."""

    style: str | None = None            # only images whose detected style (the row's "style") is this
    min_aesthetic: float | None = None  # only images scored at least this (the scorer's raw score)

    def __post_init__(self) -> None:
        from models.style import STYLES

        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {str(self.style)[:20]!r}")
        if self.min_aesthetic is not None:
            value = float(self.min_aesthetic)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("min_aesthetic must be a finite number")
            object.__setattr__(self, "min_aesthetic", value)

    @property
    def active(self) -> bool:
        return self.style is not None or self.min_aesthetic is not None

    def allows(self, row: dict) -> bool:
        """Whether an index row (its stored fields) passes."""
        aesthetic = row.get("aesthetic")
        return ((self.style is None or row_style(row) == self.style)
                and (self.min_aesthetic is None or (aesthetic is not None and aesthetic >= self.min_aesthetic)))

    def expression(self) -> str:
        """The same filter as a Milvus boolean expression over the collection's fields ("" for none)."""
        parts = ([f'style == "{self.style}"'] if self.style is not None else []) + (
            [f"aesthetic >= {self.min_aesthetic!r}"] if self.min_aesthetic is not None else [])
        return " and ".join(parts)


def row_style(row: dict) -> str | None:
    """An index row's detected style: a Milvus field, or kept with a FAISS row's other metadata."""
    return row.get("style") or (row.get("extra") or {}).get("style")
