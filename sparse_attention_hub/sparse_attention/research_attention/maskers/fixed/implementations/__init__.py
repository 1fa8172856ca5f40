"""Fixed masker implementations."""

from .basic_fixed import (
    CausalMasker,
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)
from .double_sparsity_top_k import DoubleSparsityTopKMasker, DoubleSparsityTopKMaskerConfig
from .hashattention_top_k import HashAttentionTopKMasker, HashAttentionTopKMaskerConfig
from .oracle_top_k import OracleTopK, OracleTopKConfig
from .oracle_top_p import OracleTopPMasker, OracleTopPMaskerConfig
from .pq_top_k import PQCache, PQCacheConfig
from .quest_top_k import QuestTopKMasker, QuestTopKMaskerConfig

__all__ = [
    "CausalMasker",
    "DoubleSparsityTopKMasker",
    "DoubleSparsityTopKMaskerConfig",
    "HashAttentionTopKMasker",
    "HashAttentionTopKMaskerConfig",
    "PQCache",
    "PQCacheConfig",
    "QuestTopKMasker",
    "QuestTopKMaskerConfig",
    "LocalMasker",
    "LocalMaskerConfig",
    "SinkMasker",
    "SinkMaskerConfig",
    "OracleTopK",
    "OracleTopKConfig",
    "OracleTopPMasker",
    "OracleTopPMaskerConfig",
]
