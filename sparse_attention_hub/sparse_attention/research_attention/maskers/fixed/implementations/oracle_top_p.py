"""Oracle top-p: the fewest keys that hold more than ``top_p`` of the remaining softmax mass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .....utils.mask import Mask
from ...base import MaskerRegistry, padding_or_4d_mask
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
        if n <= self._calculate_effective_size(float(self.top_p), n):
            return self._create_full_mask(dims, previous_mask.dtype, previous_mask.device)
        indices, probs = previous_mask.get_rows()
        indices, probs = torch.ops.sah.oracle_topp_mask(
            queries,
            keys,
            indices,
            probs,
            padding_or_4d_mask(attention_mask, n),
            float(self.top_p),
            float(scaling),
        )
        return self._rows_mask(previous_mask, indices, probs)

    @classmethod
    def create_from_config(cls, config: OracleTopPMaskerConfig) -> "OracleTopPMasker":
        return cls._checked(config, OracleTopPMaskerConfig)
