"""Per-layer state that holds one row per cached key (hash signatures, PQ codes), grown as the KV
cache grows and checked against the sequence it belongs to; and the stale-state check shared by
every per-layer masker state (:class:`SequenceGuard`, :func:`raise_if_stale`)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

Tensor = torch.Tensor


class StaleStateError(RuntimeError):
    """A masker's per-layer state was given the keys of another sequence: a ``sparse_meta_data``
    reused across sequences (requests)."""


class SequenceGuard:
    """Detects a per-layer state reused for another sequence, without a host sync on CUDA.

    A state remembers ``last_key``, its sequence's key at position ``num_keys - 1``; the keys of
    the next call must hold the same key there. On CPU a mismatch raises at once
    (:class:`StaleStateError`; a plain RuntimeError in a compiled graph). On CUDA it only ORs
    ``stale``, a device-side int32 flag (a device-side assertion would kill the CUDA context,
    and a host check would sync every decode step); :meth:`raise_if_stale`, or
    :func:`raise_if_stale` over a whole ``sparse_meta_data``, raises where the host syncs
    anyway, e.g. after a request. The flag stays set: the state is spoiled for good.
    """

    #: Name used in error messages (the owning masker).
    owner = "masker"
    num_keys: int
    last_key: Optional[Tensor]
    stale: Tensor
    #: Layer of the last checked call (for the error message).
    layer: Optional[int] = None

    def _verify_last_key(self, current: Tensor, layer: int) -> None:
        """Compares ``current``, the caller's key at position ``num_keys - 1`` (laid out as
        ``last_key``), with ``last_key``."""
        if self.last_key is None:
            return
        differs = (current != self.last_key).any()
        if current.device.type != "cpu":
            self.layer = layer
            self.stale.bitwise_or_(differs)
            return
        message = (
            f"{self.owner} state of layer {layer} belongs to another sequence (the keys passed "
            "in differ from those it cached); use a fresh sparse_meta_data for each new sequence"
        )
        if torch.compiler.is_compiling():
            torch._assert_async(~differs, message)  # a RuntimeError when the graph runs on CPU
        elif differs:  # no sync on CPU
            raise StaleStateError(message)

    def raise_if_stale(self) -> None:
        """Raises :class:`StaleStateError` if a call was given keys of another sequence since
        this state was created (syncs with the device)."""
        if self.stale.item():
            raise StaleStateError(
                f"{self.owner} state of layer {self.layer} belongs to another sequence: it was "
                "given keys that differ from those it cached, so the masks computed from it since "
                "then used stale rows; use a fresh sparse_meta_data for each new sequence "
                "(request)"
            )


def raise_if_stale(sparse_meta_data: Optional[Dict[Any, Any]]) -> None:
    """Raises :class:`StaleStateError` if any masker state in ``sparse_meta_data`` (as
    ``sparse_meta_data[name][layer]``) was given keys of another sequence. Syncs with the device
    once per state: call it after a request, not per decode step."""
    for per_layer in (sparse_meta_data or {}).values():
        if isinstance(per_layer, dict):
            for state in per_layer.values():
                if isinstance(state, SequenceGuard):
                    state.raise_if_stale()


class KeyRowsState(SequenceGuard):
    """Rows ``(batch, heads, capacity, width)`` of which the first ``num_keys`` describe the keys
    at positions ``0 .. num_keys - 1`` of one sequence.

    The state remembers the batch size, kv heads, head dim and device of the keys it was built
    from, and the key at position ``num_keys - 1`` (``last_key``, (batch, kv_heads, 1,
    head_dim)) as a fingerprint of the sequence:
    :meth:`check` refuses keys of another sequence instead of silently reusing stale rows.
    """

    def __init__(self, keys: Tensor, heads: int, width: int, dtype: torch.dtype) -> None:
        batch, kv_heads, _, head_dim = keys.shape
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.device = keys.device
        self.rows = torch.zeros(batch, heads, 0, width, dtype=dtype, device=keys.device)
        self.num_keys = 0
        self.last_key: Optional[Tensor] = None
        self.stale = torch.zeros((), dtype=torch.int32, device=keys.device)

    @property
    def valid_rows(self) -> Tensor:
        """The rows of the cached keys, ``(batch, heads, num_keys, width)`` (a view)."""
        return self.rows[:, :, : self.num_keys]

    def check(self, keys: Tensor, layer: int) -> None:
        """Raises unless ``keys`` (b, h_kv, n, d) continue this state's sequence: same batch,
        kv heads, head dim and device (ValueError), at least ``num_keys`` keys (ValueError), and
        the same key at position ``num_keys - 1`` (see :class:`SequenceGuard`: StaleStateError
        on CPU, deferred to :meth:`raise_if_stale` on CUDA)."""
        batch, kv_heads, n, head_dim = keys.shape
        expected = (self.batch, self.kv_heads, self.head_dim)
        if (batch, kv_heads, head_dim) != expected or keys.device != self.device:
            raise ValueError(
                f"{self.owner} state of layer {layer} belongs to keys of (batch, kv_heads, "
                f"head_dim) {expected} on {self.device}, got {(batch, kv_heads, head_dim)} on "
                f"{keys.device}; use a fresh sparse_meta_data for a new sequence"
            )
        if n < self.num_keys:
            raise ValueError(
                f"Current number of keys ({n}) is less than cached number of keys ({self.num_keys})"
            )
        # (A slice, not an integer index: that would specialise a compiled graph on n.)
        self._verify_last_key(keys[:, :, self.num_keys - 1 : self.num_keys], layer)

    def append(self, keys: Tensor, new_rows: Tensor) -> None:
        """Stores ``new_rows`` (batch, heads, n - num_keys, width), the rows of keys
        ``num_keys .. n - 1`` of ``keys`` (b, h_kv, n, d), and records ``keys`` as cached."""
        n = keys.shape[2]
        batch, heads, capacity, width = self.rows.shape
        if n > capacity:  # grow with headroom, so decoding appends without reallocating
            grown = self.rows.new_zeros(batch, heads, n + max(256, n // 8), width)
            grown[:, :, : self.num_keys] = self.valid_rows
            self.rows = grown
        self.rows[:, :, self.num_keys : n] = new_rows
        self.num_keys = n
        if n > 0:
            self.last_key = keys[:, :, n - 1 : n].detach().clone()
