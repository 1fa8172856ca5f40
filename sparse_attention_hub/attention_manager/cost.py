"""Analytic cost of one attention layer call per backend: bytes read, transient memory, FLOPs.

Notation: b batch, h query heads, g kv heads, q queries, k keys, d head dim, e bytes per element
of the inputs, a bytes of the accumulation dtype (8 for float64, else 4), s = b*h*q*k score
elements, n = density * k keys kept per query row by the sparse mask.

- Bytes read: what the call must read at least once: Q (b*h*q*d*e), K and V (2*b*g*k*d*e),
  and the sparse mask (8 bytes per kept entry in row form, 4*s as dense probabilities). The
  ``sparse`` backend on a row-form mask reads instead the kept K/V rows of every query row
  (2*n*d*e each: the query heads of a group gather separately, as the kernel does), at most all
  of K and V. The attention mask, common to every backend, is not counted.
- FLOPs: 4*d per (query, key) pair computed (q.k and p*v): 4*s*d, and 4*b*h*q*n*d for the
  ``sparse`` backend on a row-form mask.
- Transient memory: an estimate of the peak temporaries beyond inputs and output, from what
  each backend allocates (see each formula below).
- Speedup vs dense: the ratio of dense attention's bytes (or FLOPs) to this configuration's;
  dense = SDPA on the same shape without a sparse mask. The byte ratio is the theoretical
  speedup of memory-bound calls (decode), the FLOP ratio that of compute-bound ones (prefill).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .backends import ATTENTION_TYPES
from .backends.chunked import chunk_sizes
from .device import DeviceProperties
from .inputs import AttentionShape

#: Most partials per row and fewest row entries per partial of the CUDA split-key decode kernel
#: (``kMaxSplits`` / ``kMinChunk`` in csrc/include/sah/attention_cuda.cuh).
_MAX_SPLITS = 256
_MIN_SPLIT_ENTRIES = 64


@dataclass(frozen=True)
class MemoryUsage:
    """Bytes of one layer call, with dense attention's bytes for the ratio."""

    attention_type: str
    bytes_read: int
    transient_bytes: int
    dense_bytes_read: int

    @property
    def speedup_vs_dense(self) -> float:
        """Theoretical speedup of a memory-bound call: dense bytes / these bytes."""
        return self.dense_bytes_read / self.bytes_read if self.bytes_read else math.inf


@dataclass(frozen=True)
class ComputeComplexity:
    """FLOPs of one layer call, with dense attention's FLOPs for the ratio."""

    attention_type: str
    flops: int
    dense_flops: int

    @property
    def speedup_vs_dense(self) -> float:
        """Theoretical speedup of a compute-bound call: dense FLOPs / these FLOPs."""
        return self.dense_flops / self.flops if self.flops else math.inf


def check_attention_type(attention_type: str) -> None:
    """Raises ValueError naming the argument and the valid choices."""
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(
            f"attention_type must be one of {list(ATTENTION_TYPES)}, got {attention_type!r}"
        )


def _kept_keys(shape: AttentionShape) -> float:
    """n: keys per query row the sparse mask keeps (all k without one)."""
    return shape.density * shape.k_len if shape.has_sparse_mask else float(shape.k_len)


def _dense_bytes(shape: AttentionShape) -> int:
    """Q, K and V once."""
    e = shape.element_size
    q_bytes = shape.batch * shape.heads * shape.q_len * shape.head_dim * e
    return q_bytes + 2 * shape.batch * shape.kv_heads * shape.k_len * shape.head_dim * e


def _mask_bytes(shape: AttentionShape) -> int:
    """The sparse mask: 8 bytes per kept entry (int32 index, float32 p) or dense float32."""
    if shape.mask_format == "rows":
        return round(8 * shape.batch * shape.heads * shape.q_len * _kept_keys(shape))
    if shape.mask_format == "dense":
        return 4 * shape.score_elements
    return 0


def _bytes_read(shape: AttentionShape, attention_type: str) -> int:
    if attention_type == "sparse" and shape.mask_format == "rows":
        e = shape.element_size
        rows = shape.batch * shape.heads * shape.q_len
        gathered = rows * _kept_keys(shape) * 2 * shape.head_dim * e
        all_kv = 2 * shape.batch * shape.kv_heads * shape.k_len * shape.head_dim * e
        q_bytes = rows * shape.head_dim * e
        return round(q_bytes + min(gathered, all_kv)) + _mask_bytes(shape)
    return _dense_bytes(shape) + _mask_bytes(shape)


def _flops(shape: AttentionShape, attention_type: str) -> int:
    if attention_type == "sparse" and shape.mask_format == "rows":
        rows = shape.batch * shape.heads * shape.q_len
        return round(4 * rows * _kept_keys(shape) * shape.head_dim)
    return 4 * shape.score_elements * shape.head_dim


def sdpa_math_fallback(shape: AttentionShape, device: Optional[DeviceProperties]) -> Optional[str]:
    """Why torch's SDPA would run its math kernel (full score matrix, K/V repeated per query
    head) on ``device``, or None when a fused kernel applies. CPU: torch's flash kernel covers
    every dtype, mask and GQA; CUDA: FlashAttention / memory-efficient / cuDNN need a float16,
    bfloat16 (sm_80+) or float32 input, head_dim <= 256 and a multiple of 8."""
    if device is None or device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"no fused SDPA kernel is assumed on a {device.type!r} device"
    cc = device.compute_capability or (0, 0)
    if shape.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the fused SDPA kernels do not take {shape.dtype}"
    if shape.dtype == torch.bfloat16 and cc < (8, 0):
        return f"bfloat16 SDPA kernels need sm_80+, the device is sm_{cc[0]}{cc[1]}"
    if shape.head_dim > 256 or shape.head_dim % 8:
        return f"head_dim {shape.head_dim} is not a multiple of 8 up to 256"
    return None


def _transient_bytes(
    shape: AttentionShape,
    attention_type: str,
    device: Optional[DeviceProperties],
    query_block: int,
    chunk_bytes: int,
) -> int:
    e = shape.element_size
    a = 8 if shape.dtype == torch.float64 else 4
    b, h, g, q, k, d = (
        shape.batch,
        shape.heads,
        shape.kv_heads,
        shape.q_len,
        shape.k_len,
        shape.head_dim,
    )
    s = shape.score_elements
    rows = b * h * q
    if attention_type == "dense":
        # scores (softmax in place), the additive mask, probabilities and their bias, and
        # Q, K, V and the output in the accumulation dtype when it differs from the inputs'.
        total = s * a + 2 * rows * d * a
        if shape.has_attention_mask:
            total += b * q * k * a
        if shape.has_sparse_mask:
            total += s * 4 + s * a
        if a != e:
            total += (rows + 2 * b * g * k) * d * a
        return total
    if attention_type == "sdpa":
        # log-sum-exp per row; a sparse mask as float32 probabilities, float32 bias, and the
        # bias in the input dtype; the math kernel's scores, weights and repeated K/V.
        total = rows * 4
        if shape.has_sparse_mask:
            total += s * (4 + 4 + e)
        if sdpa_math_fallback(shape, device) is not None:
            total += 2 * s * max(e, 4) + 2 * b * h * k * d * e
        return total
    if attention_type == "sparse":
        # partials of the split-key kernel: (d + 2) floats per split of each row, plus lse.
        entries = _kept_keys(shape) if shape.mask_format == "rows" else k
        splits = max(1, min(_MAX_SPLITS, math.ceil(entries / _MIN_SPLIT_ENTRIES)))
        return rows * (splits * (d + 2) + 1) * 4
    # chunked: per key chunk the scores, the masked weights and one bias (mask or sparse), and
    # the block's running max, sum and numerator.
    q_block, k_chunk = chunk_sizes(b, h, q, k, query_block, chunk_bytes)
    chunk = b * h * q_block * k_chunk
    block = b * h * q_block
    total = 2 * chunk * a + 2 * block * (d + 2) * a
    if shape.has_attention_mask or shape.has_sparse_mask:
        total += chunk * a
    if shape.mask_format == "rows":
        total += block * (k_chunk + 1) * 4
    return total


def get_memory_usage(
    shape: AttentionShape,
    attention_type: str,
    device: Optional[DeviceProperties] = None,
    query_block: int = 128,
    chunk_bytes: int = 16 * 2**20,
) -> MemoryUsage:
    """Bytes read and transient bytes of one call of ``attention_type`` on ``shape``.

    ``device`` decides whether SDPA runs a fused kernel (None: it does); ``query_block`` and
    ``chunk_bytes`` are the ``chunked`` backend's settings.
    """
    check_attention_type(attention_type)
    dense = replace(shape, mask_format=None, density=1.0)
    return MemoryUsage(
        attention_type=attention_type,
        bytes_read=_bytes_read(shape, attention_type),
        transient_bytes=_transient_bytes(shape, attention_type, device, query_block, chunk_bytes),
        dense_bytes_read=_bytes_read(dense, "sdpa"),
    )


def get_compute_complexity(shape: AttentionShape, attention_type: str) -> ComputeComplexity:
    """FLOPs of one call of ``attention_type`` on ``shape``."""
    check_attention_type(attention_type)
    dense = replace(shape, mask_format=None, density=1.0)
    return ComputeComplexity(
        attention_type=attention_type,
        flops=_flops(shape, attention_type),
        dense_flops=_flops(dense, "sdpa"),
    )
