"""Fixed (deterministic) maskers."""

from .base import (
    FixedMasker,
    FixedMaskerConfig,
    TopKMasker,
    TopKMaskerConfig,
    TopPMasker,
    TopPMaskerConfig,
)
from .implementations import (
    CausalMasker,
    DoubleSparsityTopKMasker,
    DoubleSparsityTopKMaskerConfig,
    LocalMasker,
    LocalMaskerConfig,
    OracleTopK,
    OracleTopKConfig,
    OracleTopPMasker,
    OracleTopPMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
)

__all__ = [
    "FixedMasker",
    "FixedMaskerConfig",
    "TopKMasker",
    "TopKMaskerConfig",
    "TopPMasker",
    "TopPMaskerConfig",
    "CausalMasker",
    "DoubleSparsityTopKMasker",
    "DoubleSparsityTopKMaskerConfig",
    "LocalMasker",
    "LocalMaskerConfig",
    "OracleTopK",
    "OracleTopKConfig",
    "OracleTopPMasker",
    "OracleTopPMaskerConfig",
    "SinkMasker",
    "SinkMaskerConfig",
]
