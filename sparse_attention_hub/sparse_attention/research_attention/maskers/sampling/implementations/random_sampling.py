"""Random sampling: a uniform sample of keys per query, each weighted by 1/p."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ...base import MaskerRegistry
from ..base import SamplingMasker, SamplingMaskerConfig
from .seeding import check_seed, layer_index, resolve_seed

Tensor = torch.Tensor


@dataclass
class RandomSamplingMaskerConfig(SamplingMaskerConfig):
    """``int(sampling_rate * keys)`` keys per query, drawn without replacement.

    ``seed`` fixes the sample (None: a fresh seed per call from torch's default generator).
    """

    sampling_rate: float
    search_space: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not (0.0 < self.sampling_rate <= 1.0):
            raise ValueError(f"sampling_rate must be in range (0, 1], got {self.sampling_rate}")
        check_seed(self.seed)


@MaskerRegistry.register(RandomSamplingMaskerConfig)
class RandomSamplingMasker(SamplingMasker):
    """Adds ``n = int(sampling_rate * keys)`` keys per query, uniformly without replacement.

    The candidates of a query are the keys it may attend to (the attention mask and causality
    allow them) that the previous mask does not hold yet. With ``m`` candidates each is picked
    with probability ``min(n, m) / m``, which is the value recorded, so the ``1/p``-weighted
    attention sums are unbiased. Previous entries are kept unchanged. ``n = 0`` adds nothing.
    """

    def __init__(self, config: RandomSamplingMaskerConfig) -> None:
        super().__init__(config)
        self.sampling_rate = config.sampling_rate
        self.seed = config.seed

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        n = keys.shape[2]
        return torch.ops.sah.random_sampling_mask(
            indices,
            probs,
            context["attention_mask"],
            n,
            torch.sym_int(self.sampling_rate * n),
            resolve_seed(self.seed),
            layer_index(context),
        )

    @classmethod
    def create_from_config(cls, config: RandomSamplingMaskerConfig) -> "RandomSamplingMasker":
        return cls._checked(config, RandomSamplingMaskerConfig)
