"""One registry of encoders: a name maps to a config; `create_encoder(name)` builds it.

Named configs live in `models/configs/*.json`. Any open_clip architecture is also reachable
without a config file as `open_clip:ARCH[:PRETRAINED]`, where PRETRAINED is an open_clip tag
(`openai`, `laion2b_s34b_b79k`, ...), a local checkpoint path, or absent for random weights.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Encoder, RegistryError

CONFIG_DIR = Path(__file__).parent / "configs"
FAMILIES = ("lite", "open_clip")


@dataclass(frozen=True)
class EncoderConfig:
    family: str                      # "lite" or "open_clip"
    arch: str | None = None          # open_clip architecture, e.g. "ViT-B-32"
    pretrained: str | None = None    # open_clip tag, local checkpoint path, or None (random weights)
    weights: str | None = None       # lite: heads file, relative to models/
    style_space: str | None = None   # lite: style bases (`train-style`), relative to models/
    style_adapters: str | None = None  # lite: style adapters inside the image tower (`train-adapters`)
    aesthetic_gate: str | None = None  # lite: gallery-side gate trained by ranked DPO (`train-align`)
    query_bank: str | None = None    # lite: training queries per style, for querybank normalisation (`query-bank`)
    batch_size: int = 32             # images per forward pass
    description: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise RegistryError(f"unknown encoder family {self.family!r}; expected one of {FAMILIES}")
        if self.family == "open_clip" and not self.arch:
            raise RegistryError("an open_clip encoder config needs 'arch' (e.g. \"ViT-B-32\")")
        if self.family == "lite" and not self.weights:
            raise RegistryError("a lite encoder config needs 'weights' (the trained heads file)")
        if self.batch_size < 1:
            raise RegistryError(f"batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RegistryError(f"{source}: unknown config key(s) {unknown}; allowed keys: {sorted(known)}")
        return cls(**raw)


def _named_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_encoders() -> list[str]:
    """Names with a config file (open_clip:ARCH[:PRETRAINED] names are accepted besides these)."""
    return list(_named_configs())


def get_config(name: str, **overrides: Any) -> EncoderConfig:
    """The config for `name`, with keyword overrides applied (unknown keys are errors)."""
    configs = _named_configs()
    if name in configs:
        raw = json.loads(configs[name].read_text())
        source = str(configs[name])
    elif name.startswith("open_clip:"):
        _, _, rest = name.partition(":")
        arch, _, pretrained = rest.partition(":")
        raw = {"family": "open_clip", "arch": arch, "pretrained": pretrained or None}
        source = name
    else:
        raise RegistryError(
            f"unknown encoder {name!r}; known encoders: {', '.join(configs)} "
            "(or open_clip:ARCH[:PRETRAINED], e.g. open_clip:ViT-B-32:openai)")
    return EncoderConfig.from_dict({**raw, **overrides}, source)


def create_encoder(name: str, **overrides: Any) -> Encoder:
    """Build the encoder `name` (see `list_encoders()`); overrides replace config keys."""
    cfg = get_config(name, **overrides)
    if cfg.family == "lite":
        from .lite import LiteEncoder

        def resolve(path: str | None) -> Path | None:
            return None if path is None else Path(__file__).parent / path  # absolute paths stay absolute

        return LiteEncoder(name, resolve(cfg.weights), batch_size=cfg.batch_size,
                           style_space=resolve(cfg.style_space), style_adapters=resolve(cfg.style_adapters),
                           aesthetic_gate=resolve(cfg.aesthetic_gate), query_bank=resolve(cfg.query_bank))
    from .openclip import OpenClipEncoder

    return OpenClipEncoder(name, cfg.arch, cfg.pretrained, batch_size=cfg.batch_size)


_cache: dict[tuple[str, tuple], Encoder] = {}
_cache_lock = threading.Lock()


def get_encoder(name: str, **overrides: Any) -> Encoder:
    """`create_encoder`, cached: the app and the CLI share one loaded model per name."""
    key = (name, tuple(sorted(overrides.items())))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = create_encoder(name, **overrides)
        return _cache[key]
