"""The automatic choice of an attention backend from the device and the call's shape.

Rules, in order (``budget`` = ``memory_fraction`` of the device's free memory; unknown free
memory means no budget):

1. A sparse mask, and the sah kernels run on the device (CPU; CUDA only on the compute
   capabilities the build targets, sm_90 by default) -> ``sparse``: it reads only the kept keys.
2. A sparse mask, no sah kernels -> ``sdpa`` with the mask as a (b, h, q, k) ``log(1/p)`` bias,
   unless that bias (and any math-kernel scores) exceeds the budget -> ``chunked``.
3. Dense attention on CPU with at most ``cpu_kernel_max_queries`` queries per head (decode) and
   the sah kernels -> ``sparse`` (``sah.masked_attention`` over all keys; measured 2-4x faster
   than torch's CPU SDPA kernel for one query, slower from about 4 queries on).
4. Dense attention otherwise -> ``sdpa`` (FlashAttention / memory-efficient / cuDNN on CUDA,
   torch's flash kernel on CPU), unless SDPA would run its math kernel (e.g. float64, or
   bfloat16 before sm_80) and the materialised scores exceed the budget -> ``chunked``.

``dense`` (the eager reference) is never chosen automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .cost import get_memory_usage, sdpa_math_fallback
from .device import DeviceProperties
from .inputs import AttentionShape


@dataclass(frozen=True)
class SelectionPolicy:
    """The thresholds of the rules in the module docstring."""

    memory_fraction: float = 0.5
    cpu_kernel_max_queries: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must lie in (0, 1], got {self.memory_fraction}")


@dataclass(frozen=True)
class AttentionSelection:
    """A backend choice and why it was made (``explicit``: named by the caller)."""

    attention_type: str
    reason: str
    explicit: bool = False


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _fits(transient: int, device: DeviceProperties, policy: SelectionPolicy) -> bool:
    return device.free_memory is None or transient <= policy.memory_fraction * device.free_memory


def _where(device: DeviceProperties) -> str:
    if device.type == "cuda" and device.compute_capability is not None:
        major, minor = device.compute_capability
        return f"cuda sm_{major}{minor}"
    return device.type


def _sdpa_kernel(shape: AttentionShape, device: DeviceProperties) -> str:
    """The fused SDPA kernel torch is expected to pick (for the reason text)."""
    if device.type == "cpu":
        return f"torch's CPU flash kernel in {shape.dtype}"
    flash_capable = (device.compute_capability or (0, 0)) >= (8, 0)
    if shape.dtype in (torch.float16, torch.bfloat16) and flash_capable:
        if not shape.has_attention_mask:
            return f"FlashAttention/cuDNN in {shape.dtype}"
    why = (
        "float32"
        if shape.dtype == torch.float32
        else ("an attention mask" if flash_capable else "FlashAttention needs sm_80+")
    )
    return f"the memory-efficient kernel ({why})"


def select_attention_type(
    shape: AttentionShape,
    device: DeviceProperties,
    policy: Optional[SelectionPolicy] = None,
    query_block: int = 128,
    chunk_bytes: int = 16 * 2**20,
) -> AttentionSelection:
    """The backend for one call of ``shape`` on ``device`` (rules in the module docstring)."""
    policy = SelectionPolicy() if policy is None else policy
    where = _where(device)
    sdpa = get_memory_usage(shape, "sdpa", device, query_block, chunk_bytes)
    budget = (
        "no memory limit known"
        if device.free_memory is None
        else f"budget {_mib(policy.memory_fraction * device.free_memory)}"
    )
    if shape.has_sparse_mask:
        if device.runs_sah_kernels:
            return AttentionSelection(
                "sparse",
                f"sparse mask ({shape.mask_format}) on {where}: the sah kernels read "
                "only the kept keys",
            )
        missing = (
            "not built for this device"
            if not device.sah_kernels
            else (f"built for {list(device.sah_capabilities)} only")
        )
        if _fits(sdpa.transient_bytes, device, policy):
            return AttentionSelection(
                "sdpa",
                f"sparse mask on {where}, sah kernels {missing}: SDPA with a "
                f"log(1/p) bias ({_mib(sdpa.transient_bytes)} transient, {budget})",
            )
        return AttentionSelection(
            "chunked",
            f"sparse mask on {where}, sah kernels {missing}: SDPA's bias would take "
            f"{_mib(sdpa.transient_bytes)} ({budget}); chunked attention keeps memory bounded",
        )
    if (
        device.type == "cpu"
        and device.runs_sah_kernels
        and shape.q_len <= policy.cpu_kernel_max_queries
    ):
        return AttentionSelection(
            "sparse",
            f"dense decode on cpu ({shape.q_len} query per head): sah.masked_attention "
            "beats torch's CPU SDPA kernel for few queries",
        )
    fallback = sdpa_math_fallback(shape, device)
    if fallback is None:
        return AttentionSelection(
            "sdpa",
            f"dense attention on {where}: SDPA runs {_sdpa_kernel(shape, device)} (bounded memory)",
        )
    if _fits(sdpa.transient_bytes, device, policy):
        return AttentionSelection(
            "sdpa",
            f"dense attention on {where}: SDPA's math kernel ({fallback}) fits "
            f"({_mib(sdpa.transient_bytes)} transient, {budget})",
        )
    return AttentionSelection(
        "chunked",
        f"dense attention on {where}: SDPA's math kernel ({fallback}) would take "
        f"{_mib(sdpa.transient_bytes)} ({budget}); chunked attention keeps memory bounded",
    )
