"""Sampling maskers."""

from .base import SamplingMasker, SamplingMaskerConfig
from .implementations import (
    MagicPig,
    MagicPigConfig,
    RandomSamplingMasker,
    RandomSamplingMaskerConfig,
)

__all__ = [
    "MagicPig",
    "MagicPigConfig",
    "RandomSamplingMasker",
    "RandomSamplingMaskerConfig",
    "SamplingMasker",
    "SamplingMaskerConfig",
]
