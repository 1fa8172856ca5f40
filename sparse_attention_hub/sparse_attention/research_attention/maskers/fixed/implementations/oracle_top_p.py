"""Oracle top-p: the fewest keys that hold more than ``top_p`` of the remaining softmax mass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch

from ...base import AttentionTensorDimensions, MaskerRegistry
from ..base import TopPMasker, TopPMaskerConfig

Tensor = torch.Tensor


@dataclass
class OracleTopPMaskerConfig(TopPMaskerConfig):
    """Oracle top-p; ``top_p`` in [0, 1] (the ints 0 and 1 are accepted too)."""

    search_space: Dict[str, Any] = field(
        default_factory=lambda: {"top_p": {"grid_search": [0.1, 0.5, 0.9, 0.95, 0.99]}}
    )


@MaskerRegistry.register(OracleTopPMaskerConfig)
class OracleTopPMasker(TopPMasker):
    """Adds, per row, the keys above the top-p threshold of the mass not already selected.

    The mass is ``exp(scaling * q.k + mask)`` over the keys not yet selected; the smallest
    prefix (by descending mass) whose share strictly exceeds ``top_p`` is added, with ties.
    """

    def __init__(self, config: OracleTopPMaskerConfig) -> None:
        super().__init__(config)
        self.top_p = config.top_p

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        n = dims.seq_len_keys
        return n <= self._calculate_effective_size(float(self.top_p), n)

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        return torch.ops.sah.oracle_topp_mask(
            queries,
            keys,
            indices,
            probs,
            context["attention_mask"],
            float(self.top_p),
            float(context["scaling"]),
        )

    @classmethod
    def create_from_config(cls, config: OracleTopPMaskerConfig) -> "OracleTopPMasker":
        return cls._checked(config, OracleTopPMaskerConfig)
