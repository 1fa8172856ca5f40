"""ResearchAttention: a chain of maskers followed by attention over the resulting mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..base import SparseAttention, SparseAttentionConfig
from ..utils.mask import Mask
from ..utils.mask_attention_utils import get_masked_attention_output
from .maskers.base import MaskerConfig, ResearchMasker
from .maskers.sampling.base import SamplingMasker

Tensor = torch.Tensor


@dataclass
class ResearchAttentionConfig(SparseAttentionConfig):
    """The maskers of a research attention chain, applied in list order."""

    masker_configs: List[MaskerConfig]


class ResearchAttention(SparseAttention):
    """Composes maskers into one sparse mask per call, then attends over it.

    Every masker is a ``torch.ops.sah`` operator on the row form of the mask, so a decode step
    runs without host syncs and compiles with ``torch.compile(fullgraph=True)``. A mask still
    EMPTY after the chain (no masker chose anything) or FULL means dense attention.
    """

    def __init__(
        self, sparse_attention_config: SparseAttentionConfig, maskers: List[ResearchMasker]
    ) -> None:
        super().__init__(sparse_attention_config)
        if sum(isinstance(m, SamplingMasker) for m in maskers) > 1:
            raise ValueError(
                "Only one sampling masker supported for efficiency; consider implementing all "
                "sampling logic in one masker"
            )
        self.maskers = maskers
        #: Optional callback ``observer(event: dict)`` called after each attention call with
        #: ``layer_idx``, ``mask``, the inputs and ``output`` (for metrics; None costs nothing).
        self.observer: Optional[Callable[[Dict[str, Any]], None]] = None

    def compute_mask(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]],
        **kwargs: Any,
    ) -> Mask:
        """Runs the masker chain from an EMPTY mask of shape (b, h, sq, sk)."""
        shape = (queries.shape[0], queries.shape[1], queries.shape[2], keys.shape[2])
        mask = Mask.create_empty_mask(shape, dtype=queries.dtype, device=queries.device)
        for masker in self.maskers:
            mask = masker.add_mask(
                keys=keys,
                queries=queries,
                values=values,
                attention_mask=attention_mask,
                scaling=scaling,
                dropout=dropout,
                sparse_meta_data=sparse_meta_data,
                previous_mask=mask,
                **kwargs,
            )
        return mask

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
        """Attention output (b, sq, h, d) and, only when ``output_attentions=True`` is passed,
        the weights (b, h, sq, sk) (the reference always builds them; they cost a dense QK^T)."""
        want_weights = bool(kwargs.pop("output_attentions", False))
        mask = self.compute_mask(
            queries, keys, values, attention_mask, scaling, dropout, sparse_meta_data, **kwargs
        )
        training = module is not None and module.training and dropout > 0.0
        if (mask.is_full_mask() or mask.is_empty_mask()) and not want_weights and not training:
            result = (_dense_attention(queries, keys, values, attention_mask, scaling), None)
        else:
            out = get_masked_attention_output(
                module,
                queries,
                keys,
                values,
                attention_mask,
                scaling,
                dropout,
                mask,
                return_attention_weights=want_weights,
            )
            result = out if want_weights else (out, None)
        if self.observer is not None:
            self.observer(
                dict(
                    layer_idx=kwargs.get("layer_idx"),
                    mask=mask,
                    queries=queries,
                    keys=keys,
                    values=values,
                    attention_mask=attention_mask,
                    scaling=scaling,
                    output=result[0],
                )
            )
        return result

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "ResearchAttention":
        """Builds each masker through the registry, in list order."""
        if not isinstance(config, ResearchAttentionConfig):
            raise TypeError(f"Expected ResearchAttentionConfig, got {type(config)}")
        maskers = [ResearchMasker.create_masker_from_config(c) for c in config.masker_configs]
        return cls(config, maskers)


def _dense_attention(
    queries: Tensor, keys: Tensor, values: Tensor, attention_mask: Optional[Tensor], scaling: float
) -> Tensor:
    """Dense attention through SDPA (FlashAttention / memory-efficient kernels on GPU)."""
    mask = None
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[:, :, :, : keys.shape[2]]
        if mask.dtype != torch.bool and mask.dtype != queries.dtype:
            mask = mask.to(queries.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous()
