"""Fixed masker implementations."""

from .basic_fixed import (
    CausalMasker,
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)
from .oracle_top_k import OracleTopK, OracleTopKConfig
from .oracle_top_p import OracleTopPMasker, OracleTopPMaskerConfig

__all__ = [
    "CausalMasker",
    "LocalMasker",
    "LocalMaskerConfig",
    "SinkMasker",
    "SinkMaskerConfig",
    "OracleTopK",
    "OracleTopKConfig",
    "OracleTopPMasker",
    "OracleTopPMaskerConfig",
]
