"""Fixed masker implementations."""

from .basic_fixed import (
    CausalMasker,
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)
from .double_sparsity_top_k import DoubleSparsityTopKMasker, DoubleSparsityTopKMaskerConfig
from .oracle_top_k import OracleTopK, OracleTopKConfig
from .oracle_top_p import OracleTopPMasker, OracleTopPMaskerConfig
from .quest_top_k import QuestTopKMasker, QuestTopKMaskerConfig

__all__ = [
    "CausalMasker",
    "DoubleSparsityTopKMasker",
    "DoubleSparsityTopKMaskerConfig",
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
