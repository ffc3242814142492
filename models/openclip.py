"""open_clip models by architecture + pretrained tag, local checkpoint, or random weights."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import Encoder, RegistryError, file_sha256, l2_normalize

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


class OfflineError(RuntimeError):
    """Pretrained weights must be downloaded but the hub cannot be reached."""


def _hub_reachable(host: str = HUB_HOST, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_hub_file(hf_hub: str) -> str | None:
    """The locally cached checkpoint of an open_clip `hf_hub` entry ('org/repo/' or 'org/repo/file')."""
    from huggingface_hub import hf_hub_download

    repo, filename = os.path.split(hf_hub.rstrip("/") if hf_hub.endswith("/") else hf_hub)
    if hf_hub.endswith("/"):
        repo, filename = hf_hub.rstrip("/"), "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    for candidate in ("open_clip_model.safetensors", f"{stem}.safetensors", filename):
        try:
            return hf_hub_download(repo, candidate, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not cached"; we try the next name
            continue
    return None


def resolve_pretrained(arch: str, pretrained: str | None) -> tuple[str | None, dict]:
    """-> (what to pass to open_clip as `pretrained`, the tag's config for preprocessing).

    Fails within seconds, naming the offline encoder, when weights would need a download
    that cannot happen (open_clip itself would retry for about a minute).
    """
    import open_clip

    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(arch.lower()[:5])][:8]
        raise RegistryError(f"unknown open_clip architecture {arch!r}; similar: {close or 'none'} "
                            "(all: open_clip.list_models())")
    if pretrained is None:
        return None, {}
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser()), {}
    if pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained:
        raise FileNotFoundError(f"open_clip checkpoint {pretrained!r} not found")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"known tags: {tags}" if tags else f"{arch} has no pretrained tags"
        raise RegistryError(f"unknown pretrained tag {pretrained!r} for {arch}; {known}. Give a checkpoint "
                            "path instead, or no pretrained part for random weights")
    if _hub_reachable():
        return pretrained, cfg
    cached = _cached_hub_file(cfg["hf_hub"]) if cfg.get("hf_hub") else None
    if cached:
        return cached, cfg
    raise OfflineError(
        f"cannot download the {arch} '{pretrained}' weights: {HUB_HOST} is unreachable and they are "
        "not in the local cache. Use the offline encoder 'lite' (the default), or run once with "
        "internet access to cache the weights.")


class OpenClipEncoder(Encoder):
    def __init__(self, name: str, arch: str, pretrained: str | None, batch_size: int = 32) -> None:
        import open_clip

        source, cfg = resolve_pretrained(arch, pretrained)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random weights are the same every time (stable fingerprint)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=source, force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                image_mean=cfg.get("mean"), image_std=cfg.get("std"))
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = preprocess
        self.name = name
        self.batch_size = batch_size
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])
        if source is None:
            weights_id = "random-seed0"
        elif Path(source).is_file() and source != pretrained:
            weights_id = pretrained  # a tag resolved to its cached file: the tag names the weights
        elif Path(source).is_file():
            weights_id = file_sha256(source)
        else:
            weights_id = pretrained
        self._fingerprint = f"{name}@{arch}/{weights_id}"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @torch.inference_mode()
    def encode_image_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        return l2_normalize(self.model.encode_image(pixels)).numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), 256):
            out.append(l2_normalize(self.model.encode_text(self.tokenizer(list(texts[i : i + 256])))).numpy())
        return np.concatenate(out)
