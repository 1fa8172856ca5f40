"""Base of the efficient attention mechanisms: a fixed chain of masker operators and attention,
run directly on the row form of the mask.

An efficient mechanism computes what the equivalent ``ResearchAttention`` chain computes, with
the same ``torch.ops.sah`` operators in the same order, so its output is identical; it skips the
``Mask`` objects and the reference API around them, and never returns attention weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ... import ops
from ..base import SparseAttention, SparseAttentionConfig
from ..research_attention.base import _dense_attention
from ..research_attention.maskers.base import ResearchMasker, padding_or_4d_mask

Tensor = torch.Tensor


@dataclass
class EfficientAttentionConfig(SparseAttentionConfig):
    """Base configuration of the efficient attention mechanisms."""


class EfficientAttention(SparseAttention):
    """A sparse attention mechanism with a fused fast path (see the module docstring)."""

    def __init__(self, sparse_attention_config: SparseAttentionConfig) -> None:
        super().__init__(sparse_attention_config)

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "EfficientAttention":
        """Builds the mechanism registered for ``type(config)`` or its nearest registered base.

        Raises:
            TypeError: if ``config`` is not an ``EfficientAttentionConfig``.
            ValueError: if no mechanism is registered for it.
        """
        if not isinstance(config, EfficientAttentionConfig):
            raise TypeError(f"Expected EfficientAttentionConfig, got {type(config)}")
        from .implementations import (  # (cycle: implementations import this module)
            DoubleSparsity,
            DoubleSparsityConfig,
            HashAttention,
            HashAttentionConfig,
        )

        registry: Dict[type, type] = {
            DoubleSparsityConfig: DoubleSparsity,
            HashAttentionConfig: HashAttention,
        }
        for config_type in type(config).__mro__:
            if config_type in registry:
                return registry[config_type].create_from_config(config)
        raise ValueError(f"No efficient attention class found for config type: {type(config)}")

    def masker_chain(self) -> Sequence[ResearchMasker]:
        """The maskers this mechanism runs, in order."""
        raise NotImplementedError(f"{type(self).__name__} must define masker_chain")

    def custom_attention(
        self,
        module: Optional[nn.Module],
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]] = None,
        **kwargs: Any,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention output (b, sq, h, d) and None (never weights); each masker first checks its
        inputs as it does in a ResearchAttention chain (e.g. ``sparse_meta_data``/``layer_idx``,
        ValueError)."""
        kwargs.pop("output_attentions", None)
        maskers = self.masker_chain()
        for masker in maskers:
            masker._validate(sparse_meta_data, keys=keys, queries=queries, **kwargs)
        out = self._chain_attention(
            maskers,
            module,
            queries,
            keys,
            values,
            attention_mask,
            scaling,
            dropout,
            sparse_meta_data,
            **kwargs,
        )
        return out, None

    @staticmethod
    def _chain_attention(
        maskers: Sequence[ResearchMasker],
        module: Optional[nn.Module],
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]],
        **kwargs: Any,
    ) -> Tensor:
        """Output (b, sq, h, d) of attention over the union of the maskers' picks.

        Dense attention (SDPA) when any masker covers every key, as ``ResearchAttention`` does
        for a FULL mask; otherwise each masker's operator runs on the rows built so far, then
        ``sah::sparse_attention``. Inference only: dropout in training is refused.
        """
        if module is not None and module.training and dropout > 0.0:
            raise NotImplementedError(
                "efficient attention has no dropout; use ResearchAttention to train with "
                f"dropout={dropout}"
            )
        dims = ResearchMasker._extract_tensor_dimensions(keys, queries)
        if any(masker._covers_all(dims) for masker in maskers):
            return _dense_attention(queries, keys, values, attention_mask, scaling)
        k_len = dims.seq_len_keys
        lead = (dims.batch_size, dims.num_heads, dims.seq_len_queries, 0)
        indices = torch.empty(lead, dtype=torch.int32, device=queries.device)
        probs = torch.empty(lead, dtype=torch.float32, device=queries.device)
        masker_mask = padding_or_4d_mask(attention_mask)
        for masker in maskers:
            indices, probs = masker._select(
                indices,
                probs,
                keys=keys,
                queries=queries,
                values=values,
                attention_mask=masker_mask,
                scaling=scaling,
                sparse_meta_data=sparse_meta_data,
                **kwargs,
            )
        mask_4d = None if attention_mask is None else attention_mask[:, :, :, :k_len]
        out, _ = ops.sparse_attention(queries, keys, values, indices, probs, scaling, mask_4d)
        return out.transpose(1, 2).contiguous()


__all__ = ["EfficientAttention", "EfficientAttentionConfig"]
