"""Sparse attention: configs, the ``SparseAttention`` base class and the ``Mask`` type."""

from . import utils
from .base import SparseAttention, SparseAttentionConfig
from .metadata import SparseAttentionMetadata
from .utils import Mask

__all__ = [
    "Mask",
    "SparseAttention",
    "SparseAttentionConfig",
    "SparseAttentionMetadata",
    "utils",
]
