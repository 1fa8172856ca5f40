"""Adaptive sampling (vAttention): per-query sample sizes from an (epsilon, delta) error bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .....utils.mask import Mask
from ...base import AttentionTensorDimensions, MaskerRegistry
from ..base import SamplingMasker, SamplingMaskerConfig
from .seeding import check_seed, layer_index, resolve_seed

Tensor = torch.Tensor


def _check_offset(name: str, value: Union[int, float]) -> None:
    if isinstance(value, float):
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1] if float, got {value}")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be non-negative if int, got {value}")
    else:
        raise ValueError(f"{name} must be int or float, got {type(value)}")


@dataclass
class AdaptiveSamplingMaskerConfig(SamplingMaskerConfig):
    """vAttention's sampler.

    ``base_rate_sampling``: base sample size, a count (int >= 0) or a fraction of the sampling
    range (float in [0, 1)); 0 turns the masker off. ``epsilon``, ``delta`` in (0, 1): the
    denominator estimate should be within a relative ``epsilon`` with probability ``1 - delta``.
    ``init_offset`` / ``local_offset``: keys skipped at the start / end of the sequence (count,
    or float fraction of the keys). ``seed``: fixes the samples (None: a fresh seed per call).
    """

    base_rate_sampling: Union[int, float]
    epsilon: float
    delta: float
    init_offset: Union[int, float]
    local_offset: Union[int, float]
    search_space: Dict[str, Any] = field(
        default_factory=lambda: {
            "base_rate_sampling": {"grid_search": [0.01, 0.02, 0.03]},
            "epsilon": {"grid_search": [0.05, 0.1, 0.2, 0.3]},
            "delta": {"grid_search": [0.05, 0.1, 0.2, 0.3]},
        }
    )
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        rate = self.base_rate_sampling
        if isinstance(rate, float):
            if not (0.0 <= rate < 1.0):
                raise ValueError(f"base_rate_sampling must be in [0, 1) if float, got {rate}")
        elif isinstance(rate, int):
            if rate < 0:
                raise ValueError(f"base_rate_sampling must be non-negative if int, got {rate}")
        else:
            raise ValueError(f"base_rate_sampling must be int or float, got {type(rate)}")
        if not (0.0 < self.epsilon < 1.0):
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if not (0.0 < self.delta < 1.0):
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        _check_offset("init_offset", self.init_offset)
        _check_offset("local_offset", self.local_offset)
        check_seed(self.seed)


@MaskerRegistry.register(AdaptiveSamplingMaskerConfig)
class AdaptiveSamplingMasker(SamplingMasker):
    """Samples each query's keys with a budget chosen so the softmax denominator is estimated
    within relative error ``epsilon`` with probability about ``1 - delta``.

    The sampling range is ``[init_offset, keys - local_offset)``; a range shorter than 2 gives
    dense attention. Per query (all on the device, no host sync): the candidates are the range's
    keys that the query may attend to and the previous mask does not hold (the previous
    maskers' keys are counted exactly, never re-sampled). A base sample of ``nb`` candidates
    (without replacement) estimates the spread ``sigma`` of ``exp(score)`` and, with the previous
    keys weighted ``1/p``, the denominator ``D``. The budget for ``m`` candidates is
    ``B = clamp((z * sigma * m / (epsilon * D))^2, 1, m)``, at least ``nb``, with
    ``z = Phi^-1(1 - delta)``; ``B`` candidates are then drawn without replacement, independently
    of the base sample, and recorded with ``p = B / m``. The base sample only informs ``B``.
    """

    def __init__(self, config: AdaptiveSamplingMaskerConfig) -> None:
        super().__init__(config)
        self.base_rate_sampling = config.base_rate_sampling
        self.epsilon = config.epsilon
        self.delta = config.delta
        self.init_offset = config.init_offset
        self.local_offset = config.local_offset
        self.seed = config.seed
        self.delta_ppf = float(NormalDist().inv_cdf(1.0 - self.delta))

    def _get_sampling_range(self, seq_len_keys: Any) -> Tuple[Any, Any, Any]:
        """``(start, end, end - start)`` of the sampling range (offsets: float = fraction)."""
        if isinstance(self.init_offset, float):
            start = torch.sym_int(self.init_offset * seq_len_keys)
        else:
            start = self.init_offset
        if isinstance(self.local_offset, float):
            end = seq_len_keys - torch.sym_int(self.local_offset * seq_len_keys)
        else:
            end = seq_len_keys - self.local_offset
        return start, end, end - start

    def _get_base_sample_count(self, sampling_range: Any) -> Any:
        """Base sample size: at least 2 (it estimates a standard deviation)."""
        if isinstance(self.base_rate_sampling, int):
            return max(2, self.base_rate_sampling)
        return torch.sym_max(2, torch.sym_int(self.base_rate_sampling * sampling_range))

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
        if self.base_rate_sampling == 0:  # the reference returns the previous mask itself
            return previous_mask
        return super().add_mask(
            keys,
            queries,
            values,
            attention_mask,
            scaling,
            dropout,
            sparse_meta_data,
            previous_mask,
            **kwargs,
        )

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        return self._get_sampling_range(dims.seq_len_keys)[2] < 2

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        start, end, sampling_range = self._get_sampling_range(keys.shape[2])
        return torch.ops.sah.adaptive_sampling_mask(
            queries,
            keys,
            indices,
            probs,
            context["attention_mask"],
            float(context["scaling"]),
            self._get_base_sample_count(sampling_range),
            float(self.epsilon),
            self.delta_ppf,
            start,
            end,
            resolve_seed(self.seed),
            layer_index(context),
        )

    @classmethod
    def create_from_config(cls, config: AdaptiveSamplingMaskerConfig) -> "AdaptiveSamplingMasker":
        return cls._checked(config, AdaptiveSamplingMaskerConfig)
