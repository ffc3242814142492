"""Style-conditioned adapters for the `lite` image head (FreestyleRet's style conditioning, for a CNN).

FreestyleRet conditions a ViT with style prompt tokens built from the query's style mixture. The
`lite` image tower is a frozen CNN whose outputs feed a small MLP head, so the equivalent here acts on
that head: every style s has a low-rank residual on the first layer (h += U_s V_s x) and a FiLM
(h = h * (1 + gamma_s) + beta_s), and a query applies them weighted by its style mixture m:

    h = W1 x + b1;   h <- h * (1 + m @ gamma) + m @ beta + sum_s m_s U_s V_s x

The photo style has no adapter (its weight is dropped), so a photo, and every gallery image, which
is encoded as a photo, gets exactly the unconditioned embedding: the index never changes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .style import STYLES

PHOTO = STYLES.index("photo")


class StyleAdapters(nn.Module):
    def __init__(self, in_dim: int, hidden: int, rank: int = 32, styles: tuple[str, ...] = STYLES) -> None:
        super().__init__()
        n = len(styles)
        self.styles, self.rank = tuple(styles), rank
        self.down = nn.Parameter(torch.randn(n, in_dim, rank) * in_dim**-0.5)   # V_s
        self.up = nn.Parameter(torch.zeros(n, rank, hidden))                     # U_s (zero: starts as identity)
        self.gamma = nn.Parameter(torch.zeros(n, hidden))
        self.beta = nn.Parameter(torch.zeros(n, hidden))

    def forward(self, x: torch.Tensor, h: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim) head input; h: (B, hidden) first-layer pre-activation; mixture: (B, n_styles)."""
        if mixture.shape != (len(x), len(self.styles)):
            raise ValueError(f"style mixture must have shape ({len(x)}, {len(self.styles)}), "
                             f"got {tuple(mixture.shape)}")
        m = mixture.float().clone()
        m[:, PHOTO] = 0.0                                                      # photos stay unconditioned
        low = torch.einsum("bi,nir->bnr", x, self.down)                        # (B, n, rank)
        delta = torch.einsum("bnr,nrh,bn->bh", low, self.up, m)                # (B, hidden)
        return h * (1 + m @ self.gamma) + m @ self.beta + delta

    def save(self, path: str | Path) -> None:
        """fp16, like the heads (the file is committed)."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save({"styles": list(self.styles), "rank": self.rank,
                    "state": {k: v.half() for k, v in self.state_dict().items()}}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> StyleAdapters:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.float() for k, v in blob["state"].items()}
        n, in_dim, rank = state["down"].shape
        adapters = cls(in_dim, state["up"].shape[2], rank, tuple(blob["styles"]))
        if adapters.styles != STYLES:
            raise ValueError(f"{path}: adapters were trained for styles {adapters.styles}, this code knows {STYLES}")
        adapters.load_state_dict(state)
        return adapters.eval().requires_grad_(False)
