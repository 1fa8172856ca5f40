"""DoubleSparsity as one fused path: sink + local window + DoubleSparsity top-k, then attention.

The output equals that of ``ResearchAttention`` over ``[SinkMaskerConfig(sink_size),
LocalMaskerConfig(local_size), DoubleSparsityTopKMaskerConfig(heavy_size,
sorted_channel_file=ds_channel_config, group_factor=ds_group_factor, label_bits=ds_bits)]``
(a size of 0 leaves its masker out), through the same operators (``sah::sink_mask``,
``sah::local_mask``, ``sah::double_sparsity_topk_mask``, ``sah::sparse_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch

from ...base import SparseAttentionConfig
from ...research_attention.maskers.base import ResearchMasker
from ...research_attention.maskers.fixed.implementations.basic_fixed import (
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)
from ..base import EfficientAttention, EfficientAttentionConfig

Tensor = torch.Tensor


@dataclass
class ChannelConfig:
    """Channel statistics of DoubleSparsity (a placeholder kept for the reference API; the
    statistics come from the sorted-channel file named by ``ds_channel_config``)."""


@dataclass
class DoubleSparsityConfig(EfficientAttentionConfig):
    """DoubleSparsity: ``sink_size`` sink keys, a ``local_size`` window and ``heavy_size`` keys
    scored on ``head_dim // ds_group_factor`` outlier channels with ``ds_bits``-bit labels.

    ``ds_channel_config`` is the sorted-channel JSON file, read at the first call.
    """

    heavy_size: Union[int, float]
    sink_size: Union[int, float]
    local_size: Union[int, float]
    ds_channel_config: Union[str, ChannelConfig]
    ds_bits: int
    ds_group_factor: Union[int, float]


class DoubleSparsity(EfficientAttention):
    """Sink + local + DoubleSparsity top-k attention (see the module docstring)."""

    def __init__(
        self,
        sparse_attention_config: SparseAttentionConfig,
        group_factor: Union[int, float],
        label_bits: int,
        channel_config: Union[str, ChannelConfig],
    ) -> None:
        if not isinstance(sparse_attention_config, DoubleSparsityConfig):
            raise TypeError(f"Expected DoubleSparsityConfig, got {type(sparse_attention_config)}")
        super().__init__(sparse_attention_config)
        self.group_factor = group_factor
        self.label_bits = label_bits
        self.channel_config = channel_config
        self._maskers: Optional[List[ResearchMasker]] = None

    def masker_chain(self) -> List[ResearchMasker]:
        """The chain sink, local, DoubleSparsity top-k (built on first use).

        Raises:
            ValueError: if ``channel_config`` is not a channel file path or ``group_factor`` is
                not a whole number.
        """
        if self._maskers is None:
            from ...research_attention.maskers.fixed.implementations.double_sparsity_top_k import (
                DoubleSparsityTopKMasker,
                DoubleSparsityTopKMaskerConfig,
            )

            if not isinstance(self.channel_config, str):
                raise ValueError(
                    "DoubleSparsity needs ds_channel_config to be the path of a sorted-channel "
                    f"JSON file, got {self.channel_config!r}"
                )
            if float(self.group_factor) != int(self.group_factor):
                raise ValueError(f"ds_group_factor must be a whole number, got {self.group_factor}")
            config = self.sparse_attention_config
            chain: List[ResearchMasker] = []
            if config.sink_size:
                chain.append(SinkMasker(SinkMaskerConfig(config.sink_size)))
            if config.local_size:
                chain.append(LocalMasker(LocalMaskerConfig(config.local_size)))
            chain.append(
                DoubleSparsityTopKMasker(
                    DoubleSparsityTopKMaskerConfig(
                        heavy_size=config.heavy_size,
                        sorted_channel_file=self.channel_config,
                        group_factor=int(self.group_factor),
                        label_bits=self.label_bits,
                    )
                )
            )
            self._maskers = chain
        return self._maskers

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "DoubleSparsity":
        """Builds DoubleSparsity from a ``DoubleSparsityConfig`` (TypeError otherwise)."""
        if not isinstance(config, DoubleSparsityConfig):
            raise TypeError(f"Expected DoubleSparsityConfig, got {type(config)}")
        return cls(
            sparse_attention_config=config,
            group_factor=config.ds_group_factor,
            label_bits=config.ds_bits,
            channel_config=config.ds_channel_config,
        )
