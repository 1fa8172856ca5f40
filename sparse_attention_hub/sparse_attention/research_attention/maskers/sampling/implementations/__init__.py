"""Sampling masker implementations."""

from .adaptive_sampling import AdaptiveSamplingMasker, AdaptiveSamplingMaskerConfig
from .magic_pig import MagicPig, MagicPigConfig, MagicPigLayerState
from .random_sampling import RandomSamplingMasker, RandomSamplingMaskerConfig

__all__ = [
    "AdaptiveSamplingMasker",
    "AdaptiveSamplingMaskerConfig",
    "MagicPig",
    "MagicPigConfig",
    "MagicPigLayerState",
    "RandomSamplingMasker",
    "RandomSamplingMaskerConfig",
]
