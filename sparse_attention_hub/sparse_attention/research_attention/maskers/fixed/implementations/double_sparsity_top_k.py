"""DoubleSparsity: top-k keys scored on a few "outlier" channels per head.

Each query head ``h`` scores keys on the first ``r = head_dim // group_factor`` channels of its
sorted channel list ``C[h]`` (offline statistics, loaded from ``sorted_channel_file``):
``s_j = q[C[h, :r]] . k_j[C[h, :r]] / sqrt(head_dim // group_factor) + A_j``, with both sides
pseudo-quantised per row when ``label_bits < 16``. The ``k`` best keys the previous mask does not
hold are added with p = 1.

Differences from the reference implementation:

- The channel table is per layer (the reference loads the first layer it sees and uses that
  table for every layer): each layer's table is read from the file once and cached on the
  masker, keyed by layer and device.
- Only keys the query may attend to are candidates (attention mask, and no key after the
  query's position ``k_len - q_len + i``); if fewer than ``k`` remain, all of them are added.
- Ties go to the lower key index; scores accumulate in float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from .....utils.kv_utils import _get_num_key_value_groups
from ...base import AttentionTensorDimensions, MaskerRegistry
from ..base import TopKMasker, TopKMaskerConfig
from .utils.common_utils import pseudo_quantize
from .utils.double_sparsity_utils import (
    ChannelTable,
    extract_layer_channels,
    load_sorted_channels_from_file,
)

Tensor = torch.Tensor


@dataclass
class DoubleSparsityTopKMaskerConfig(TopKMaskerConfig):
    """DoubleSparsity top-k: ``heavy_size`` keys per row, scored on ``head_dim // group_factor``
    channels per head taken from ``sorted_channel_file`` (entries named
    ``model.layers.{L}.self_attn.{channel_selection}``), labels of ``label_bits`` bits."""

    sorted_channel_file: str
    group_factor: int = 16
    label_bits: int = 4
    channel_selection: str = "qk_proj"
    search_space: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_factor <= 0:
            raise ValueError(f"group_factor must be > 0, got {self.group_factor}")
        if not 0 < self.label_bits <= 16:
            raise ValueError(f"label_bits must be in range (0, 16], got {self.label_bits}")
        if not os.path.exists(self.sorted_channel_file):
            raise ValueError(f"sorted_channel_file does not exist: {self.sorted_channel_file}")


@MaskerRegistry.register(DoubleSparsityTopKMaskerConfig)
class DoubleSparsityTopKMasker(TopKMasker):
    """Adds the ``k`` best keys by the channel-subset score (see the module docstring).

    Needs ``layer_idx`` in the call's kwargs (its channel table). Full attention when
    ``k_len - q_len <= k``, as in the reference.
    """

    def __init__(self, config: DoubleSparsityTopKMaskerConfig) -> None:
        super().__init__(config)
        self.heavy_size = config.heavy_size
        self.group_factor = config.group_factor
        self.label_bits = config.label_bits
        self.channel_selection = config.channel_selection
        #: The parsed channel file (None until a layer's table is first needed).
        self.sorted_channels: Optional[ChannelTable] = None
        self._layer_channels: Dict[Tuple[int, str], Tensor] = {}

    def _validate(
        self,
        sparse_meta_data: Optional[Dict[Any, Any]],
        *,
        keys: Tensor,
        queries: Tensor,
        **kwargs: Any,
    ) -> None:
        """``layer_idx`` and the head grouping (the reference checks them first)."""
        if kwargs.get("layer_idx") is None:
            raise ValueError("layer_idx must be provided in kwargs")
        _get_num_key_value_groups(queries, keys)

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        k = self._calculate_effective_size(self.heavy_size, dims.seq_len_keys)
        return dims.seq_len_keys - dims.seq_len_queries <= k

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        k = self._calculate_effective_size(self.heavy_size, keys.shape[2])
        channels = self._channels(int(context["layer_idx"]), queries.device)
        return torch.ops.sah.double_sparsity_topk_mask(
            queries,
            keys,
            channels,
            indices,
            probs,
            context["attention_mask"],
            k,
            self.group_factor,
            self.label_bits,
        )

    def _ensure_sorted_channel_is_loaded(self, layer_idx: int, device: torch.device) -> None:
        """Loads the channel file (once) and the table of ``layer_idx`` on ``device`` (once per
        layer and device)."""
        key = (layer_idx, str(device))
        if key in self._layer_channels:
            return
        if self.sorted_channels is None:
            self.sorted_channels = load_sorted_channels_from_file(self.config.sorted_channel_file)
        self._layer_channels[key] = extract_layer_channels(
            self.sorted_channels, layer_idx, self.channel_selection, device
        )

    def _channels(self, layer_idx: int, device: torch.device) -> Tensor:
        """The ``(heads, channels)`` int64 table of ``layer_idx`` on ``device``."""
        self._ensure_sorted_channel_is_loaded(layer_idx, device)
        return self._layer_channels[(layer_idx, str(device))]

    @staticmethod
    def _pseudo_quantize(tensor: Tensor, q_bit: int) -> Tensor:
        """The labels' pseudo-quantisation (kept under the reference's method name)."""
        return pseudo_quantize(tensor, q_bit)

    @classmethod
    def create_from_config(
        cls, config: DoubleSparsityTopKMaskerConfig
    ) -> "DoubleSparsityTopKMasker":
        return cls._checked(config, DoubleSparsityTopKMaskerConfig)
