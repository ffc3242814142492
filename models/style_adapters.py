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

import weakref
from collections.abc import Callable
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

    def kept(self, rows: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) as matrices for the styles' ranks `rows` (the others are skipped): (C_in, R) and (R, C_out);
        `scale` multiplies the output channels (a folded BatchNorm's)."""
        up = self.up.weight[:, rows, 0, 0]
        if scale is not None:
            up = scale[:, None] * up
        return self.down.weight[rows, :, 0, 0].T.contiguous(), up.T.contiguous()


def add_low_rank(y: torch.Tensor, x: torch.Tensor, m: torch.Tensor, down: torch.Tensor,
                 up: torch.Tensor) -> torch.Tensor:
    """y + ((x @ down) * m) @ up at each position of the map x: the adapter's two 1x1 convolutions as batched
    products over (B, H*W, C) views of channels-last maps (fewer, cheaper calls than two convolutions and the
    scaling). m: (B, R) style weights per rank."""
    n, c, h, w = x.shape
    rows = lambda t: t.permute(0, 2, 3, 1).reshape(n, h * w, t.shape[1])  # noqa: E731
    z = torch.bmm(rows(x), down.expand(n, *down.shape)) * m[:, None]
    return torch.baddbmm(rows(y), z, up.expand(n, *up.shape)).reshape(n, h, w, -1).permute(0, 3, 1, 2)


class StyleAdapters(nn.Module):
    def __init__(self, shapes: list[tuple[int, int]], rank: int = 8, styles: tuple[str, ...] = STYLES) -> None:
        super().__init__()
        self.styles, self.rank, self.shapes = tuple(styles), rank, list(shapes)
        self.convs = nn.ModuleList(LowRankStyles(i, o, len(styles), rank) for i, o in shapes)
        self._derived: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()  # see _cached

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
        style: ~6x less adapter work), and when one style is all the rows weigh (to within MIN_STYLE_WEIGHT: a
        drawn sketch is ~1.0 "sketch"), frozen adapters run as that style's merged convolutions, W + U V, at
        the frozen tower's cost. On a tower with BatchNorm folded (`models.lite.fold_batchnorm`), the adapters'
        output is scaled as the norm layer would have."""
        m = self.weights(mixture, len(x))
        keep = tuple(torch.nonzero((m >= MIN_STYLE_WEIGHT).any(0))[:, 0].tolist())
        frozen = not self.convs[0].up.weight.requires_grad
        if not keep:
            def conv(module: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
                return module(h)
        elif frozen and len(keep) == 1 and bool((m[:, keep[0]] >= 1 - MIN_STYLE_WEIGHT).all()):
            merged = iter(self._cached(tower, keep[0], lambda: self.merged_weights(keep[0], tower)))

            def conv(module: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
                return F.conv2d(h, next(merged), module.bias)
        else:
            ranks = m[:, keep].repeat_interleave(self.rank, 1)
            low_rank = iter(self._cached(tower, keep, lambda: self.kept_weights(keep, tower)) if frozen
                            else self.kept_weights(keep, tower))

            def conv(module: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
                return add_low_rank(module(h), h, ranks, *next(low_rank))

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

    def kept_weights(self, keep: tuple[int, ...], tower: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each adapted convolution's (down, up) for the styles `keep` (scaled for a folded tower)."""
        rows = (torch.tensor(keep)[:, None] * self.rank + torch.arange(self.rank)).flatten()
        folded = getattr(tower, "bn_folded", False)
        return [a.kept(rows, c.bn_scale if folded else None) for a, c in zip(self.convs, adapted_convs(tower))]

    def merged_weights(self, style: int, tower: nn.Module) -> list[torch.Tensor]:
        """Each adapted convolution's weight with `style`'s adapter added in: W + U_s V_s."""
        return [c.weight + (down @ up).T[:, :, None, None]
                for c, (down, up) in zip(adapted_convs(tower), self.kept_weights((style,), tower))]

    def _cached(self, tower: nn.Module, key: object, make: Callable[[], list]) -> list:
        """Derived weights of frozen (loaded) adapters, remembered per tower (a handful of style sets in all)."""
        known = self._derived.setdefault(tower, {})
        if key not in known:
            known[key] = make()
        return known[key]

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
