"""The attention backends behind one interface (see :class:`AttentionBackend`)."""

from typing import Dict, Tuple, Type

from .base import AttentionBackend
from .chunked import ChunkedAttention
from .dense import DenseAttention
from .sdpa import SDPAAttention
from .sparse import SparseKernelAttention

#: Backend classes by name, in the order the benchmark reports them.
BACKENDS: Dict[str, Type[AttentionBackend]] = {
    cls.name: cls
    for cls in (DenseAttention, SDPAAttention, SparseKernelAttention, ChunkedAttention)
}
ATTENTION_TYPES: Tuple[str, ...] = tuple(BACKENDS)

__all__ = [
    "ATTENTION_TYPES",
    "BACKENDS",
    "AttentionBackend",
    "ChunkedAttention",
    "DenseAttention",
    "SDPAAttention",
    "SparseKernelAttention",
]
