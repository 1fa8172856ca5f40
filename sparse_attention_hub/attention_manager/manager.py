"""AttentionManager: chooses, holds and runs one attention backend; measures and models them."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import fields, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .backends import BACKENDS, AttentionBackend, ChunkedAttention
from .cost import (
    ComputeComplexity,
    MemoryUsage,
    check_attention_type,
    get_compute_complexity,
    get_memory_usage,
)
from .device import DeviceProperties
from .inputs import (
    AttentionInputs,
    AttentionShape,
    SparseMaskLike,
    mask_density,
    resolve_sparse_mask,
)
from .selection import AttentionSelection, SelectionPolicy, select_attention_type

Tensor = torch.Tensor
Workload = Union[AttentionShape, AttentionInputs]

logger = logging.getLogger("sparse_attention_hub.attention_manager")


class AttentionManager:
    """One attention entry point over the ``dense``, ``sdpa``, ``sparse`` and ``chunked``
    backends (same inputs, same output; see :mod:`.inputs`).

    Args:
        device: where the attention runs (default: CUDA when available, else CPU).
        device_properties: fixed decision inputs for the device (tests simulate devices with
            it); None detects them, free memory included, at each automatic selection.
        policy: the selection thresholds (default :class:`SelectionPolicy`).
        attention_type: a backend to pin now (an explicit override); None leaves the choice to
            :meth:`select_attention_module` or to the first call.
        query_block / chunk_bytes: the ``chunked`` backend's block and chunk sizes.
    """

    def __init__(
        self,
        device: Union[str, torch.device, None] = None,
        *,
        device_properties: Optional[DeviceProperties] = None,
        policy: Optional[SelectionPolicy] = None,
        attention_type: Optional[str] = None,
        query_block: int = 128,
        chunk_bytes: int = 16 * 2**20,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._device_properties = device_properties
        self.policy = SelectionPolicy() if policy is None else policy
        self.backends: Dict[str, AttentionBackend] = {
            name: cls(query_block, chunk_bytes) if cls is ChunkedAttention else cls()
            for name, cls in BACKENDS.items()
        }
        self.selection: Optional[AttentionSelection] = None
        if attention_type is not None:
            self.select_attention_module(attention_type)

    # ------------------------------------------------------------------------------------------
    # Choosing a backend.
    @property
    def device_properties(self) -> DeviceProperties:
        """The injected properties, or those of ``device`` now."""
        if self._device_properties is not None:
            return self._device_properties
        return DeviceProperties.detect(self.device)

    @property
    def attention_type(self) -> Optional[str]:
        """The active backend's name (None until one is selected)."""
        return None if self.selection is None else self.selection.attention_type

    @property
    def module(self) -> Optional[AttentionBackend]:
        """The active backend."""
        return None if self.selection is None else self.backends[self.selection.attention_type]

    def available_attention_types(self) -> List[str]:
        """The backends that run on this device."""
        device = self.device_properties
        return [name for name, b in self.backends.items() if b.is_available(device)]

    def select_attention_module(
        self, attention_type: Optional[str] = None, shape: Optional[Workload] = None
    ) -> AttentionSelection:
        """Activates ``attention_type``, or (None) the backend the selection rules choose for
        ``shape`` (an :class:`AttentionShape` or :class:`AttentionInputs`); the choice and its
        reason are logged and returned.

        Raises:
            ValueError: for an unknown or unavailable ``attention_type``, or None without a
                ``shape``.
        """
        if attention_type is not None:
            check_attention_type(attention_type)
            device = self.device_properties
            if not self.backends[attention_type].is_available(device):
                raise ValueError(
                    f"attention_type {attention_type!r} does not run on {device.type} "
                    f"{device.name!r}; available: {self.available_attention_types()}"
                )
            selection = AttentionSelection(attention_type, "explicit override", explicit=True)
        else:
            if shape is None:
                raise ValueError(
                    "select_attention_module(attention_type=None) needs a shape (an "
                    "AttentionShape or AttentionInputs) to choose for"
                )
            selection = self.choose(shape)
        self.selection = selection
        logger.info("attention backend %r: %s", selection.attention_type, selection.reason)
        return selection

    def choose(self, shape: Workload) -> AttentionSelection:
        """What the selection rules would choose for ``shape``, without activating it."""
        chunked = self.backends["chunked"]
        return select_attention_type(
            _as_shape(shape),
            self.device_properties,
            self.policy,
            chunked.query_block,
            chunked.chunk_bytes,
        )

    def switch_attention_module(self, attention_type: str) -> bool:
        """Makes ``attention_type`` the active backend. Returns True when it is active after
        the call, False when it does not run on this device (the current one stays, a warning
        is logged).

        Raises:
            ValueError: for an unknown ``attention_type`` (the message lists the choices).
        """
        check_attention_type(attention_type)
        if not self.backends[attention_type].is_available(self.device_properties):
            logger.warning(
                "attention backend %r does not run on %s; keeping %r",
                attention_type,
                self.device,
                self.attention_type,
            )
            return False
        if self.attention_type != attention_type:
            self.select_attention_module(attention_type)
        return True

    # ------------------------------------------------------------------------------------------
    # Running.
    def __call__(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor] = None,
        scaling: Optional[float] = None,
        sparse_mask: SparseMaskLike = None,
    ) -> Tensor:
        """Attention output (b, h, q, d) from the active backend; the first call without one
        selects it for its own shape."""
        if self.selection is None:
            inputs = AttentionInputs(queries, keys, values, attention_mask, scaling, sparse_mask)
            self.select_attention_module(shape=inputs)
        return self.module(queries, keys, values, attention_mask, scaling, sparse_mask)

    def attention_forward(
        self,
        module: Optional[nn.Module],
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        scaling: Optional[float] = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> Tuple[Tensor, None]:
        """transformers' attention-function signature: output (b, q, h, d) and no weights.
        ``sparse_mask`` may come in ``kwargs``. Inference only (no dropout)."""
        if dropout > 0.0 and module is not None and module.training:
            raise NotImplementedError("AttentionManager.attention_forward does not apply dropout")
        out = self(query, key, value, attention_mask, scaling, kwargs.get("sparse_mask"))
        return out.transpose(1, 2).contiguous(), None

    # ------------------------------------------------------------------------------------------
    # Measuring and modelling.
    def benchmark_attention_types(
        self,
        sample_input: Union[AttentionInputs, Mapping[str, Any]],
        attention_types: Optional[Iterable[str]] = None,
        repeats: int = 20,
        warmup: int = 3,
    ) -> Dict[str, Dict[str, float]]:
        """``{type: {"ms": median time, "peak_mb": transient memory}}`` of every available
        backend (or of ``attention_types``) on the same input.

        CUDA: CUDA events, and ``torch.cuda.max_memory_allocated`` above what was allocated
        before the call (output included). CPU: ``time.perf_counter``, and ``peak_mb`` from the
        cost model (:meth:`get_memory_usage`), since host allocations are not tracked.
        """
        inputs = _as_inputs(sample_input)
        names = (
            self.available_attention_types() if attention_types is None else list(attention_types)
        )
        for name in names:
            check_attention_type(name)
        on_cuda = inputs.queries.is_cuda
        shape = None if on_cuda else inputs.describe(with_density=True)
        results: Dict[str, Dict[str, float]] = {}
        for name in names:
            run = _bound_call(self.backends[name], inputs)
            for _ in range(warmup):
                run()
            if on_cuda:
                ms, peak = _time_cuda(run, repeats, inputs.queries.device)
            else:
                ms = _time_host(run, repeats)
                peak = self.get_memory_usage(shape, name).transient_bytes
            results[name] = {"ms": ms, "peak_mb": peak / 2**20}
            logger.info("benchmark %s: %.4f ms, %.2f MiB", name, ms, peak / 2**20)
        return results

    def get_memory_usage(
        self,
        shape: Workload,
        attention_type: Optional[str] = None,
        density: Union[float, SparseMaskLike] = None,
    ) -> MemoryUsage:
        """Bytes read and transient bytes of one call (see :mod:`.cost`) of ``attention_type``
        (default: the active backend, else the one the rules choose) on ``shape``, with the
        sparse mask's ``density`` (a float for row form, or the mask itself)."""
        shape = _with_density(_as_shape(shape, with_density=True), density)
        chunked = self.backends["chunked"]
        return get_memory_usage(
            shape,
            self._type_for(shape, attention_type),
            self.device_properties,
            chunked.query_block,
            chunked.chunk_bytes,
        )

    def get_compute_complexity(
        self,
        shape: Workload,
        attention_type: Optional[str] = None,
        density: Union[float, SparseMaskLike] = None,
    ) -> ComputeComplexity:
        """FLOPs of one call (see :mod:`.cost`); arguments as :meth:`get_memory_usage`."""
        shape = _with_density(_as_shape(shape, with_density=True), density)
        return get_compute_complexity(shape, self._type_for(shape, attention_type))

    def _type_for(self, shape: AttentionShape, attention_type: Optional[str]) -> str:
        if attention_type is not None:
            return attention_type
        if self.attention_type is not None:
            return self.attention_type
        return self.choose(shape).attention_type


def _as_inputs(sample: Union[AttentionInputs, Mapping[str, Any]]) -> AttentionInputs:
    if isinstance(sample, AttentionInputs):
        return sample
    allowed = {f.name for f in fields(AttentionInputs)}
    unknown = set(sample) - allowed
    if unknown:
        raise ValueError(
            f"sample_input has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return AttentionInputs(**sample)


def _as_shape(shape: Workload, with_density: bool = False) -> AttentionShape:
    if isinstance(shape, AttentionShape):
        return shape
    if isinstance(shape, AttentionInputs):
        return shape.describe(with_density=with_density)
    raise TypeError(f"shape must be an AttentionShape or AttentionInputs, got {type(shape)}")


def _with_density(shape: AttentionShape, density: Union[float, SparseMaskLike]) -> AttentionShape:
    """``shape`` with the sparse mask format and density of ``density`` (a float means a
    row-form mask of that density; None keeps ``shape``'s)."""
    if density is None:
        return shape
    if isinstance(density, (int, float)):
        return replace(shape, mask_format="rows", density=float(density))
    logical = (shape.batch, shape.heads, shape.q_len, shape.k_len)
    probs = resolve_sparse_mask(density, logical)
    if probs is None:
        return replace(shape, mask_format=None, density=1.0)
    fmt = "rows" if probs.is_rows else "dense"
    return replace(shape, mask_format=fmt, density=mask_density(density, logical))


def _bound_call(backend: AttentionBackend, inputs: AttentionInputs):
    def run() -> Tensor:
        return backend(
            inputs.queries,
            inputs.keys,
            inputs.values,
            inputs.attention_mask,
            inputs.scaling,
            inputs.sparse_mask,
        )

    return run


def _time_host(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _time_cuda(run, repeats: int, device: torch.device) -> Tuple[float, int]:
    """Median ms over ``repeats`` (CUDA events) and the peak bytes allocated above the
    starting point during one call."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), peak
