"""``chunked``: dense attention over query blocks and key chunks with an online softmax, so
memory stays bounded however long the query block and the key sequence are."""

from __future__ import annotations

from typing import Optional, Tuple

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


def chunk_sizes(
    batch: int, heads: int, q_len: int, k_len: int, query_block: int, chunk_bytes: int
) -> Tuple[int, int]:
    """(queries per block, keys per chunk): one chunk of float32 scores holds at most
    ``chunk_bytes`` (at least 64 keys; a multiple of 64 unless it covers all keys)."""
    q_block = max(1, min(q_len, query_block))
    keys = max(64, chunk_bytes // (4 * batch * heads * q_block))
    keys = keys - keys % 64
    return q_block, min(k_len, keys)


def _rows_chunk_bias(sparse: SparseProbs, start: int, width: int, dtype: torch.dtype) -> Tensor:
    """``log(1/p)`` bias of keys ``start:start+width`` from a row-form mask, (b, h, q, width):
    the row entries inside the chunk are scattered into it (the others go to a spare column)."""
    local = sparse.indices.long() - start
    inside = (sparse.indices >= 0) & (local >= 0) & (local < width) & (sparse.probs > 0)
    target = torch.where(inside, local, width)
    dense = torch.zeros(*sparse.indices.shape[:3], width + 1, device=sparse.probs.device)
    dense.scatter_(-1, target, torch.where(inside, sparse.probs, 0.0))
    return probs_bias(dense[..., :width], dtype)


class ChunkedAttention(AttentionBackend):
    """Online-softmax attention in PyTorch: for each block of ``query_block`` queries, scores of
    one key chunk at a time (a chunk of float32 scores holds at most ``chunk_bytes``); the full
    (q, k) score matrix never exists. Masks and the ``log(1/p)`` bias of a sparse mask are
    applied chunk by chunk (a row-form mask without densifying it). Python loops over blocks and
    chunks, never over heads or rows, and no host sync."""

    name = "chunked"

    def __init__(self, query_block: int = 128, chunk_bytes: int = 16 * 2**20) -> None:
        if query_block < 1:
            raise ValueError(f"query_block must be >= 1, got {query_block}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.query_block = query_block
        self.chunk_bytes = chunk_bytes

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
    ) -> Tensor:
        b, h, sq, d = queries.shape
        sk = keys.shape[2]
        q_block, k_chunk = chunk_sizes(b, h, sq, sk, self.query_block, self.chunk_bytes)
        out = torch.empty_like(queries)
        for q0 in range(0, sq, q_block):
            q1 = min(sq, q0 + q_block)
            mask = attention_mask
            if mask is not None and mask.shape[2] != 1:
                mask = mask[:, :, q0:q1]
            rows = None if sparse is None else sparse.query_rows(q0, q1)
            out[:, :, q0:q1] = self._query_block(
                queries[:, :, q0:q1], keys, values, mask, scaling, rows, k_chunk
            )
        return out

    @staticmethod
    def _query_block(
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        sparse: Optional[SparseProbs],
        k_chunk: int,
    ) -> Tensor:
        acc = accumulation_dtype(queries.dtype)
        b, h, n, d = queries.shape
        sk = keys.shape[2]
        row_max = torch.full((b, h, n, 1), float("-inf"), dtype=acc, device=queries.device)
        total = torch.zeros((b, h, n, 1), dtype=acc, device=queries.device)
        numerator = torch.zeros((b, h, n, d), dtype=acc, device=queries.device)
        for k0 in range(0, sk, k_chunk):
            k1 = min(sk, k0 + k_chunk)
            scores = grouped_scores(queries, keys[:, :, k0:k1], scaling, acc)
            if attention_mask is not None:
                scores += additive_mask(attention_mask[..., k0:k1], acc)
            if sparse is not None and sparse.is_rows:
                scores += _rows_chunk_bias(sparse, k0, k1 - k0, acc)
            elif sparse is not None:
                scores += probs_bias(sparse.probs[..., k0:k1], acc)
            new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
            rescale = torch.exp(row_max - shift)
            weights = scores.sub_(shift).exp_()
            total = total * rescale + weights.sum(dim=-1, keepdim=True)
            numerator = numerator * rescale + grouped_values(weights, values[:, :, k0:k1])
            row_max = new_max
        return (numerator / torch.where(total > 0, total, 1.0)).to(queries.dtype)
