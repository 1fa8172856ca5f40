"""Random sampling: a uniform sample of keys per query, each weighted by 1/p."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .....utils.mask import Mask
from ...base import MaskerRegistry, padding_or_4d_mask
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

    def add_mask(
        self,
        keys: Tensor,
        queries: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]],
        previous_mask: Mask,
        **kwargs: Any,
    ) -> Mask:
        if previous_mask.is_full_mask():
            return previous_mask
        n = keys.shape[2]
        num_samples = torch.sym_int(self.sampling_rate * n)
        indices, probs = previous_mask.get_rows()
        indices, probs = torch.ops.sah.random_sampling_mask(
            indices,
            probs,
            padding_or_4d_mask(attention_mask, n),
            n,
            num_samples,
            resolve_seed(self.seed),
            layer_index(kwargs),
        )
        return self._rows_mask(previous_mask, indices, probs)

    @classmethod
    def create_from_config(cls, config: RandomSamplingMaskerConfig) -> "RandomSamplingMasker":
        return cls._checked(config, RandomSamplingMaskerConfig)
