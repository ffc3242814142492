"""Aesthetic scorers: one registry (`create_scorer`), higher = better.

* `laion-v1-vit-b-32`, `laion-v1-vit-b-16`, `laion-v1-vit-l-14`: LAION aesthetic predictor v1, a linear
  head; `laion-v2-vit-l-14`: the improved predictor (MLP). Each scores L2-normalised image embeddings of
  the OpenAI CLIP model it was trained on, so it wraps that open_clip encoder and is refused on any other
  (on another space its output is noise). Weights come from a path or are downloaded once from their
  public GitHub repositories into a cache.
* `lite-quality`: for the offline `lite` encoder (no public head fits its space), trained by this project
  (`python -m search train-aesthetic`) to rank a photo above degraded copies of it, on interpretable image
  statistics (`models.quality_features`). It reads pixels, not embeddings, so it fits any encoder.
"""
from __future__ import annotations

import logging
import os
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Encoder, file_sha256, l2_normalize
from .openclip import OfflineError, _hub_reachable

log = logging.getLogger(__name__)

LITE = "lite-quality"
LITE_WEIGHTS = Path(__file__).parent / "weights" / "lite_aesthetic.pt"
CACHE_DIR = Path(os.environ.get("VISUAL_SEARCH_CACHE", Path.home() / ".cache" / "visual-search")) / "aesthetic"
DOWNLOAD_HOST = "github.com"
DOWNLOAD_TIMEOUT_S = 60.0


class ScorerError(ValueError):
    """An unknown scorer, a head used on the wrong embedding space, or an unusable weights file."""


class AestheticScorer(ABC):
    """Scores images; higher = more pleasing (units depend on the scorer: compare within one scorer)."""

    name: str

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """`name@weights-hash`: indexes store it next to the scores."""

    @abstractmethod
    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """N PIL images (any mode) -> (N,) float32."""


# ---------------------------------------------------------------- LAION heads over OpenAI CLIP embeddings
@dataclass(frozen=True)
class HeadSpec:
    name: str           # registry name
    arch: str           # open_clip architecture of the OpenAI CLIP model whose embeddings it scores
    dim: int            # embedding size
    kind: str           # "linear" (v1) or "mlp" (v2)
    url: str            # public download address
    encoder: str        # an encoder name that has the right space (for error messages)
    pretrained: str = "openai"  # open_clip pretrained tag of that space

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


_V1 = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/"
_V2 = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
HEADS: dict[str, HeadSpec] = {s.name: s for s in (
    # v2 first: scorer_for prefers it where both fit
    HeadSpec("laion-v2-vit-l-14", "ViT-L-14", 768, "mlp", _V2 + "sac+logos+ava1-l14-linearMSE.pth", "ViT-L-14-openai"),
    HeadSpec("laion-v1-vit-l-14", "ViT-L-14", 768, "linear", _V1 + "sa_0_4_vit_l_14_linear.pth", "ViT-L-14-openai"),
    HeadSpec("laion-v1-vit-b-32", "ViT-B-32", 512, "linear", _V1 + "sa_0_4_vit_b_32_linear.pth", "ViT-B-32-openai"),
    HeadSpec("laion-v1-vit-b-16", "ViT-B-16", 512, "linear", _V1 + "sa_0_4_vit_b_16_linear.pth",
             "open_clip:ViT-B-16:openai"),
)}


class MLPHead(nn.Module):
    """The improved predictor's MLP (its file's keys: layers.0/2/4/6/7; dropouts between are inactive)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_head(spec: HeadSpec, path: str | Path) -> nn.Module:
    """The head module of `spec` with the weights in `path` (strict: every key and shape must match)."""
    head = nn.Linear(spec.dim, 1) if spec.kind == "linear" else MLPHead(spec.dim)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head.load_state_dict(state)
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ScorerError(f"{path} is not a {spec.name} head ({spec.kind}, {spec.dim}-d input; public copy: "
                          f"{spec.url}): {e}") from e
    return head.eval().requires_grad_(False)


def head_file(spec: HeadSpec, path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """`path` if given (it must exist), else the cached download (downloaded now if missing)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"aesthetic head file {path} not found (public copy of {spec.name}: {spec.url})")
        return path
    cached = Path(cache_dir or CACHE_DIR) / spec.filename
    if cached.is_file():
        return cached
    if not _hub_reachable(DOWNLOAD_HOST):
        raise OfflineError(f"cannot download the {spec.name} aesthetic head: {DOWNLOAD_HOST} is unreachable and "
                           f"{cached} is not cached. Pass its file as path=..., put it at {cached}, or use the "
                           f"offline scorer '{LITE}'")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    log.info("downloading %s -> %s", spec.url, cached)
    with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(tmp, "wb") as f:
        f.write(r.read())
    tmp.replace(cached)
    return cached


def encoder_space(encoder: Encoder) -> tuple[str, str] | None:
    """(open_clip architecture, pretrained tag or weights id) of an open_clip encoder, else None.

    Read from its fingerprint, `name@ARCH/WEIGHTS`, which names the weights actually loaded."""
    from .openclip import OpenClipEncoder

    if not isinstance(encoder, OpenClipEncoder):
        return None
    arch, _, weights = encoder.fingerprint.rpartition("@")[2].partition("/")
    return arch, weights


def fits(spec: HeadSpec, encoder: Encoder) -> bool:
    return encoder_space(encoder) == (spec.arch, spec.pretrained) and encoder.dim == spec.dim


class HeadScorer(AestheticScorer):
    """A LAION head on the L2-normalised image embeddings of the encoder it wraps."""

    def __init__(self, spec: HeadSpec, encoder: Encoder, path: str | Path | None = None,
                 allow_mismatch: bool = False) -> None:
        if not fits(spec, encoder):
            space = encoder_space(encoder)
            what = f"open_clip {space[0]} with weights '{space[1]}'" if space else type(encoder).__name__
            msg = (f"aesthetic head {spec.name!r} scores OpenAI CLIP {spec.arch} image embeddings ({spec.dim}-d, "
                   f"pretrained '{spec.pretrained}'), but encoder {encoder.name!r} is {what} ({encoder.dim}-d): "
                   f"its scores would be noise")
            fix = f"Use encoder {spec.encoder!r} with it, or the scorer '{LITE}' (any encoder)"
            if encoder.dim != spec.dim:
                raise ScorerError(f"{msg}. {fix}")
            if not allow_mismatch:
                raise ScorerError(f"{msg}. {fix}; allow_mismatch=True runs it anyway (plumbing tests)")
            log.warning("%s (allowed: allow_mismatch=True)", msg)
        self.spec, self.encoder, self.name = spec, encoder, spec.name
        weights = head_file(spec, path)
        self.head = load_head(spec, weights)
        self._fingerprint = f"{spec.name}@{file_sha256(weights)}"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @torch.inference_mode()
    def score_embeddings(self, vecs: np.ndarray) -> np.ndarray:
        """(N, dim) image embeddings of the encoder -> (N,) float32. Rows are L2-normalised here (the
        heads were fit on unit vectors; the encoder's are already, so this is a guard, not a change)."""
        vecs = np.asarray(vecs, np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.spec.dim:
            raise ScorerError(f"{self.name} scores ({self.spec.dim},)-d embeddings, got an array of shape {vecs.shape}")
        return self.head(l2_normalize(torch.from_numpy(vecs))).reshape(-1).numpy().astype(np.float32)

    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.score_embeddings(self.encoder.encode_images(images))


# ---------------------------------------------------------------- lite-quality: image statistics + ranker
@dataclass(frozen=True)
class QualityHeadConfig:
    """Shape of the lite-quality head; saved inside its weights file."""

    feature_names: tuple[str, ...]   # models.quality_features.FEATURE_NAMES at training time (checked on load)
    naturalness_floor: float = 0.3   # least weight of the distance-from-pristine-photos penalty


class QualityHead(nn.Module):
    """score = w . z - (floor + softplus(v)) * log(1 + Mahalanobis^2(z, pristine photos) / D) - offset,

    z being the standardised statistics. The linear part learns which way each statistic should go
    (sharper, less noise, ...); the naturalness part (NIQE's idea: how far an image's statistics lie
    from those of undistorted photos) rises under any distortion, including kinds never trained on, so
    its weight has a floor. Trained with a pairwise logistic loss: sigmoid(score_a - score_b) estimates
    the probability that image a is the better one (log-odds units; 0 = the mean training original).
    """

    def __init__(self, cfg: QualityHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = len(cfg.feature_names)
        self.register_buffer("mean", torch.zeros(d))               # standardisation (over pristine photos)
        self.register_buffer("std", torch.ones(d))
        self.register_buffer("natural_centre", torch.zeros(d))     # pristine photos, standardised: median
        self.register_buffer("natural_precision", torch.eye(d))    # and inverse (shrunk) covariance
        self.register_buffer("offset", torch.zeros(()))            # makes the mean training original score 0
        self.weight = nn.Parameter(torch.zeros(d))
        self.natural_weight = nn.Parameter(torch.zeros(()))

    def standardise(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    def unnaturalness(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) standardised statistics -> (...,) log(1 + squared Mahalanobis distance / D)."""
        d = z - self.natural_centre
        return torch.log1p(((d @ self.natural_precision) * d).sum(-1) / z.shape[-1])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., D) raw statistics -> (...,) scores."""
        z = self.standardise(feats)
        penalty = self.cfg.naturalness_floor + torch.nn.functional.softplus(self.natural_weight)
        return z @ self.weight - penalty * self.unnaturalness(z) - self.offset

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save({"config": asdict(self.cfg), "state": self.state_dict()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> QualityHead:
        from .quality_features import FEATURE_NAMES

        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            raw = blob["config"]
            cfg = QualityHeadConfig(**{**raw, "feature_names": tuple(raw["feature_names"])})
        except (RuntimeError, OSError, KeyError, TypeError, ValueError) as e:
            raise ScorerError(f"{path} is not a {LITE} weights file ({e}); train one with "
                              "`python -m search train-aesthetic --data ../shared/data`") from e
        if cfg.feature_names != FEATURE_NAMES:
            raise ScorerError(f"{path} was trained on other image statistics than models/quality_features.py "
                              "computes now; retrain it: python -m search train-aesthetic --data ../shared/data")
        head = cls(cfg)
        head.load_state_dict(blob["state"])
        return head.eval().requires_grad_(False)


class LiteQualityScorer(AestheticScorer):
    """Pixel statistics -> QualityHead. Cheap (a few ms per image), needs no encoder."""

    name = LITE

    def __init__(self, path: str | Path | None = None) -> None:
        path = Path(path) if path is not None else LITE_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{LITE} weights {path} not found; train them with "
                                    f"`python -m search train-aesthetic --data ../shared/data --out {path}`")
        self.head = QualityHead.load(path)
        self._fingerprint = f"{LITE}@{file_sha256(path)}"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @torch.inference_mode()
    def score_features(self, feats: np.ndarray) -> np.ndarray:
        """(N, D) `quality_features` rows -> (N,) float32."""
        return self.head(torch.from_numpy(np.asarray(feats, np.float32))).numpy().astype(np.float32)

    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from .quality_features import FEATURE_NAMES, quality_features

        feats = np.stack([quality_features(im) for im in images]) if len(images) else np.zeros((0, len(FEATURE_NAMES)))
        return self.score_features(feats)


# ---------------------------------------------------------------- the registry
def list_scorers() -> list[str]:
    return [LITE, *HEADS]


def create_scorer(name: str, encoder: Encoder | None = None, *, path: str | Path | None = None,
                  allow_mismatch: bool = False) -> AestheticScorer:
    """The scorer `name` (see `list_scorers()`). LAION heads need the encoder whose embeddings they score;
    `path` is a local weights file (default: lite's committed file; the heads' cached download)."""
    if name == LITE:
        return LiteQualityScorer(path)
    if name in HEADS:
        if encoder is None:
            raise ScorerError(f"scorer {name!r} scores embeddings: pass the encoder {HEADS[name].encoder!r}")
        return HeadScorer(HEADS[name], encoder, path, allow_mismatch)
    raise ScorerError(f"unknown aesthetic scorer {name!r}; known scorers: {', '.join(list_scorers())}")


def scorer_for(encoder: Encoder) -> AestheticScorer:
    """The default scorer for `encoder`: a LAION head trained on its space if there is one (v2 first),
    else `lite-quality` (pixel-based, so it fits any encoder)."""
    for spec in HEADS.values():
        if fits(spec, encoder):
            return create_scorer(spec.name, encoder)
    return create_scorer(LITE)
