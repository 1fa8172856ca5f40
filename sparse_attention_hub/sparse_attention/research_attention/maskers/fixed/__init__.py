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
    "LocalMasker",
    "LocalMaskerConfig",
    "OracleTopK",
    "OracleTopKConfig",
    "OracleTopPMasker",
    "OracleTopPMaskerConfig",
    "SinkMasker",
    "SinkMaskerConfig",
]
