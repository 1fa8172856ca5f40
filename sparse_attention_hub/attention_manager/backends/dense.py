"""``dense``: eager attention in PyTorch, the reference the other backends must match."""

from __future__ import annotations

from typing import Optional

import torch

from ..inputs import SparseProbs
from .base import (
    AttentionBackend,
    accumulation_dtype,
    additive_mask,
    grouped_scores,
    grouped_values,
    probs_bias,
)

Tensor = torch.Tensor


class DenseAttention(AttentionBackend):
    """Full scores (b, h, q, k) in float32 (float64 for float64 inputs), additive mask and
    ``log(1/p)`` bias, softmax, times V. Memory grows with q * k: a reference, not a fast path."""

    name = "dense"

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
    ) -> Tensor:
        acc = accumulation_dtype(queries.dtype)
        scores = grouped_scores(queries, keys, scaling, acc)
        if attention_mask is not None:
            scores += additive_mask(attention_mask, acc)
        if sparse is not None:
            scores += probs_bias(sparse.dense(keys.shape[2]), acc)
        row_max = scores.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        weights = scores.sub_(row_max).exp_()
        total = weights.sum(dim=-1, keepdim=True)
        weights.div_(torch.where(total > 0, total, 1.0))
        return grouped_values(weights, values).to(queries.dtype)
