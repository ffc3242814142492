"""Encoders: one registry (`create_encoder`), two families (`lite` offline, open_clip)."""
from .base import Encoder
from .openclip import OfflineError
from .registry import EncoderConfig, RegistryError, create_encoder, get_config, get_encoder, list_encoders

__all__ = ["Encoder", "OfflineError", "EncoderConfig", "RegistryError", "create_encoder", "get_config", "get_encoder",
           "list_encoders"]
