"""Per-layer state that holds one row per cached key (hash signatures, PQ codes), grown as the KV
cache grows and checked against the sequence it belongs to; the stale-state check shared by
every per-layer masker state (:class:`SequenceGuard`, :func:`raise_if_stale`); and the helpers
that let these states follow a static KV cache (:func:`written_end`, :func:`written_positions`,
:func:`valid_key_count`, :func:`mark_static`).

Dynamic and static caches. With a dynamic cache the key length ``n`` grows with every call and a
state computes rows for keys ``num_keys .. n - 1`` only (append). A static cache (transformers'
``StaticCache``) always hands the attention its whole buffer (``n = max_cache_len``) with an
attention mask that hides the unwritten tail: a state is created on the first call with rows
for all ``n`` keys (those of the unwritten tail are garbage that the mask hides), and every later
call with ``n == num_keys`` is a *positional refresh*: the call wrote its ``q`` keys at the ``q``
positions that end at the last key its last query row may see (:func:`written_positions`,
computed on the device from the attention mask: no host sync, static shapes, so it runs inside a
CUDA graph), and only the rows of those positions are recomputed and written in place. A call
with ``n == num_keys`` and no attention mask is a repeated call (nothing was written): nothing is
recomputed.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

Tensor = torch.Tensor


def _allowed(attention_mask: Tensor) -> Tensor:
    """Bool view of an attention mask: True where a key is allowed (bool masks: True; additive
    masks: above the dtype's lowest value, i.e. neither -inf nor HF's ``finfo.min``)."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_floating_point():
        return attention_mask > torch.finfo(attention_mask.dtype).min
    return attention_mask != 0


def written_end(attention_mask: Tensor, num_keys: int) -> Tensor:
    """One past the last key that the LAST query row may see, as an int64 0-d device tensor:
    the maximum over batch rows and heads of the attention mask ``(b|1, h|1, q|1, >= num_keys)``
    (bool or additive), 0 when that row sees no key. With a static cache this is the number of
    buffer positions written so far (the same for every batch row). No host sync."""
    if attention_mask.dim() != 4:
        raise ValueError(
            f"attention_mask must be 4-D (batch, heads, q_len, k_len), got {attention_mask.dim()}-D"
        )
    last_row = _allowed(attention_mask[:, :, -1, :num_keys])  # (b|1, h|1, n)
    ends = torch.arange(1, num_keys + 1, device=attention_mask.device)
    return torch.where(last_row, ends, 0).amax()


def written_positions(attention_mask: Tensor, q_len: int, num_keys: int) -> Tensor:
    """The ``q_len`` key positions a call wrote: ``end - q_len + arange(q_len)`` with ``end``
    from :func:`written_end`, clamped to ``[0, num_keys - 1]`` (int64, on the mask's device; a
    clamped duplicate names a key of the call twice, which rewrites identical rows). No host
    sync, static shape."""
    end = written_end(attention_mask, num_keys)
    offsets = torch.arange(q_len, device=attention_mask.device)
    return (end - q_len + offsets).clamp(0, max(num_keys - 1, 0))


def valid_key_count(attention_mask: Optional[Tensor], q_len: int, num_keys: int) -> int:
    """How many leading keys hold the sequence so far (as a Python int): ``num_keys`` when there
    is no mask, when ``q_len == num_keys`` or inside a compiled graph; else :func:`written_end`
    (at least 1). Syncs with the device in that last case: for state creation only (a static
    cache's prefill), never per decode step."""
    if attention_mask is None or q_len >= num_keys or torch.compiler.is_compiling():
        return num_keys
    return max(1, int(written_end(attention_mask, num_keys)))


def mark_static(*tensors: Optional[Tensor]) -> None:
    """Marks state tensors that later calls mutate in place as static addresses for
    ``torch.compile`` (as transformers does for its StaticCache buffers), so CUDA graphs
    (mode "reduce-overhead") are not skipped for mutated inputs. No-op inside a compiled
    graph (the tensors were created there)."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        if t is not None:
            torch._dynamo.mark_static_address(t)


class StaleStateError(RuntimeError):
    """A masker's per-layer state was given the keys of another sequence: a ``sparse_meta_data``
    reused across sequences (requests)."""


class SequenceGuard:
    """Detects a per-layer state reused for another sequence, without a host sync on CUDA.

    A state remembers ``last_key``, its sequence's key at position ``num_keys - 1``; the keys of
    the next call that appends keys must hold the same key there. A positional refresh (a static
    cache: same key count and an attention mask, see the module docstring) rewrites buffer
    slots, so it checks two other keys: ``anchor_key``, the key at the last position that the
    call creating the state wrote (``anchor``; a static cache rewrites it only when another
    sequence is prefilled into the buffer; unlike the key at position 0, it depends on the
    sequence's earlier tokens, so two sequences that both start with BOS differ there), and the
    key at ``num_keys - 1`` unless the call wrote that slot (``last_key`` then follows it, in
    place). On CPU a mismatch raises at once (:class:`StaleStateError`; a plain RuntimeError in
    a compiled graph). On CUDA it only ORs ``stale``, a device-side int32 flag (a device-side
    assertion would kill the CUDA context, and a host check would sync every decode step);
    :meth:`raise_if_stale`, or :func:`raise_if_stale` over a whole ``sparse_meta_data``, raises
    where the host syncs anyway, e.g. after a request. The flag stays set: the state is spoiled
    for good. States call :meth:`finish_creation` once created and filled.
    """

    owner = "masker"
    num_keys: int
    last_key: Optional[Tensor]
    #: int64 (1,): the last position the call that created the state wrote (see above).
    anchor: Optional[Tensor] = None
    #: The key at ``anchor``, (batch, kv_heads, 1, head_dim).
    anchor_key: Optional[Tensor] = None
    stale: Tensor
    #: Layer of the last checked call (for the error message).
    layer: Optional[int] = None

    def _key_at(self, keys: Tensor, position: int) -> Tensor:
        """The key at ``position`` of ``keys`` (b, h_kv, n, d), laid out as ``last_key``
        (b, h_kv, 1, d). (A slice, not an integer index: that would specialise a compiled
        graph on n.)"""
        return keys[:, :, position : position + 1]

    def finish_creation(self, keys: Tensor, attention_mask: Optional[Tensor]) -> None:
        """Call once, when the state has been created and filled from ``keys`` (b, h_kv, n, d)
        and the call's ``attention_mask`` (None: all ``n`` keys are the sequence): records the
        anchor (no host sync) and marks the state tensors as static addresses
        (:meth:`mark_static_addresses`)."""
        n = keys.shape[2]
        if n > 0:
            if attention_mask is None:
                end = torch.full((), n, dtype=torch.int64, device=keys.device)
            else:
                end = written_end(attention_mask, n)
            self.anchor = (end - 1).clamp_min(0).reshape(1)
            self.anchor_key = keys.index_select(2, self.anchor).detach()
        self.mark_static_addresses()

    def _verify_sequence(self, keys: Tensor, layer: int, end: Optional[Tensor]) -> None:
        """The sequence check of a call with ``keys`` (b, h_kv, n >= num_keys, d): for a
        positional refresh (``end``, from :func:`written_end`, given and ``n == num_keys``) the
        key at ``anchor``, and the one at ``n - 1`` unless the call wrote it; otherwise the key
        at ``num_keys - 1``."""
        n = keys.shape[2]
        if end is None or n != self.num_keys or self.anchor is None:
            self._verify_last_key(self._key_at(keys, self.num_keys - 1), layer)
            return
        differs = (keys.index_select(2, self.anchor) != self.anchor_key).any()
        if self.last_key is not None:
            last = self._key_at(keys, n - 1)
            differs = differs | ((last != self.last_key).any() & (end < n))
            self.last_key.copy_(last)  # in place: compiled graphs keep the address
        self._flag_if(differs, layer)

    def _verify_last_key(self, current: Tensor, layer: int) -> None:
        """Compares ``current``, the caller's key at position ``num_keys - 1`` (laid out as
        ``last_key``), with ``last_key``."""
        if self.last_key is None:
            return
        self._flag_if((current != self.last_key).any(), layer)

    def _flag_if(self, differs: Tensor, layer: int) -> None:
        """Raises (CPU) or flags on the device (CUDA) when ``differs`` (a bool 0-d tensor)."""
        if differs.device.type != "cpu":
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

    def _state_tensors(self) -> Tuple[Optional[Tensor], ...]:
        """The tensors that later calls mutate in place (see :meth:`mark_static_addresses`)."""
        return (self.stale, self.last_key, self.anchor, self.anchor_key)

    def mark_static_addresses(self) -> None:
        """Marks :meth:`_state_tensors` as static addresses for torch.compile (see
        :func:`mark_static`)."""
        mark_static(*self._state_tensors())

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
    from, and fingerprint keys of the sequence (``last_key``, the key at position
    ``num_keys - 1``, (batch, kv_heads, 1, head_dim), and ``anchor_key``, see
    :class:`SequenceGuard`): :meth:`check` refuses keys of another sequence instead of silently
    reusing stale rows. A dynamic cache appends rows (:meth:`append`); a static cache rewrites
    the rows of the positions each call wrote
    (:meth:`refresh`, see the module docstring).
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

    def check(self, keys: Tensor, layer: int, end: Optional[Tensor] = None) -> None:
        """Raises unless ``keys`` (b, h_kv, n, d) continue this state's sequence: same batch,
        kv heads, head dim and device (ValueError), at least ``num_keys`` keys (ValueError), and
        the same fingerprint keys (see :class:`SequenceGuard`; ``end`` from
        :func:`written_end` for a positional refresh: StaleStateError on CPU, deferred to
        :meth:`raise_if_stale` on CUDA)."""
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
        self._verify_sequence(keys, layer, end)

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

    def refresh(self, positions: Tensor, new_rows: Tensor) -> None:
        """Positional refresh: writes ``new_rows`` (batch, heads, len(positions), width), the
        rows of the keys at ``positions`` (int64, each < ``num_keys``, from
        :func:`written_positions`), in place."""
        self.rows.index_copy_(2, positions, new_rows)

    def _state_tensors(self) -> Tuple[Optional[Tensor], ...]:
        return (*super()._state_tensors(), self.rows)
