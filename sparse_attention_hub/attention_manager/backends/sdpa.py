"""``sdpa``: torch's scaled_dot_product_attention (FlashAttention, memory-efficient or cuDNN
kernels as torch picks)."""

from __future__ import annotations

from typing import Optional

import torch

from ..inputs import SparseProbs
from .base import AttentionBackend, accumulation_dtype, additive_mask, probs_bias

Tensor = torch.Tensor


class SDPAAttention(AttentionBackend):
    """``scaled_dot_product_attention(..., enable_gqa=True)``.

    A sparse mask becomes an additive ``log(1/p)`` bias of shape (b, h, q, k) in the queries'
    dtype (materialised: the selection accounts for it). A bool attention mask is passed as it
    is; a float one is rewritten with -inf for forbidden keys, so a row with no usable key gives
    0 as in the sah ops.
    """

    name = "sdpa"

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
    ) -> Tensor:
        bias = attention_mask
        if sparse is not None:
            acc = accumulation_dtype(queries.dtype)
            bias = probs_bias(sparse.dense(keys.shape[2]), acc)
            if attention_mask is not None:
                bias += additive_mask(attention_mask, acc)
            bias = bias.to(queries.dtype)
        elif attention_mask is not None and attention_mask.dtype != torch.bool:
            bias = additive_mask(attention_mask, queries.dtype)
        return torch.nn.functional.scaled_dot_product_attention(
            queries, keys, values, attn_mask=bias, scale=scaling, enable_gqa=True
        )
