"""Model servers: process-wide caches of loaded models and tokenizers."""

from .base import ModelServer
from .huggingface import ModelServerHF

__all__ = ["ModelServer", "ModelServerHF"]
