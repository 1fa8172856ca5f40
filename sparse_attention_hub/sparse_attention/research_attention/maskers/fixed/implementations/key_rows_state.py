"""Per-layer state that holds one row per cached key (hash signatures, PQ codes), grown as the KV
cache grows and checked against the sequence it belongs to."""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


class KeyRowsState:
    """Rows ``(batch, heads, capacity, width)`` of which the first ``num_keys`` describe the keys
    at positions ``0 .. num_keys - 1`` of one sequence.

    The state remembers the batch size, kv heads, head dim and device of the keys it was built
    from, and the key at position ``num_keys - 1`` (``last_key``, (batch, kv_heads, 1,
    head_dim)) as a fingerprint of the sequence:
    :meth:`check` refuses keys of another sequence instead of silently reusing stale rows.
    """

    #: Name used in error messages (the owning masker).
    owner = "masker"

    def __init__(self, keys: Tensor, heads: int, width: int, dtype: torch.dtype) -> None:
        batch, kv_heads, _, head_dim = keys.shape
        self.batch, self.kv_heads, self.head_dim = batch, kv_heads, head_dim
        self.device = keys.device
        self.rows = torch.zeros(batch, heads, 0, width, dtype=dtype, device=keys.device)
        self.num_keys = 0
        self.last_key: Optional[Tensor] = None

    @property
    def valid_rows(self) -> Tensor:
        """The rows of the cached keys, ``(batch, heads, num_keys, width)`` (a view)."""
        return self.rows[:, :, : self.num_keys]

    def check(self, keys: Tensor, layer: int) -> None:
        """Raises unless ``keys`` (b, h_kv, n, d) continue this state's sequence: same batch,
        kv heads, head dim and device (ValueError), at least ``num_keys`` keys (ValueError), and
        the same key at position ``num_keys - 1``. The last check runs on the device without a
        host sync (``torch._assert_async``): a RuntimeError on CPU, a device-side assertion
        (fatal to the process) on CUDA."""
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
        if self.last_key is not None:
            # (A slice, not an integer index: that would specialise a compiled graph on n.)
            same = (keys[:, :, self.num_keys - 1 : self.num_keys] == self.last_key).all()
            torch._assert_async(
                same,
                f"{self.owner} state of layer {layer} belongs to another sequence (key "
                f"{self.num_keys - 1} differs); use a fresh sparse_meta_data for a new sequence",
            )

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
