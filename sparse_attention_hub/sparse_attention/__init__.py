"""Sparse attention: configs, mechanisms, maskers and the ``Mask`` type (reference import paths)."""

from . import research_attention, utils
from .base import SparseAttention, SparseAttentionConfig
from .metadata import SparseAttentionMetadata
from .research_attention import ResearchAttention, ResearchAttentionConfig
from .research_attention.maskers import ResearchMasker
from .research_attention.maskers.fixed import (
    CausalMasker,
    DoubleSparsityTopKMasker,
    DoubleSparsityTopKMaskerConfig,
    FixedMasker,
    LocalMasker,
    LocalMaskerConfig,
    OracleTopK,
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
