"""Style prompts for open_clip ViT image towers, as in FreestyleRet (ECCV 2024).

A query's style is a mixture over K style bases (a soft assignment, see `models/style.py`). Each basis owns
a set of P learnable prompt tokens per prompted layer (deep visual prompt tuning); a query gets the
mixture-weighted sum of the sets, inserted after the class token and replaced at each of the first `depth`
blocks. The tower stays frozen: only the prompts (and, optionally, copies of the blocks' LayerNorms used on
the prompted path) train.

The "photo" basis has no prompts: its weight in a mixture multiplies the (unnormalised) attention paid to the
prompt tokens by (1 - w_photo) (an additive log-gate on their keys), so a mixture slides continuously to the frozen
tower, and a pure-photo mixture (or none) runs the frozen tower itself, bit for bit. Gallery photos are
encoded that way, so a gallery index built with the plain tower stays valid.
"""
from __future__ import annotations

import hashlib
import logging
import os
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock, VisionTransformer
from torch import nn

log = logging.getLogger(__name__)

FILE_FORMAT = 1           # bump when the saved layout changes
MIXTURE_SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StylePromptConfig:
    """How many style prompts go where; saved with the prompts."""

    n_bases: int                     # K style bases = the length of a mixture
    n_prompts: int = 4               # P prompt tokens per prompted layer
    depth: int = 1                   # prompts are (re)placed at the first `depth` blocks (1 = shallow VPT)
    photo_basis: int | None = 0      # index of the "photo" basis (no prompts: the frozen tower); None: no such basis
    tune_layernorms: bool = False    # also train copies of the blocks' ln_1/ln_2, used only on the prompted path
    init_std: float = 0.02           # scale of the initial prompt tokens

    def __post_init__(self) -> None:
        if self.n_bases < 1 or self.n_prompts < 1 or self.depth < 1:
            raise ValueError(f"n_bases, n_prompts and depth must be >= 1 (got {self.n_bases}, {self.n_prompts}, "
                             f"{self.depth})")
        if self.photo_basis is not None and not 0 <= self.photo_basis < self.n_bases:
            raise ValueError(f"photo_basis {self.photo_basis} is not one of the {self.n_bases} bases: give an index "
                             f"in 0..{self.n_bases - 1}, or None when no basis is the photo style")
        if self.photo_basis is not None and self.n_bases < 2:
            raise ValueError("with a photo basis, at least one other basis is needed to carry prompts (n_bases >= 2)")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0 (got {self.init_std})")


def check_mixture(mixture: torch.Tensor, n_bases: int, batch: int) -> torch.Tensor:
    """A (K,) or (B, K) mixture -> (B, K) float32, after checking it is a distribution over the K bases."""
    m = torch.as_tensor(mixture).detach().float()
    if m.ndim == 1:
        m = m.expand(batch, -1)
    if m.ndim != 2 or m.shape[0] != batch:
        raise ValueError(f"mixture has shape {tuple(m.shape)}: expected ({n_bases},) for the whole batch or "
                         f"({batch}, {n_bases}), one row per image")
    if m.shape[1] != n_bases:
        raise ValueError(f"mixture has {m.shape[1]} weights but the prompts have {n_bases} style bases: "
                         "give one weight per basis, in the order of the style space")
    if not torch.isfinite(m).all():
        raise ValueError("mixture holds NaN or infinite weights: compute it as a softmax over basis similarities")
    if (m < 0).any():
        raise ValueError(f"mixture weights must be non-negative (smallest is {m.min().item():.4g}): it is a soft "
                         "assignment to the bases, e.g. a softmax")
    sums = m.sum(1)
    bad = (sums - 1).abs() > MIXTURE_SUM_TOLERANCE
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"mixture weights must sum to 1 (row {row} sums to {sums[row].item():.4g}): divide by "
                         "the sum, or use a softmax")
    return m


def backbone_fingerprint(tower: nn.Module, n_hex: int = 16) -> str:
    """Content hash of a tower's weights: prompts only make sense on the tower they were trained with."""
    h = hashlib.sha256()
    for name, t in sorted(tower.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n_hex]


def run_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, ln_1: nn.Module,
              ln_2: nn.Module) -> torch.Tensor:
    """One open_clip residual block with its LayerNorms swapped for `ln_1`/`ln_2` (the block's own or copies).

    Mirrors `ResidualAttentionBlock.forward` / `CustomResidualAttentionBlock.forward` (open_clip 3.x);
    a test pins it to them bit for bit.
    """
    if isinstance(block, CustomResidualAttentionBlock):
        h = block.ln_attn(block.attn(ln_1(x), attn_mask=attn_mask))
    else:
        h = block.attention(q_x=ln_1(x), attn_mask=attn_mask)
    x = x + block.ls_1(h)
    return x + block.ls_2(block.mlp(ln_2(x)))


class StylePromptedViT(nn.Module):
    """A frozen open_clip `VisionTransformer` whose queries are conditioned on a style mixture by prompts."""

    def __init__(self, visual: nn.Module, config: StylePromptConfig):
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"style prompts need an open_clip VisionTransformer image tower, got "
                            f"{type(visual).__name__}: use a ViT architecture (e.g. ViT-B-32), not a ResNet/timm one")
        blocks = visual.transformer.resblocks
        if not visual.transformer.batch_first:
            raise ValueError("the tower's transformer is not batch-first; open_clip >= 2.24 builds batch-first ones")
        if not all(isinstance(b, (ResidualAttentionBlock, CustomResidualAttentionBlock)) for b in blocks):
            raise TypeError("the tower has blocks of an unknown type; style prompts support open_clip's residual "
                            "attention blocks")
        if config.depth > len(blocks):
            raise ValueError(f"depth {config.depth} exceeds the tower's {len(blocks)} blocks: use 1..{len(blocks)}")
        self.config = config
        self.visual = visual.eval().requires_grad_(False)  # frozen: also no patch dropout
        width = visual.class_embedding.shape[-1]
        self.styled = [k for k in range(config.n_bases) if k != config.photo_basis]  # bases that own prompts
        # (depth, S, P, width): one prompt set per styled basis and prompted layer
        self.prompts = nn.Parameter(config.init_std * torch.randn(config.depth, len(self.styled), config.n_prompts,
                                                                  width))
        # trainable copies of the blocks' LayerNorms for the prompted path (the tower's own ones stay frozen,
        # so photos are unaffected); None: the prompted path uses the tower's own
        self.norms = nn.ModuleList(nn.ModuleList([deepcopy(b.ln_1), deepcopy(b.ln_2)]) for b in blocks
                                   ).requires_grad_(True) if config.tune_layernorms else None

    def train(self, mode: bool = True) -> StylePromptedViT:
        super().train(mode)
        self.visual.eval()  # the tower never trains: no dropout, no patch dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What an optimiser should update: the prompts (and the LayerNorm copies when tuned)."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_from_bases(self, basis_vectors: torch.Tensor, seed: int = 0) -> None:
        """Initialise each basis' prompts from its descriptor (e.g. the mean style descriptor of its members).

        The descriptors are centred (what sets a basis apart from the others) and mapped to the tower's width by
        a fixed random projection; every layer and token of a basis starts from that direction plus as much
        noise, so the tokens of a set differ.
        """
        b = torch.as_tensor(basis_vectors).detach().float()
        if b.ndim != 2 or b.shape[0] != self.config.n_bases:
            raise ValueError(f"basis_vectors has shape {tuple(b.shape)}: expected ({self.config.n_bases}, F), one "
                             "descriptor per style basis")
        depth, _, n_prompts, width = self.prompts.shape
        g = torch.Generator().manual_seed(seed)
        proj = torch.randn(b.shape[1], width, generator=g) / b.shape[1] ** 0.5       # (F, width)
        d = (b - b.mean(0)) @ proj                                                  # (K, width)
        d = (d - d.mean(1, keepdim=True)) / d.std(1, keepdim=True).clamp_min(1e-8)  # unit scale per basis
        noise = torch.randn(depth, len(self.styled), n_prompts, width, generator=g)
        with torch.no_grad():
            self.prompts.copy_(self.config.init_std * (d[self.styled][None, :, None] + noise).to(self.prompts))

    def forward(self, pixels: torch.Tensor, mixture: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels, (K,) or (B, K) style mixture -> (B, output_dim) embeddings.

        Not normalised, like the tower's own output. Rows without weight on any styled basis (photo queries,
        gallery photos) and `mixture=None` go through the frozen tower unchanged. The mixture is an input
        (from the style space), not differentiated through.
        """
        if mixture is None:
            return self._frozen(pixels)
        m = check_mixture(mixture, self.config.n_bases, pixels.shape[0]).to(pixels.device)
        styled = m[:, self.styled]                                   # (B, S)
        gate = styled.sum(1)                                         # (B,) 1 - photo weight
        plain = gate == 0
        if plain.all():
            return self._frozen(pixels)
        if not plain.any():
            return self._prompted(pixels, styled, gate)
        idx_plain, idx_styled = plain.nonzero()[:, 0], (~plain).nonzero()[:, 0]
        a = self._frozen(pixels[idx_plain])
        b = self._prompted(pixels[idx_styled], styled[idx_styled], gate[idx_styled])
        out = b.new_zeros(pixels.shape[0], b.shape[1])
        return out.index_put((idx_plain,), a.to(b.dtype)).index_put((idx_styled,), b)

    def _frozen(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixels)
        return out[0] if isinstance(out, tuple) else out  # output_tokens towers return (pooled, tokens)

    def _prompted(self, pixels: torch.Tensor, styled: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The tower's forward with prompt tokens after the class token; styled (B, S) and gate (B,) > 0."""
        vis, n_prompts = self.visual, self.config.n_prompts
        x = vis._embeds(pixels)                                      # (B, 1+N, D): class token, patches; ln_pre'd
        weights = styled / gate[:, None]                             # (B, S) the style among the styled bases
        prompts = torch.einsum("bs,lspd->lbpd", weights, self.prompts).to(x.dtype)  # (depth, B, P, D)
        x = torch.cat([x[:, :1], prompts[0], x[:, 1:]], 1)           # (B, 1+P+N, D)
        mask = self._gate_mask(gate, x.shape[1], x.dtype)
        for i, block in enumerate(vis.transformer.resblocks):
            ln_1, ln_2 = self.norms[i] if self.norms is not None else (block.ln_1, block.ln_2)
            if 0 < i < self.config.depth:                            # deep prompts: replace, not accumulate
                x = torch.cat([x[:, :1], prompts[i], x[:, 1 + n_prompts:]], 1)
            x = run_block(block, x, mask, ln_1, ln_2)
        x = torch.cat([x[:, :1], x[:, 1 + n_prompts:]], 1)           # (B, 1+N, D): pooling sees the usual tokens
        pooled, _ = vis._pool(x)
        return pooled @ vis.proj if vis.proj is not None else pooled

    def _gate_mask(self, gate: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor | None:
        """(B*heads, L, L) additive attention mask: log(gate) on the prompt keys, so a query that is partly a
        photo pays proportionally less attention to its prompts. None when no query is part photo."""
        if bool((gate >= 1).all()):
            return None
        heads = self.visual.transformer.resblocks[0].attn.num_heads
        mask = torch.zeros(gate.shape[0], length, length, dtype=dtype, device=gate.device)
        mask[:, :, 1:1 + self.config.n_prompts] = gate.clamp_max(1).log().to(dtype)[:, None, None]
        return mask.repeat_interleave(heads, 0)                     # MHA wants batch-major (b * heads + h)

    def save(self, path: str | Path) -> None:
        """Write the trainable parameters with the config and the tower's fingerprint (a small file)."""
        path = Path(path)
        state = {name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad}
        blob = {"format": FILE_FORMAT, "config": asdict(self.config), "backbone": backbone_fingerprint(self.visual),
                "state": state}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written file
        log.info("saved %d style-prompt tensors to %s", len(state), path)

    @classmethod
    def load(cls, visual: nn.Module, path: str | Path, check_backbone: bool = True) -> StylePromptedViT:
        """Wrap `visual` with the prompts saved at `path` (refused if they were trained on another tower)."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        if blob.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: style-prompt file format {blob.get('format')!r}, this code reads "
                             f"{FILE_FORMAT}: retrain the prompts")
        try:
            config = StylePromptConfig(**blob["config"])
        except TypeError as e:
            raise ValueError(f"{path}: unreadable style-prompt config {blob['config']}: {e}") from e
        model = cls(visual, config)
        if check_backbone and blob["backbone"] != (have := backbone_fingerprint(visual)):
            raise ValueError(f"{path}: prompts were trained on another tower (fingerprint {blob['backbone']}, this "
                             f"one {have}): load the tower they were trained with, or retrain them")
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(blob["state"]) != expected:
            raise ValueError(f"{path}: saved tensors {sorted(blob['state'])} do not match {sorted(expected)}")
        model.load_state_dict(blob["state"], strict=False)
        return model
