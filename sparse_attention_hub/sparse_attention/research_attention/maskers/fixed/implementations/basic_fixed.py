"""Position-based maskers: local window, attention sinks, and the no-op causal masker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .....utils.mask import Mask
from ...base import AttentionTensorDimensions, MaskerRegistry
from ..base import FixedMasker, FixedMaskerConfig

Tensor = torch.Tensor


@dataclass
class LocalMaskerConfig(FixedMaskerConfig):
    """The ``window_size`` most recent keys of each query, its own position included."""

    window_size: Union[int, float]
    search_space: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window_size <= 0:
            raise ValueError(f"window_size must be > 0, got {self.window_size}")


@dataclass
class SinkMaskerConfig(FixedMaskerConfig):
    """The first ``sink_size`` keys of the sequence (attention sinks)."""

    sink_size: Union[int, float]
    search_space: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sink_size <= 0:
            raise ValueError(f"sink_size must be > 0, got {self.sink_size}")


@MaskerRegistry.register(LocalMaskerConfig)
class LocalMasker(FixedMasker):
    """Sliding window: the last ``w`` keys each query may see, itself included (keys
    ``p - w + 1 .. p`` for the query at position ``p`` of an unpadded causal sequence)."""

    def __init__(self, config: LocalMaskerConfig) -> None:
        super().__init__(config)
        self.window_size = config.window_size

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        w = self._calculate_effective_size(self.window_size, dims.seq_len_keys)
        return dims.seq_len_keys <= w + dims.seq_len_queries

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        n = keys.shape[2]
        w = self._calculate_effective_size(self.window_size, n)
        return torch.ops.sah.local_mask(indices, probs, context["attention_mask"], n, w)

    @classmethod
    def create_from_config(cls, config: LocalMaskerConfig) -> "LocalMasker":
        return cls._checked(config, LocalMaskerConfig)


@MaskerRegistry.register(FixedMaskerConfig)
class CausalMasker(FixedMasker):
    """Adds nothing: causality is enforced by the attention mask (as in the reference)."""

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
        return previous_mask  # the same object: an EMPTY mask stays EMPTY (= dense)

    @classmethod
    def create_from_config(cls, config: FixedMaskerConfig) -> "CausalMasker":
        return cls._checked(config, FixedMaskerConfig)


@MaskerRegistry.register(SinkMaskerConfig)
class SinkMasker(FixedMasker):
    """Attention sinks: the first ``s`` keys each query may see."""

    def __init__(self, config: SinkMaskerConfig) -> None:
        super().__init__(config)
        self.sink_size = config.sink_size

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        n = dims.seq_len_keys
        return n <= self._calculate_effective_size(self.sink_size, n)

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        n = keys.shape[2]
        s = self._calculate_effective_size(self.sink_size, n)
        return torch.ops.sah.sink_mask(indices, probs, context["attention_mask"], n, s)

    @classmethod
    def create_from_config(cls, config: SinkMaskerConfig) -> "SinkMasker":
        return cls._checked(config, SinkMaskerConfig)
