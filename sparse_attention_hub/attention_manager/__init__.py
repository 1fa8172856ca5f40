"""AttentionManager: attention backends behind one interface, chosen from the device and the
call's shape, benchmarked and modelled (bytes, transient memory, FLOPs).

Backends: ``dense`` (eager reference), ``sdpa`` (torch SDPA with GQA), ``sparse`` (the
``torch.ops.sah`` kernels) and ``chunked`` (online softmax over query blocks and key chunks,
bounded memory). All take the same inputs and give the same output.
"""

from .backends import (
    ATTENTION_TYPES,
    AttentionBackend,
    ChunkedAttention,
    DenseAttention,
    SDPAAttention,
    SparseKernelAttention,
)
from .cost import ComputeComplexity, MemoryUsage, get_compute_complexity, get_memory_usage
from .device import DeviceProperties
from .hf import AttentionManagerMixin, model_attention_shape
from .inputs import AttentionInputs, AttentionShape
from .manager import AttentionManager
from .selection import AttentionSelection, SelectionPolicy, select_attention_type

__all__ = [
    "ATTENTION_TYPES",
    "AttentionBackend",
    "AttentionInputs",
    "AttentionManager",
    "AttentionManagerMixin",
    "AttentionSelection",
    "AttentionShape",
    "ChunkedAttention",
    "ComputeComplexity",
    "DenseAttention",
    "DeviceProperties",
    "MemoryUsage",
    "SDPAAttention",
    "SelectionPolicy",
    "SparseKernelAttention",
    "get_compute_complexity",
    "get_memory_usage",
    "model_attention_shape",
    "select_attention_type",
]
