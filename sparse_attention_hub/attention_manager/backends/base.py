"""The interface every attention backend implements, and the mask algebra they share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Optional

import torch

from ...sparse_attention.utils.mask_attention_utils import _additive_mask
from ..device import DeviceProperties
from ..inputs import SparseMaskLike, SparseProbs, resolve_sparse_mask

Tensor = torch.Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (as the sah ops accumulate)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An HF mask as additive ``dtype`` values, forbidden keys -inf (never the dtype's lowest
    value, so a row with no allowed key gives output 0 as in the sah ops)."""
    return _additive_mask(attention_mask, dtype)


def probs_bias(probs: Tensor, dtype: torch.dtype) -> Tensor:
    """``log(1/p)`` for included keys and -inf for the others: adding it to the scores weights
    each key by 1/p inside the softmax."""
    probs = probs.to(dtype)
    return torch.where(probs > 0, -torch.log(probs), float("-inf"))


def grouped_scores(queries: Tensor, keys: Tensor, scaling: float, dtype: torch.dtype) -> Tensor:
    """``scaling * q.k`` (b, h, q, k) in ``dtype``; query head t reads kv head t // (h/h_kv)
    without repeating K."""
    b, h, sq, d = queries.shape
    kv_heads, sk = keys.shape[1], keys.shape[2]
    q = queries.to(dtype).reshape(b, kv_heads, (h // kv_heads) * sq, d)
    scores = torch.matmul(q, keys.to(dtype).transpose(-1, -2))
    return scores.mul_(scaling).reshape(b, h, sq, sk)


def grouped_values(weights: Tensor, values: Tensor) -> Tensor:
    """``weights`` (b, h, q, k) times ``values`` (b, h_kv, k, d) -> (b, h, q, d), GQA as in
    :func:`grouped_scores`, in ``weights``' dtype."""
    b, h, sq, sk = weights.shape
    kv_heads = values.shape[1]
    grouped = weights.reshape(b, kv_heads, (h // kv_heads) * sq, sk)
    return torch.matmul(grouped, values.to(weights.dtype)).reshape(b, h, sq, values.shape[-1])


class AttentionBackend(ABC):
    """One way to compute attention; all backends give the same output on the same inputs.

    Call it with the inputs described in :mod:`..inputs`; it returns the output (b, h, q, d) in
    the queries' dtype. A query row with no usable key gives 0.
    """

    name: ClassVar[str]

    def is_available(self, device: DeviceProperties) -> bool:
        """Whether this backend runs on ``device``."""
        return True

    def __call__(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor] = None,
        scaling: Optional[float] = None,
        sparse_mask: SparseMaskLike = None,
    ) -> Tensor:
        _check_shapes(queries, keys, values, attention_mask)
        b, h, sq, d = queries.shape
        sk = keys.shape[2]
        scale = 1.0 / math.sqrt(d) if scaling is None else float(scaling)
        mask = None if attention_mask is None else attention_mask[:, :, :, :sk]
        probs = resolve_sparse_mask(sparse_mask, (b, h, sq, sk))
        return self.forward(queries, keys, values, mask, scale, probs)

    @abstractmethod
    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
    ) -> Tensor:
        """Attention on checked inputs: the mask sliced to k keys, the scale resolved."""


def _check_shapes(
    queries: Tensor, keys: Tensor, values: Tensor, attention_mask: Optional[Tensor]
) -> None:
    for name, t in (("queries", queries), ("keys", keys), ("values", values)):
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, length, head_dim), got {t.dim()}-D"
            )
    if keys.shape != values.shape:
        raise ValueError(
            f"keys and values must have the same shape, got {tuple(keys.shape)} and "
            f"{tuple(values.shape)}"
        )
    b, h, _, d = queries.shape
    if keys.shape[0] != b or keys.shape[3] != d:
        raise ValueError(
            f"keys must have shape ({b}, kv_heads, k, {d}) to match queries, got "
            f"{tuple(keys.shape)}"
        )
    if keys.shape[1] == 0 or h % keys.shape[1] != 0:
        raise ValueError(
            f"the number of query heads ({h}) must be a multiple of the kv heads ({keys.shape[1]})"
        )
    if attention_mask is not None and (
        attention_mask.dim() != 4 or attention_mask.shape[-1] < keys.shape[2]
    ):
        raise ValueError(
            "attention_mask must be 4-D (b|1, h|1, q|1, >= k) with k = "
            f"{keys.shape[2]}, got shape {tuple(attention_mask.shape)}"
        )
