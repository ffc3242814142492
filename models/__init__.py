"""Encoders: one registry (`create_encoder`), two families (`lite` offline, open_clip); aesthetic scorers
(`create_scorer`, `scorer_for`)."""
import os

# OpenMP threads that spin while waiting starve other work on a 2-core Space (measured: lite at batch 1
# went from 0.7 to 26 images/s next to another busy process). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .aesthetic import AestheticScorer, ScorerError, create_scorer, list_scorers, scorer_for
from .base import Encoder
from .openclip import OfflineError
from .registry import EncoderConfig, RegistryError, create_encoder, get_config, get_encoder, list_encoders

__all__ = ["Encoder", "OfflineError", "EncoderConfig", "RegistryError", "create_encoder", "get_config", "get_encoder",
           "list_encoders", "AestheticScorer", "ScorerError", "create_scorer", "list_scorers", "scorer_for"]
