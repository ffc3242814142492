"""The aesthetic gate: the part of a `lite` encoder that ranked-DPO alignment trains (`python -m search train-align`).

A gallery image keeps a share g(x) in (floor, 1) of its reference embedding e and puts the rest in one extra
dimension no query uses: [g e, sqrt(1 - g^2)], still a unit vector. Queries get a 0 there, so every
similarity to a gallery image is scaled by its g: a bad image (blur, noise, compression, bad exposure, all
of which move the frozen tower features g is read from) sinks below good ones about as relevant, while a
relevant image stays above irrelevant ones unless its g is very low: the ranking moves toward the
aesthetic re-ranking without losing relevance.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

GATE_FEATURES = ("pooled", "mid4")  # tower outputs g is read from (the last feature map and a mid-level one)


class AestheticGate(nn.Module):
    def __init__(self, in_dim: int, floor: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"the gate's floor must be in [0, 1), got {floor}")
        self.register_buffer("feat_mean", torch.zeros(in_dim))  # input standardisation, set from training data
        self.register_buffer("feat_std", torch.ones(in_dim))
        # g never falls below the floor: a relevant image the gate misjudges still beats clearly irrelevant ones
        self.register_buffer("floor", torch.tensor(floor))
        self.badness = nn.Linear(in_dim, 1)
        nn.init.zeros_(self.badness.weight)  # g is the same for all images: the reference ranking

    def standardise_from(self, feats: dict[str, torch.Tensor]) -> None:
        """Set the input standardisation from a sample of tower outputs."""
        x = torch.cat([feats[n] for n in GATE_FEATURES], -1).float()
        self.feat_mean.copy_(x.mean(0))
        self.feat_std.copy_(x.std(0) + 1e-3)

    def keep(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) g(x) in (floor, 1): the share of similarity an image keeps."""
        x = (torch.cat([feats[n] for n in GATE_FEATURES], -1) - self.feat_mean) / self.feat_std
        return self.floor + (1 - self.floor) * torch.sigmoid(-self.badness(x)).squeeze(-1)

    def forward(self, emb: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) unit gallery embeddings -> (B, D + 1) unit embeddings [g e, sqrt(1 - g^2)]."""
        g = self.keep(feats)[:, None]
        return torch.cat([g * emb, (1 - g * g).clamp_min(0).sqrt()], -1)

    @staticmethod
    def pad_query(emb: torch.Tensor) -> torch.Tensor:
        """(B, D) query embeddings -> (B, D + 1): nothing in the gate's dimension."""
        return F.pad(emb, (0, 1))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.half() for k, v in self.state_dict().items()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> AestheticGate:
        state = torch.load(path, map_location="cpu", weights_only=True)
        gate = cls(state["feat_mean"].numel(), float(state["floor"]))
        gate.load_state_dict({k: v.float() for k, v in state.items()})
        return gate.eval().requires_grad_(False)
