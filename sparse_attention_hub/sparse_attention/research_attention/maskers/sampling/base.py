"""Base classes of the sampling maskers (keys included with a probability p, weighted 1/p)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MaskerConfig, MaskerRegistry, ResearchMasker


@MaskerRegistry.mark_exact_only
@dataclass
class SamplingMaskerConfig(MaskerConfig):
    """Base config of sampling maskers."""


class SamplingMasker(ResearchMasker):
    """Maskers that sample keys; at most one may appear in a ResearchAttention chain."""
