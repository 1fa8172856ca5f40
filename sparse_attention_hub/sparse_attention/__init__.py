"""Sparse attention: configs, mechanisms, maskers and the ``Mask`` type (reference import paths)."""

from . import efficient_attention, research_attention, utils
from .base import SparseAttention, SparseAttentionConfig
from .efficient_attention import EfficientAttention, EfficientAttentionConfig
from .efficient_attention.implementations import (
    ChannelConfig,
    DoubleSparsity,
    DoubleSparsityConfig,
    HashAttention,
    HashAttentionConfig,
)
from .metadata import SparseAttentionMetadata
from .research_attention import ResearchAttention, ResearchAttentionConfig
from .research_attention.maskers import ResearchMasker
from .research_attention.maskers.fixed import (
    CausalMasker,
    DoubleSparsityTopKMasker,
    DoubleSparsityTopKMaskerConfig,
    FixedMasker,
    HashAttentionTopKMasker,
    HashAttentionTopKMaskerConfig,
    LocalMasker,
    LocalMaskerConfig,
    OracleTopK,
    PQCache,
    SinkMasker,
    SinkMaskerConfig,
    TopKMasker,
    TopKMaskerConfig,
    TopPMasker,
)
from .research_attention.maskers.sampling import MagicPig, RandomSamplingMasker, SamplingMasker
from .utils import Mask

__all__ = [
    "CausalMasker",
    "ChannelConfig",
    "DoubleSparsity",
    "DoubleSparsityConfig",
    "EfficientAttention",
    "EfficientAttentionConfig",
    "HashAttention",
    "HashAttentionConfig",
    "HashAttentionTopKMasker",
    "HashAttentionTopKMaskerConfig",
    "PQCache",
    "efficient_attention",
    "DoubleSparsityTopKMasker",
    "DoubleSparsityTopKMaskerConfig",
    "FixedMasker",
    "LocalMasker",
    "LocalMaskerConfig",
    "MagicPig",
    "Mask",
    "OracleTopK",
    "RandomSamplingMasker",
    "ResearchAttention",
    "ResearchAttentionConfig",
    "ResearchMasker",
    "SamplingMasker",
    "SinkMasker",
    "SinkMaskerConfig",
    "SparseAttention",
    "SparseAttentionConfig",
    "SparseAttentionMetadata",
    "TopKMasker",
    "TopKMaskerConfig",
    "TopPMasker",
    "research_attention",
    "utils",
]
