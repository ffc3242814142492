"""Style-conditioned adapters inside the `lite` image tower (FreestyleRet's style conditioning, for a CNN).

FreestyleRet conditions a ViT with style prompt tokens built from the query's style mixture. The `lite`
image tower is a CNN, so the equivalent here is residual adapters (Rebuffi et al., 2017: one network,
small per-domain additions), one set per style: every 1x1 convolution of blocks
`FIRST_ADAPTED`.. and of the head convolution gets, per style s, a low-rank residual U_s V_s, applied
weighted by the query's style mixture m:

    y = W x  +  sum_s m_s U_s V_s x

The shallow blocks stay shared (they are what the Gram descriptors read, so the style is known before
the adapted stages run). Photos have no adapter, and gallery images are encoded as photos, so a photo's
tower outputs are exactly the frozen tower's: the index never changes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .style import STYLES

PHOTO = STYLES.index("photo")
FIRST_ADAPTED = 3  # EfficientNet-Lite0 blocks 3..6 (14x14 and 7x7 maps) and conv_head are adapted
# (channels, height, width) of the map the adapted stages start from: block FIRST_ADAPTED-1's output
SHALLOW_SHAPE = {2: (24, 56, 56), 3: (40, 28, 28)}[FIRST_ADAPTED]
MIN_STYLE_WEIGHT = 1e-3  # a style weighed less in every row of a batch adds nothing measurable and is skipped


def adapted_convs(tower: nn.Module) -> list[nn.Conv2d]:
    """The 1x1 convolutions that get adapters, in the order the forward pass meets them."""
    convs = [c for stage in tower.blocks[FIRST_ADAPTED:] for block in stage for c in (block.conv_pw, block.conv_pwl)]
    return [*convs, tower.conv_head]


class LowRankStyles(nn.Module):
    """sum_s m_s U_s V_s x for one 1x1 convolution: V stacked over styles, scaled by m, then U."""

    def __init__(self, cin: int, cout: int, n_styles: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.down = nn.Conv2d(cin, n_styles * rank, 1, bias=False)
        self.up = nn.Conv2d(n_styles * rank, cout, 1, bias=False)
        nn.init.zeros_(self.up.weight)  # starts as the frozen tower

    def forward(self, x: torch.Tensor, m: torch.Tensor, rows: torch.Tensor,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """`rows`: the styles' ranks to use (the others are skipped); m: (B, len(rows), 1, 1), their weights; `scale`
        multiplies the output channels (a folded BatchNorm's)."""
        up = self.up.weight[:, rows]
        if scale is not None:
            up = scale[:, None, None, None] * up
        return F.conv2d(F.conv2d(x, self.down.weight[rows]) * m, up)


class StyleAdapters(nn.Module):
    def __init__(self, shapes: list[tuple[int, int]], rank: int = 8, styles: tuple[str, ...] = STYLES) -> None:
        super().__init__()
        self.styles, self.rank, self.shapes = tuple(styles), rank, list(shapes)
        self.convs = nn.ModuleList(LowRankStyles(i, o, len(styles), rank) for i, o in shapes)

    @classmethod
    def for_tower(cls, tower: nn.Module, rank: int = 8) -> StyleAdapters:
        return cls([(c.in_channels, c.out_channels) for c in adapted_convs(tower)], rank)

    def weights(self, mixture: torch.Tensor, batch: int) -> torch.Tensor:
        if mixture.shape != (batch, len(self.styles)):
            raise ValueError(f"style mixture must have shape ({batch}, {len(self.styles)}), got {tuple(mixture.shape)}")
        m = mixture.float().clone()
        m[:, PHOTO] = 0.0                                            # photos stay unconditioned
        return m

    def late_stages(self, tower: nn.Module, x: torch.Tensor, mixture: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Blocks FIRST_ADAPTED.. and the head convolution, with the adapters: x is block
        FIRST_ADAPTED-1's output; returns (block 4 output, head map after bn2), as the frozen path does.
        Styles that no row weighs at least MIN_STYLE_WEIGHT are skipped (a query's mixture is mostly one
        style: ~6x less adapter work). On a tower with BatchNorm folded (`models.lite.fold_batchnorm`), the
        adapters' output is scaled as the norm layer would have."""
        m = self.weights(mixture, len(x))
        keep = torch.nonzero((m >= MIN_STYLE_WEIGHT).any(0))[:, 0]
        rows = (keep[:, None] * self.rank + torch.arange(self.rank)).flatten()  # their rows in down, columns in up
        m, adapters = m[:, keep].repeat_interleave(self.rank, 1)[:, :, None, None], iter(self.convs)
        folded = getattr(tower, "bn_folded", False)

        def conv(module: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
            a = next(adapters)
            if not len(keep):
                return module(h)
            return module(h) + a(h, m, rows, module.bn_scale if folded else None)

        mid = None
        for i, stage in enumerate(tower.blocks[FIRST_ADAPTED:], FIRST_ADAPTED):
            for block in stage:  # timm's block forward, with the adapted 1x1 convolutions
                shortcut = x
                h = block.bn1(conv(block.conv_pw, x))
                h = block.se(block.aa(block.bn2(block.conv_dw(h))))
                h = block.bn3(conv(block.conv_pwl, h))
                x = block.drop_path(h) + shortcut if block.has_skip else h
            if i == 4:
                mid = x
        return mid, tower.bn2(conv(tower.conv_head, x))

    def save(self, path: str | Path) -> None:
        """fp16 (the file is committed)."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save({"styles": list(self.styles), "rank": self.rank, "shapes": self.shapes, "first": FIRST_ADAPTED,
                    "state": {k: v.half() for k, v in self.state_dict().items()}}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> StyleAdapters:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("first") != FIRST_ADAPTED:
            raise ValueError(f"{path}: adapters start at tower block {blob.get('first')}, this code adapts from block "
                             f"{FIRST_ADAPTED}; retrain them with `python -m search train-adapters`")
        adapters = cls([tuple(s) for s in blob["shapes"]], blob["rank"], tuple(blob["styles"]))
        if adapters.styles != STYLES:
            raise ValueError(f"{path}: adapters were trained for styles {adapters.styles}, this code knows {STYLES}")
        adapters.load_state_dict({k: v.float() for k, v in blob["state"].items()})
        return adapters.eval().requires_grad_(False)
