"""Oracle top-k: the keys with the largest raw scores ``q.k`` (plus the additive mask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .....utils.mask import Mask
from ...base import MaskerRegistry, padding_or_4d_mask
from ..base import TopKMasker, TopKMaskerConfig

Tensor = torch.Tensor


@dataclass
class OracleTopKConfig(TopKMaskerConfig):
    """Oracle top-k: ``heavy_size`` keys per row (a float is a fraction of the keys)."""

    search_space: Dict[str, Any] = field(
        default_factory=lambda: {"heavy_size": {"grid_search": [0.01, 0.02, 0.05, 0.1]}}
    )


@MaskerRegistry.register(OracleTopKConfig)
class OracleTopK(TopKMasker):
    """Adds the ``k`` highest-scoring keys not already selected (ties: lower index first).

    Reads all of K once per call. Keys the attention mask forbids, and keys after the query's
    position, are never chosen; if fewer than ``k`` remain, all of them are added.
    """

    def __init__(self, config: OracleTopKConfig) -> None:
        super().__init__(config)
        self.heavy_size = config.heavy_size

    def add_mask(
        self,
        keys: Tensor,
        queries: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]],
        previous_mask: Mask,
        **kwargs: Any,
    ) -> Mask:
        if previous_mask.is_full_mask():
            return previous_mask
        dims = self._extract_tensor_dimensions(keys, queries)
        n = dims.seq_len_keys
        k = self._calculate_effective_size(self.heavy_size, n)
        if n <= k:
            return self._create_full_mask(dims, previous_mask.dtype, previous_mask.device)
        indices, probs = previous_mask.get_rows()
        indices, probs = torch.ops.sah.oracle_topk_mask(
            queries, keys, indices, probs, padding_or_4d_mask(attention_mask, n), k
        )
        return self._rows_mask(previous_mask, indices, probs)

    @classmethod
    def create_from_config(cls, config: OracleTopKConfig) -> "OracleTopK":
        return cls._checked(config, OracleTopKConfig)
