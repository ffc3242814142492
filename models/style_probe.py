"""How well each gallery image matches a style named in text, read from the vectors an index already stores.

Two softmax (multinomial logistic) classifiers over an encoder's gallery vectors: one over the coarse styles
(photo, sketch, painting, cartoon, doodle, lowres: `models.style.STYLES`), one over the art movements of
paintings (`models.style_words.MOVEMENTS`). An image's match to a coarse style is its probability; to a
movement, P(painting) x P(movement | painting); a sketch also matches a doodle (both are line drawings), a
doodle half matches a sketch. A match saturates: an image at least `saturation` likely of the style matches
fully, so the style lifts that style's images as a whole and content orders them. Nothing is recomputed from
pixels, so any index built by the encoder the probe was fitted for works as it is (`python -m search
train-style-words` fits it on train splits; the match's weight in a ranking, `weight`, and `saturation` are
chosen on dev splits held out of train).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .style_words import LABELS, MOVEMENTS

RELATED = {"sketch": {"doodle": 1.0}, "doodle": {"sketch": 0.5}}  # label -> {other label: share of its probability}


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@dataclass(frozen=True)
class Classifier:
    """A softmax classifier over standardised vectors: probs = softmax(((x - mean) / std) @ coef.T + bias)."""

    classes: tuple[str, ...]
    mean: np.ndarray    # (D,)
    std: np.ndarray     # (D,)
    coef: np.ndarray    # (C, D)
    bias: np.ndarray    # (C,)

    def probs(self, vectors: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """(N, >= D) vectors -> (N, C); dimensions past D (e.g. an aesthetic gate's) are not read."""
        d = len(self.mean)
        out = [np.zeros((0, len(self.classes)), np.float32)]
        for i in range(0, len(vectors), chunk):
            x = (np.asarray(vectors[i : i + chunk, :d], np.float32) - self.mean) / self.std
            out.append(softmax(x @ self.coef.T + self.bias).astype(np.float32))
        return np.concatenate(out)


@dataclass(frozen=True)
class StyleProbe:
    coarse: Classifier      # over (a subset of) STYLES
    movement: Classifier    # over MOVEMENTS
    encoder: str            # fingerprint of the encoder whose vectors it reads
    weight: float           # the style match's weight in a ranking: cosine + weight * match (chosen on dev)
    saturation: float = 1.0  # probability at which an image matches a style fully (chosen on dev)

    def matches(self, vectors: np.ndarray) -> np.ndarray:
        """(N, dim) gallery vectors -> (N, len(LABELS)) match of each image to each label, in 0..1."""
        coarse, movement = self.coarse.probs(vectors), self.movement.probs(vectors)
        out = np.zeros((len(vectors), len(LABELS)), np.float32)
        for j, c in enumerate(self.coarse.classes):
            out[:, LABELS.index(c)] = coarse[:, j]
        painting = out[:, LABELS.index("painting")]
        for j, m in enumerate(self.movement.classes):
            out[:, LABELS.index(m)] = painting * movement[:, j]
        probs = out.copy()
        for label, others in RELATED.items():
            for other, share in others.items():
                out[:, LABELS.index(label)] += share * probs[:, LABELS.index(other)]
        return np.clip(out / self.saturation, 0.0, 1.0)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        arrays = {}
        for name, c in (("coarse", self.coarse), ("movement", self.movement)):
            arrays |= {f"{name}_classes": np.array(c.classes), f"{name}_mean": c.mean.astype(np.float32),
                       f"{name}_std": c.std.astype(np.float32), f"{name}_coef": c.coef.astype(np.float32),
                       f"{name}_bias": c.bias.astype(np.float32)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, encoder=np.array(self.encoder), weight=np.float32(self.weight),
                            saturation=np.float32(self.saturation), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> StyleProbe:
        z = np.load(path)

        def classifier(name: str) -> Classifier:
            return Classifier(tuple(z[f"{name}_classes"].tolist()), z[f"{name}_mean"], z[f"{name}_std"],
                              z[f"{name}_coef"], z[f"{name}_bias"])

        coarse, movement = classifier("coarse"), classifier("movement")
        unknown = sorted((set(coarse.classes) | set(movement.classes)) - set(LABELS))
        if unknown or not set(movement.classes) <= set(MOVEMENTS) or "painting" not in coarse.classes:
            raise ValueError(f"{path}: not a style probe over {LABELS} (unknown classes {unknown})")
        return cls(coarse, movement, str(z["encoder"]), float(z["weight"]), float(z["saturation"]))
