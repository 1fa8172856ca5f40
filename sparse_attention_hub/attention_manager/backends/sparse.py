"""``sparse``: the torch.ops.sah attention kernels."""

from __future__ import annotations

from typing import Optional

import torch

from ... import ops
from ..device import DeviceProperties
from ..inputs import SparseProbs
from .base import AttentionBackend

Tensor = torch.Tensor


class SparseKernelAttention(AttentionBackend):
    """``sah.sparse_attention`` on a row-form mask (reads only the listed keys) and
    ``sah.masked_attention`` on dense probabilities, or on an expanded all-ones mask (no copy)
    for dense attention. GQA without repeating K/V, float32 accumulation."""

    name = "sparse"

    def is_available(self, device: DeviceProperties) -> bool:
        return device.runs_sah_kernels

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
    ) -> Tensor:
        if sparse is not None and sparse.is_rows:
            out, _ = ops.sparse_attention(
                queries, keys, values, sparse.indices, sparse.probs, scaling, attention_mask
            )
            return out
        if sparse is None:
            shape = (*queries.shape[:3], keys.shape[2])
            probs = torch.ones((), dtype=torch.float32, device=queries.device).expand(shape)
        else:
            probs = sparse.probs
        out, _ = ops.masked_attention(queries, keys, values, probs, scaling, attention_mask)
        return out
