"""Base of sparse attention mechanisms: ``SparseAttentionConfig`` and ``SparseAttention``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn


@dataclass
class SparseAttentionConfig:
    """Configuration of a sparse attention mechanism (base of all attention configs)."""


class SparseAttention(ABC):
    """A sparse attention mechanism: computes attention for one layer call of a model."""

    sparse_attention_config: SparseAttentionConfig

    def __init__(self, sparse_attention_config: SparseAttentionConfig) -> None:
        """Stores the configuration."""
        self.sparse_attention_config = sparse_attention_config

    @abstractmethod
    def custom_attention(
        self,
        module: Optional[nn.Module],
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Dict[Any, Any],
        **kwargs: Any,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attention output (b, sq, h, d) and optional weights (b, h, sq, sk) for one call."""

    def pre_attention_hook_generator(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Hook for model integration; none by default."""

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "SparseAttention":
        """Builds the mechanism that ``config`` describes: a ``ResearchAttentionConfig`` (or
        subclass) routes to ``ResearchAttention.create_from_config``, an
        ``EfficientAttentionConfig`` (or subclass) to ``EfficientAttention.create_from_config``;
        any other config gives ``cls(config)``."""
        from .efficient_attention import EfficientAttention, EfficientAttentionConfig  # (cycle)
        from .research_attention import ResearchAttention, ResearchAttentionConfig  # (cycle)

        if isinstance(config, ResearchAttentionConfig):
            return ResearchAttention.create_from_config(config)
        if isinstance(config, EfficientAttentionConfig):
            return EfficientAttention.create_from_config(config)
        return cls(config)


__all__ = ["SparseAttention", "SparseAttentionConfig"]
