"""Research maskers: fixed (deterministic) and sampling."""

from . import fixed, sampling
from .base import AttentionTensorDimensions, MaskerConfig, MaskerRegistry, ResearchMasker

__all__ = [
    "AttentionTensorDimensions",
    "MaskerConfig",
    "MaskerRegistry",
    "ResearchMasker",
    "fixed",
    "sampling",
]
