"""Typed Python wrappers of the ``torch.ops.sah`` operators.

A mask in *row form* is a pair ``(indices, probs)`` of shape ``(..., cap)``: ``indices`` (int32)
lists distinct key indices of each row in ascending order, padded at the end with -1, and
``probs`` (float32) holds each key's inclusion probability ``p`` in (0, 1]. Attention weights a
key by ``1/p``. ``cap`` is a static bound chosen from the configuration and shapes, never from
the data, so every op has a static output shape.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


def _scale(q: Tensor, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    probs: Tensor,
    scale: Optional[float] = None,
    attention_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Attention over the keys listed in a row-form mask, each weighted by ``1/p``.

    Shapes: ``q`` (b, h, sq, d); ``k``, ``v`` (b, h_kv, sk, d) with ``h % h_kv == 0`` (GQA: query
    head ``t`` reads kv head ``t // (h // h_kv)``, nothing is copied); ``indices``/``probs``
    (b, h, sq, cap). ``attention_mask`` is optional, 4-D ``(b|1, h|1, sq|1, >= sk)``, either
    additive float (0 allowed; -inf or the dtype's lowest value forbids) or bool (True allowed).
    Returns ``out`` (b, h, sq, d) in q's dtype and ``lse`` (b, h, sq) float32, the log of the
    weighted softmax denominator. A row with no usable key gives ``out = 0`` and ``lse = -inf``.
    Differentiable in q, k and v.

    Example::

        idx = torch.tensor([[[[0, 2, -1]]]], dtype=torch.int32)
        p = torch.tensor([[[[1.0, 0.5, 0.0]]]])
        out, lse = sparse_attention(q, k, v, idx, p)
    """
    return torch.ops.sah.sparse_attention(q, k, v, indices, probs, _scale(q, scale), attention_mask)


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
    scale: Optional[float] = None,
    attention_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Attention under a dense probability mask ``probs`` (b, h, sq, sk) float32.

    Key ``j`` of row ``i`` takes part when ``probs[..., i, j] > 0`` and is weighted by
    ``1/probs``; otherwise as :func:`sparse_attention`. Expanded (stride-0) ``probs`` are read
    without a copy.
    """
    return torch.ops.sah.masked_attention(q, k, v, probs, _scale(q, scale), attention_mask)


def mask_union(
    indices_a: Tensor, probs_a: Tensor, indices_b: Tensor, probs_b: Tensor, num_keys: int
) -> Tuple[Tensor, Tensor]:
    """Union of two row-form masks with ``p = min(1, p_a + p_b)``.

    The output capacity is ``min(cap_a + cap_b, num_keys)``.
    """
    return torch.ops.sah.mask_union(indices_a, probs_a, indices_b, probs_b, num_keys)


def rows_to_dense(indices: Tensor, probs: Tensor, num_keys: int) -> Tensor:
    """Dense float32 probabilities ``(..., num_keys)`` of a row-form mask."""
    return torch.ops.sah.rows_to_dense(indices, probs, num_keys)


def dense_to_rows(dense: Tensor) -> Tuple[Tensor, Tensor]:
    """Row form (capacity = number of columns) of dense float32 probabilities."""
    return torch.ops.sah.dense_to_rows(dense)


def row_counts(indices: Tensor, probs: Tensor) -> Tensor:
    """Number of keys per row (index >= 0 and p > 0), int32 of shape ``(...)``."""
    return torch.ops.sah.row_counts(indices, probs)


__all__ = [
    "sparse_attention",
    "masked_attention",
    "mask_union",
    "rows_to_dense",
    "dense_to_rows",
    "row_counts",
]
