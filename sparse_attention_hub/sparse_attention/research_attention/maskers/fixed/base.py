"""Base classes and configs of the fixed (deterministic) maskers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..base import AttentionTensorDimensions, MaskerConfig, MaskerRegistry, ResearchMasker


@MaskerRegistry.mark_exact_only
@dataclass
class FixedMaskerConfig(MaskerConfig):
    """Base config of fixed maskers; on its own it builds the (no-op) ``CausalMasker``."""


@MaskerRegistry.mark_exact_only
@dataclass
class TopKMaskerConfig(FixedMaskerConfig):
    """Top-k maskers: ``heavy_size`` keys per row (a float is a fraction of the keys)."""

    heavy_size: Union[int, float]

    def __post_init__(self) -> None:
        if self.heavy_size <= 0:
            raise ValueError(f"heavy_size must be > 0, got {self.heavy_size}")


@MaskerRegistry.mark_exact_only
@dataclass
class TopPMaskerConfig(FixedMaskerConfig):
    """Top-p maskers: the smallest set of keys holding more than ``top_p`` of the mass."""

    top_p: Union[int, float]

    def __post_init__(self) -> None:
        if isinstance(self.top_p, bool) or not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in range [0, 1], got {self.top_p}")


class FixedMasker(ResearchMasker):
    """Deterministic maskers (no sampling)."""


class TopKMasker(FixedMasker):
    """Maskers that add the ``heavy_size`` best-scoring keys not yet selected."""

    heavy_size: Union[int, float]

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        """A budget of every key keeps them all (subclasses with other units override this)."""
        return dims.seq_len_keys <= self._calculate_effective_size(
            self.heavy_size, dims.seq_len_keys
        )


class TopPMasker(FixedMasker):
    """Maskers that add keys until a share ``top_p`` of the remaining mass is covered."""
