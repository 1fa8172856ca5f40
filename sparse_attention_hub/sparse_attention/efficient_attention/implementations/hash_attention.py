"""HashAttention as one fused path: sink + local window + HashAttention top-k, then attention.

The output equals that of ``ResearchAttention`` over ``[SinkMaskerConfig(sink_size),
LocalMaskerConfig(local_size), HashAttentionTopKMaskerConfig(heavy_size, ...)]`` (a size of 0
leaves its masker out), through the same operators: ``sah::sink_mask``, ``sah::local_mask``,
``sah::hash_pack_signs`` / ``sah::hash_topk_mask`` and ``sah::sparse_attention``. The signature
state lives in ``sparse_meta_data`` exactly as for the masker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch

from ...base import SparseAttentionConfig
from ...research_attention.maskers.base import ResearchMasker
from ...research_attention.maskers.fixed.implementations.basic_fixed import (
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)
from ...research_attention.maskers.fixed.implementations.hashattention_top_k import (
    HashAttentionTopKMasker,
    HashAttentionTopKMaskerConfig,
)
from ...utils.hashattention_utils import HatWeights
from ..base import EfficientAttention, EfficientAttentionConfig

Tensor = torch.Tensor


@dataclass
class HashAttentionConfig(EfficientAttentionConfig):
    """HashAttention: ``sink_size`` sink keys, a ``local_size`` window and ``heavy_size`` keys
    by learned signatures (an int is a count, a float a fraction of the keys).

    ``hat_weights`` is the weights dict or a weights file (safetensors; a pickle only with
    ``trust_pickle=True``), loaded at the first call. ``hat_bits``, ``hat_mlp_layers`` and
    ``hat_mlp_hidden_size`` are informational (the weights' shapes decide).
    """

    heavy_size: Union[int, float]
    sink_size: Union[int, float]
    local_size: Union[int, float]
    hat_weights: Union[str, "os.PathLike[str]", HatWeights]
    hat_bits: int
    hat_mlp_layers: int
    hat_mlp_hidden_size: int
    hat_mlp_activation: str = "silu"
    trust_pickle: bool = False


class HashAttention(EfficientAttention):
    """Sink + local + HashAttention top-k attention (see the module docstring)."""

    keeps_key_state = True

    def __init__(
        self,
        sparse_attention_config: SparseAttentionConfig,
        hat_bits: int,
        hat_mlp_layers: int,
        hat_mlp_hidden_size: int,
        hat_weights: Union[str, "os.PathLike[str]", HatWeights],
    ) -> None:
        if not isinstance(sparse_attention_config, HashAttentionConfig):
            raise TypeError(f"Expected HashAttentionConfig, got {type(sparse_attention_config)}")
        super().__init__(sparse_attention_config)
        self.hat_bits = hat_bits
        self.hat_mlp_layers = hat_mlp_layers
        self.hat_mlp_hidden_size = hat_mlp_hidden_size
        self.hat_weights = hat_weights
        self._maskers: Optional[List[ResearchMasker]] = None

    def masker_chain(self) -> List[ResearchMasker]:
        """The chain sink, local, hash top-k (built, and the weights loaded, on first use)."""
        if self._maskers is None:
            config = self.sparse_attention_config
            weights: Dict[str, Any] = (
                {"hat_weights": self.hat_weights}
                if isinstance(self.hat_weights, dict)
                else {"hat_weight_file": os.fspath(self.hat_weights)}
            )
            chain: List[ResearchMasker] = []
            if config.sink_size:
                chain.append(SinkMasker(SinkMaskerConfig(config.sink_size)))
            if config.local_size:
                chain.append(LocalMasker(LocalMaskerConfig(config.local_size)))
            chain.append(
                HashAttentionTopKMasker(
                    HashAttentionTopKMaskerConfig(
                        heavy_size=config.heavy_size,
                        hat_bits=self.hat_bits,
                        hat_mlp_layers=self.hat_mlp_layers,
                        hat_mlp_hidden_size=self.hat_mlp_hidden_size,
                        hat_mlp_activation=config.hat_mlp_activation,
                        trust_pickle=config.trust_pickle,
                        **weights,
                    )
                )
            )
            self._maskers = chain
        return self._maskers

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "HashAttention":
        """Builds HashAttention from a ``HashAttentionConfig`` (TypeError otherwise)."""
        if not isinstance(config, HashAttentionConfig):
            raise TypeError(f"Expected HashAttentionConfig, got {type(config)}")
        return cls(
            sparse_attention_config=config,
            hat_bits=config.hat_bits,
            hat_mlp_layers=config.hat_mlp_layers,
            hat_mlp_hidden_size=config.hat_mlp_hidden_size,
            hat_weights=config.hat_weights,
        )
