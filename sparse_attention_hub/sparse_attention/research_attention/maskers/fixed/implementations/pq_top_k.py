"""PQCache: top-k over product-quantisation estimates of ``q.k``.

Each key of ``head_dim`` dims is split into ``M = head_dim / pq_sub_dim`` sub-vectors; sub-vector
``m`` is replaced by the index of its nearest (L2) centroid among ``C = 2**pq_bits`` centroids of
sub-space ``m``, one byte per sub-space. A query scores key ``j`` with
``sum_m q_m . centroid[m][code_m(j)]`` through a lookup table of ``M x C`` dot products
(``torch.ops.sah.pq_topk_mask``), adds the attention mask, and the ``heavy_size`` best keys not
yet selected join the mask (equal scores: lower key index first).

Codebooks are per batch row, kv head and sub-space, fitted with k-means at a layer's first call
on all keys present then (with a static cache: the keys of the buffer's written part, read from
the attention mask); later keys are only encoded (``torch.ops.sah.pq_encode``), so the codes
of cached keys never change. k-means: the initial centroids are ``C`` distinct keys drawn by a
CPU generator seeded with ``seed`` (the same draw on every device; keys are reused cyclically
when there are fewer than ``C``), then ``kmeans_iters`` rounds of assignment (by
``pq_encode``, ties to the lower centroid) and mean update (a centroid with no key keeps its
place). It is deterministic on CPU; on CUDA the mean update sums in a nondeterministic order.

State: ``sparse_meta_data["pq_cache"][layer_idx]`` holds a :class:`PQCacheLayerState`;
``sparse_meta_data["pq_centroids"][layer_idx]`` (float32 (b, h_kv, M, C, pq_sub_dim)) and
``["pq_codes"][layer_idx]`` (uint8 (b, h_kv, n, M)) mirror its tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ...base import MaskerRegistry, require_layer_state
from ..base import TopKMasker, TopKMaskerConfig
from .key_rows_state import (
    KeyRowsState,
    valid_key_count,
    written_end,
    written_positions,
)

Tensor = torch.Tensor

#: ``sparse_meta_data`` key of the per-layer :class:`PQCacheLayerState` dict.
STATE_KEY = "pq_cache"


@dataclass
class PQCacheConfig(TopKMaskerConfig):
    """PQCache: ``heavy_size`` keys per row by their product-quantised scores.

    ``pq_sub_dim`` dims per sub-vector (must divide the head dim), ``2**pq_bits`` centroids per
    sub-space (``1 <= pq_bits <= 8``: codes are bytes), ``kmeans_iters`` k-means rounds, and the
    ``seed`` of the initial centroids.
    """

    pq_sub_dim: int
    pq_bits: int
    kmeans_iters: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pq_sub_dim < 1:
            raise ValueError(f"pq_sub_dim must be >= 1, got {self.pq_sub_dim}")
        if not 1 <= self.pq_bits <= 8:
            raise ValueError(f"pq_bits must be in [1, 8] (codes are bytes), got {self.pq_bits}")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}")


def fit_pq_codebooks(
    keys: Tensor, pq_sub_dim: int, num_centroids: int, iters: int, seed: int
) -> Tensor:
    """k-means codebooks float32 (b, h_kv, M, C, pq_sub_dim) of keys (b, h_kv, n >= 1, d), one
    per batch row, kv head and sub-space (see the module docstring)."""
    batch, kv_heads, n, head_dim = keys.shape
    subspaces = head_dim // pq_sub_dim
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(n, generator=generator)[torch.arange(num_centroids) % n]
    x = keys.detach().to(torch.float32)
    codebooks = x[:, :, picks.to(keys.device)].reshape(
        batch, kv_heads, num_centroids, subspaces, pq_sub_dim
    )
    codebooks = codebooks.transpose(2, 3).contiguous()
    # Sub-vectors grouped per (b, h_kv, m): (groups, n, pq_sub_dim).
    groups = batch * kv_heads * subspaces
    grouped = x.reshape(batch, kv_heads, n, subspaces, pq_sub_dim).transpose(2, 3)
    grouped = grouped.reshape(groups, n, pq_sub_dim)
    ones = torch.ones(groups, n, dtype=torch.float32, device=keys.device)
    for _ in range(iters):
        codes = torch.ops.sah.pq_encode(keys, codebooks).to(torch.int64)
        assign = codes.transpose(2, 3).reshape(groups, n)
        sums = torch.zeros(groups, num_centroids, pq_sub_dim, device=keys.device)
        sums.scatter_add_(1, assign[:, :, None].expand(groups, n, pq_sub_dim), grouped)
        counts = torch.zeros(groups, num_centroids, device=keys.device).scatter_add_(
            1, assign, ones
        )
        flat = codebooks.reshape(groups, num_centroids, pq_sub_dim)
        means = sums / counts.clamp(min=1.0)[:, :, None]
        codebooks = torch.where(counts[:, :, None] > 0, means, flat).reshape(codebooks.shape)
    return codebooks


class PQCacheLayerState(KeyRowsState):
    """One layer's codebooks float32 (b, h_kv, M, C, pq_sub_dim) and key codes uint8
    (b, h_kv, capacity, M) for one sequence (see :class:`KeyRowsState`)."""

    owner = "PQCache"

    def __init__(self, keys: Tensor, codebooks: Tensor, config: PQCacheConfig) -> None:
        super().__init__(keys, keys.shape[1], codebooks.shape[2], torch.uint8)
        self.codebooks = codebooks
        self.config_key = (config.pq_sub_dim, config.pq_bits, config.kmeans_iters, config.seed)

    def _state_tensors(self) -> Tuple[Optional[Tensor], ...]:
        # The codebooks are only read after creation; static addresses spare CUDA graphs a copy.
        return (*super()._state_tensors(), self.codebooks)


@MaskerRegistry.register(PQCacheConfig)
class PQCache(TopKMasker):
    """Adds the ``heavy_size`` keys with the best product-quantised scores (module docstring).
    Needs ``sparse_meta_data`` and ``layer_idx``, checked before anything else.

    Keys the attention mask forbids, and keys after the query's position, are never chosen; if
    fewer than ``k`` remain, all of them are added.
    """

    keeps_key_state = True

    def __init__(self, config: PQCacheConfig) -> None:
        super().__init__(config)
        self.heavy_size = config.heavy_size
        self.pq_sub_dim = config.pq_sub_dim
        self.pq_bits = config.pq_bits
        self.kmeans_iters = config.kmeans_iters
        self.seed = config.seed

    def _validate(
        self,
        sparse_meta_data: Optional[Dict[Any, Any]],
        *,
        keys: Tensor,
        queries: Tensor,
        **kwargs: Any,
    ) -> None:
        require_layer_state(sparse_meta_data, kwargs)

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        layer = int(context["layer_idx"])
        sparse_meta_data = context["sparse_meta_data"]
        attention_mask = context["attention_mask"]
        n, q_len = keys.shape[2], queries.shape[2]
        state = sparse_meta_data.setdefault(STATE_KEY, {}).get(layer)
        if state is None:
            state = self._new_state(keys, attention_mask, q_len, sparse_meta_data, layer)
        else:
            self._check_config(state, layer)
            if n == state.num_keys and attention_mask is not None:  # positional refresh
                state.check(keys, layer, written_end(attention_mask, n))
                positions = written_positions(attention_mask, q_len, n)
                codes = torch.ops.sah.pq_encode(keys.index_select(2, positions), state.codebooks)
                state.refresh(positions, codes)
            else:
                state.check(keys, layer)
        if n > state.num_keys:
            created = state.num_keys == 0
            new_keys = keys[:, :, state.num_keys :]
            state.append(keys, torch.ops.sah.pq_encode(new_keys, state.codebooks))
            if created:
                state.finish_creation(keys, attention_mask)
        codes = state.valid_rows
        sparse_meta_data.setdefault("pq_centroids", {})[layer] = state.codebooks
        sparse_meta_data.setdefault("pq_codes", {})[layer] = codes
        k = self._calculate_effective_size(self.heavy_size, n)
        return torch.ops.sah.pq_topk_mask(
            queries, state.codebooks, codes, indices, probs, attention_mask, k
        )

    def _new_state(
        self,
        keys: Tensor,
        attention_mask: Optional[Tensor],
        q_len: int,
        sparse_meta_data: Dict[Any, Any],
        layer: int,
    ) -> PQCacheLayerState:
        """A state whose codebooks are fitted on the keys of the sequence so far: all of
        ``keys``, or with a static cache the written part of the buffer (the keys before the end
        that :func:`valid_key_count` reads from the mask: one host sync, at creation only)."""
        head_dim = keys.shape[3]
        if head_dim % self.pq_sub_dim != 0:
            raise ValueError(
                f"pq_sub_dim ({self.pq_sub_dim}) must divide the head dim ({head_dim})"
            )
        valid = valid_key_count(attention_mask, q_len, keys.shape[2])
        codebooks = fit_pq_codebooks(
            keys[:, :, :valid], self.pq_sub_dim, 2**self.pq_bits, self.kmeans_iters, self.seed
        )
        state = PQCacheLayerState(keys, codebooks, self.config)
        sparse_meta_data[STATE_KEY][layer] = state
        return state

    def _check_config(self, state: PQCacheLayerState, layer: int) -> None:
        """ValueError unless ``state`` was built for this masker's configuration."""
        config_key = (self.pq_sub_dim, self.pq_bits, self.kmeans_iters, self.seed)
        if state.config_key != config_key:
            raise ValueError(
                f"sparse_meta_data holds PQCache state of layer {layer} for (pq_sub_dim, "
                f"pq_bits, kmeans_iters, seed) = {state.config_key}, expected {config_key}"
            )

    @classmethod
    def create_from_config(cls, config: PQCacheConfig) -> "PQCache":
        return cls._checked(config, PQCacheConfig)
