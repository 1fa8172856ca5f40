"""Oracle top-k: the keys with the largest raw scores ``q.k`` (plus the additive mask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch

from ...base import MaskerRegistry
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

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        k = self._calculate_effective_size(self.heavy_size, keys.shape[2])
        return torch.ops.sah.oracle_topk_mask(
            queries, keys, indices, probs, context["attention_mask"], k
        )

    @classmethod
    def create_from_config(cls, config: OracleTopKConfig) -> "OracleTopK":
        return cls._checked(config, OracleTopKConfig)
