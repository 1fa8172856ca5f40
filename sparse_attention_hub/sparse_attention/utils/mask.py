"""The ``Mask`` class: inclusion probabilities over a tensor of shape (*, n).

A mask value ``p`` in [0, 1] is the probability that a key takes part in attention: 1 for a
deterministic pick, ``p`` for a sampled key, 0 for a key left out. Attention weights an included
key by exactly ``1/p``.

A mask is in one of five states (exactly one flag is set):

=========  ====================  ==============================================================
state      flag                  storage
=========  ====================  ==============================================================
FULL       ``is_full``           nothing; every value is 1
EMPTY      ``is_empty``          nothing; every value is 0, but attention treats it as dense
                                 (no masker chose anything)
DENSE      ``from_dense_mask``   ``mask``: a tensor of ``shape`` in ``dtype``
INDEX      ``from_index``        ``indices`` (flat positions ``row * n + col``, int64), ``ptr``
                                 (row offsets, length ``rows + 1``), ``data`` (values or None
                                 for all ones)
ROWS       ``from_rows``         ``row_indices`` int32 and ``row_probs`` float32 of shape
                                 ``shape[:-1] + (cap,)``: the row form of the ``ops`` module
                                 (distinct ascending column indices padded at the end with -1)
=========  ====================  ==============================================================

ROWS is the fast path that the maskers and ``ops.sparse_attention`` use; DENSE and INDEX keep the
reference API for hand-built research masks.

Rules that differ from the reference implementation on purpose:

- Values outside [0, 1] are rejected with a ValueError when a mask is built from a caller's
  tensors. Constructions from op outputs (``trusted=True``, merges, conversions) skip the check,
  which would cost a host sync.
- A mask never aliases a caller's tensor: constructors copy their inputs and
  ``get_dense_mask``/``get_index_mask`` of a DENSE/INDEX mask return copies, so in-place edits of
  either side never leak into the other. ``get_rows`` returns the stored row tensors (the hot
  path): treat them as read-only.
- Merging is ``clamp(p1 + p2, 0, 1)`` everywhere, merges with an EMPTY mask included.
- Repeated positions (row-wise creation, INDEX masks) resolve to their last occurrence, on every
  device.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Tuple

import torch

from sparse_attention_hub import ops

Tensor = torch.Tensor
Shape = Tuple[int, ...]

_FULL = "full"
_EMPTY = "empty"
_DENSE = "dense"
_INDEX = "index"
_ROWS = "rows"
_MODES = ("dense", "sparse")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"Invalid mode: {mode}")


def _check_probabilities(name: str, values: Tensor) -> None:
    """Raises ValueError unless every value lies in [0, 1] (one host sync)."""
    if values.numel() == 0:
        return
    values = values.detach()
    if not values.is_floating_point():
        values = values.to(torch.float32)
    lo, hi = torch.stack(torch.aminmax(values)).tolist()
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{lo}, {hi}]")


def _index_from_dense(dense: Tensor, rows: int, n: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Flat positions, values and row offsets of the non-zero entries of a dense mask."""
    flat = dense.reshape(-1)
    indices = torch.nonzero(flat).squeeze(-1)
    counts = torch.count_nonzero(dense.reshape(rows, n), dim=1)
    ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, dim=0)])
    return indices, ptr, flat[indices]


def _last_occurrence(keys: Tensor, size: int) -> Tensor:
    """Bool mask over ``keys`` (1-D, values in [0, size)) marking the last occurrence of each."""
    pos = torch.arange(keys.numel(), device=keys.device)
    last = torch.full((size,), -1, dtype=torch.long, device=keys.device)
    last = last.scatter_reduce(0, keys, pos, reduce="amax")
    return last[keys] == pos


class Mask:
    """Inclusion probabilities over a tensor of shape (*, n); see the module docstring."""

    shape: Shape
    dtype: torch.dtype
    device: torch.device
    is_full: bool
    is_empty: bool
    from_dense_mask: bool
    from_index: bool
    from_rows: bool
    mask: Optional[Tensor]
    indices: Optional[Tensor]
    ptr: Optional[Tensor]
    data: Optional[Tensor]
    row_indices: Optional[Tensor]
    row_probs: Optional[Tensor]

    def __init__(
        self,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: Optional[torch.device],
        mask: Optional[Tensor] = None,
        indices: Optional[Tensor] = None,
        ptr: Optional[Tensor] = None,
        data: Optional[Tensor] = None,
        from_dense_mask: bool = False,
        from_index: bool = False,
        is_full: bool = False,
        is_empty: bool = False,
        row_indices: Optional[Tensor] = None,
        row_probs: Optional[Tensor] = None,
        from_rows: bool = False,
    ) -> None:
        """Builds a mask from a caller's tensors (copied and validated).

        The first matching option wins: ``is_full``, ``is_empty``, ``from_dense_mask`` with
        ``mask``, ``from_index`` with ``indices`` and ``ptr`` (``data`` None means all ones),
        ``from_rows`` with ``row_indices`` and ``row_probs``. ``device`` is required for FULL and
        EMPTY; otherwise the tensors' device is used.

        Raises:
            ValueError: for no valid option, mismatched shapes, or values outside [0, 1].
        """
        shape = tuple(int(s) for s in shape)
        if is_full or is_empty:
            if device is None:
                kind = "full" if is_full else "empty"
                raise ValueError(f"device must be specified for {kind} masks")
            self._set_state(shape, dtype, torch.device(device), _FULL if is_full else _EMPTY)
        elif from_dense_mask and mask is not None:
            if tuple(mask.shape) != shape:
                raise ValueError(f"mask.shape must be {shape}, got {tuple(mask.shape)}")
            _check_probabilities("mask", mask)
            stored = mask.detach().to(dtype=dtype, copy=True)
            self._set_state(shape, dtype, stored.device, _DENSE, mask=stored)
        elif from_index and indices is not None and ptr is not None:
            self._init_index(shape, dtype, indices, ptr, data)
        elif from_rows and row_indices is not None and row_probs is not None:
            self._init_rows(shape, dtype, row_indices, row_probs, ("row_indices", "row_probs"))
        else:
            raise ValueError(
                "Must specify either from_dense_mask with mask, from_index with indices and ptr, "
                "from_rows with row_indices and row_probs, is_full=True, or is_empty=True"
            )

    def _init_index(
        self, shape: Shape, dtype: torch.dtype, indices: Tensor, ptr: Tensor, data: Optional[Tensor]
    ) -> None:
        rows, total = math.prod(shape[:-1]), math.prod(shape)
        if ptr.numel() != rows + 1:
            raise ValueError(f"ptr.numel() must be {rows + 1}, got {ptr.numel()}")
        if indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if data is not None and data.numel() != indices.numel():
            raise ValueError(
                f"data.numel() must equal indices.numel() {indices.numel()}, got {data.numel()}"
            )
        if indices.numel() > 0:
            lo, hi = torch.stack(torch.aminmax(indices.detach().long())).tolist()
            if lo < 0 or hi >= total:
                raise ValueError(
                    f"indices must lie in [0, {total}) (flat positions), got values in [{lo}, {hi}]"
                )
        stored_data = None
        if data is not None:
            _check_probabilities("data", data)
            stored_data = data.detach().reshape(-1).to(dtype=dtype, copy=True)
        stored_indices = indices.detach().reshape(-1).to(dtype=torch.long, copy=True)
        stored_ptr = ptr.detach().reshape(-1).to(dtype=torch.long, copy=True)
        self._set_state(
            shape,
            dtype,
            stored_indices.device,
            _INDEX,
            indices=stored_indices,
            ptr=stored_ptr,
            data=stored_data,
        )

    def _init_rows(
        self,
        shape: Shape,
        dtype: torch.dtype,
        row_indices: Tensor,
        row_probs: Tensor,
        names: Tuple[str, str],
    ) -> None:
        idx_name, probs_name = names
        _check_rows_shapes(shape, row_indices, row_probs)
        if row_indices.is_floating_point() or row_indices.is_complex():
            raise ValueError(f"{idx_name} must be an integer tensor, got {row_indices.dtype}")
        if not row_probs.is_floating_point():
            raise ValueError(f"{probs_name} must be a floating tensor, got {row_probs.dtype}")
        _check_probabilities(probs_name, row_probs)
        idx = row_indices.detach().to(dtype=torch.int32, copy=True)
        if idx.numel() > 0:
            n = shape[-1]
            valid = idx >= 0
            after_padding = (valid[..., 1:] & ~valid[..., :-1]).any()
            not_ascending = ((idx[..., 1:] <= idx[..., :-1]) & valid[..., 1:]).any()
            lo, hi, bad_pad, bad_order = torch.stack(
                [idx.min().long(), idx.max().long(), after_padding.long(), not_ascending.long()]
            ).tolist()
            if lo < -1 or hi >= n:
                raise ValueError(
                    f"{idx_name} must lie in [0, {n}) or be -1 (padding), got values in "
                    f"[{lo}, {hi}]"
                )
            if bad_pad or bad_order:
                raise ValueError(
                    f"{idx_name} must list distinct columns in ascending order with the -1 "
                    "padding at the end of each row"
                )
        probs = row_probs.detach().to(dtype=torch.float32, copy=True)
        self._set_state(shape, dtype, idx.device, _ROWS, row_indices=idx, row_probs=probs)

    def _set_state(
        self,
        shape: Shape,
        dtype: torch.dtype,
        device: torch.device,
        state: str,
        mask: Optional[Tensor] = None,
        indices: Optional[Tensor] = None,
        ptr: Optional[Tensor] = None,
        data: Optional[Tensor] = None,
        row_indices: Optional[Tensor] = None,
        row_probs: Optional[Tensor] = None,
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self._state = state
        self.is_full = state == _FULL
        self.is_empty = state == _EMPTY
        self.from_dense_mask = state == _DENSE
        self.from_index = state == _INDEX
        self.from_rows = state == _ROWS
        self.mask = mask
        self.indices = indices
        self.ptr = ptr
        self.data = data
        self.row_indices = row_indices
        self.row_probs = row_probs

    @classmethod
    def _build(
        cls, shape: Shape, dtype: torch.dtype, device: torch.device, state: str, **tensors: Tensor
    ) -> "Mask":
        """A mask that owns ``tensors`` as they are: no copy, no validation (trusted callers)."""
        obj = cls.__new__(cls)
        obj._set_state(tuple(shape), dtype, device, state, **tensors)
        return obj

    # ------------------------------------------------------------------------------------------
    # Constructors

    @classmethod
    def create_empty_mask(
        cls, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> "Mask":
        """An EMPTY mask: no key chosen yet, which attention treats as dense attention."""
        return cls(shape=shape, dtype=dtype, device=device, is_empty=True)

    @classmethod
    def create_full_mask(
        cls, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> "Mask":
        """A FULL mask: every key with probability 1 (dense attention), stored as a flag."""
        return cls(shape=shape, dtype=dtype, device=device, is_full=True)

    @classmethod
    def create_mask_from_indices(
        cls,
        shape: Sequence[int],
        indices: Tensor,
        ptr: Tensor,
        data: Optional[Tensor],
        dtype: torch.dtype,
    ) -> "Mask":
        """An INDEX mask from flat positions ``row * n + col``, row offsets and values.

        ``data`` None means all ones; values are stored in ``dtype``. Repeated positions are kept
        as given; densifying resolves them to their last occurrence.

        Raises:
            ValueError: if ``ptr.numel()`` is not ``rows + 1``, positions fall outside the
                tensor, or ``data`` lies outside [0, 1].
        """
        return cls(
            shape=shape,
            dtype=dtype,
            device=indices.device,
            indices=indices,
            ptr=ptr,
            data=data,
            from_index=True,
        )

    @classmethod
    def create_mask_from_dense_mask(
        cls, shape: Sequence[int], mask: Tensor, dtype: torch.dtype
    ) -> "Mask":
        """A DENSE mask holding a copy of ``mask`` cast to ``dtype``.

        Raises:
            ValueError: if ``mask.shape != shape`` or a value lies outside [0, 1].
        """
        return cls(shape=shape, dtype=dtype, device=mask.device, mask=mask, from_dense_mask=True)

    @classmethod
    def create_from_rows(
        cls,
        shape: Sequence[int],
        indices: Tensor,
        probs: Tensor,
        dtype: torch.dtype = torch.float32,
        trusted: bool = False,
    ) -> "Mask":
        """A ROWS mask from row form: ``indices`` int32 and ``probs`` float32 of shape
        ``shape[:-1] + (cap,)``, distinct ascending columns per row padded at the end with -1.

        By default the tensors are copied and checked (values, order, range: a host sync).
        ``trusted=True`` is for tensors that come fresh from a ``sah`` op: the mask takes them
        as they are (no copy, no sync), so a decode step stays asynchronous and compilable.

        Raises:
            ValueError: for mismatched shapes, or (untrusted) probabilities outside [0, 1],
                columns outside [0, n), or rows that are not ascending with trailing padding.
        """
        shape = tuple(int(s) for s in shape)
        if not trusted:
            mask = cls.__new__(cls)
            mask._init_rows(shape, dtype, indices, probs, ("indices", "probs"))
            return mask
        _check_rows_shapes(shape, indices, probs)
        if indices.dtype != torch.int32 or probs.dtype != torch.float32:
            raise ValueError(
                f"trusted row masks need int32 indices and float32 probs, got {indices.dtype} "
                f"and {probs.dtype}"
            )
        return cls._build(shape, dtype, indices.device, _ROWS, row_indices=indices, row_probs=probs)

    @classmethod
    def create_from_row_wise_idx(
        cls,
        shape: Sequence[int],
        row_wise_idx: Tensor,
        data: Tensor,
        mask_type: Literal["index", "dense"],
        dtype: torch.dtype,
        use_padding: bool = False,
        mode: Literal["sparse", "dense"] = "dense",
    ) -> "Mask":
        """A mask from per-row column lists ``row_wise_idx`` (*, k) and their values ``data``.

        ``mask_type`` picks the result's state (``"dense"`` -> DENSE, ``"index"`` -> INDEX);
        ``mode`` picks the algorithm (scatter into a dense tensor, or sort the flat positions).
        Both give the same mask. Negative columns are padding and are dropped in either mode;
        ``use_padding`` is accepted for compatibility. A column repeated within a row takes the
        value of its last occurrence, on every device.

        Raises:
            ValueError: for a bad ``mode``/``mask_type``, empty ``shape``, zero columns,
                mismatched shapes, columns >= n, or ``data`` outside [0, 1].
        """
        del use_padding  # padding is recognised in both modes
        _check_mode(mode)
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1:
            raise ValueError("shape must have at least one dimension")
        if row_wise_idx.dim() < 1 or row_wise_idx.shape[-1] < 1:
            raise ValueError("row_wise_idx must have at least one column")
        k = row_wise_idx.shape[-1]
        expected = shape[:-1] + (k,)
        if tuple(row_wise_idx.shape) != expected:
            raise ValueError(
                f"row_wise_idx.shape must be {expected}, got {tuple(row_wise_idx.shape)}"
            )
        if data.shape != row_wise_idx.shape:
            raise ValueError(
                f"data.shape must match row_wise_idx.shape {tuple(row_wise_idx.shape)}, "
                f"got {tuple(data.shape)}"
            )
        if mask_type not in ("index", "dense"):
            raise ValueError(f"type must be 'index' or 'dense', got {mask_type}")

        n, rows = shape[-1], math.prod(shape[:-1])
        cols = row_wise_idx.detach().reshape(rows, k).long()
        vals = data.detach().reshape(rows, k)
        valid = cols >= 0
        if cols.numel() > 0:
            hi = int(cols.max())
            if hi >= n:
                raise ValueError(
                    f"row_wise_idx must lie in [0, {n}) or be negative (padding), got {hi}"
                )
        _check_probabilities("data", torch.where(valid, vals, torch.zeros_like(vals)))
        device = row_wise_idx.device

        if mode == "dense":
            safe = torch.where(valid, cols, n)  # padding goes to a spare column n
            pos = torch.arange(k, device=device).expand(rows, k)
            last = torch.full((rows, n + 1), -1, dtype=torch.long, device=device)
            last = last.scatter_reduce(1, safe, pos, reduce="amax")
            winner = valid & (last.gather(1, safe) == pos)
            kept = torch.where(winner, vals, torch.zeros_like(vals)).to(dtype)
            dense = torch.zeros(rows, n + 1, dtype=dtype, device=device).scatter_add(1, safe, kept)
            dense = dense[:, :n].reshape(shape)
            if mask_type == "dense":
                return cls._build(shape, dtype, device, _DENSE, mask=dense)
            indices, ptr, values = _index_from_dense(dense, rows, n)
            return cls._build(shape, dtype, device, _INDEX, indices=indices, ptr=ptr, data=values)

        offsets = torch.arange(rows, device=device).unsqueeze(1) * n
        flat = torch.where(valid, cols + offsets, -1).reshape(-1)
        sorted_flat, order = torch.sort(flat, stable=True)
        is_last = torch.ones_like(sorted_flat, dtype=torch.bool)
        is_last[:-1] = sorted_flat[:-1] != sorted_flat[1:]
        keep = is_last & (sorted_flat >= 0)
        indices = sorted_flat[keep]
        values = vals.reshape(-1)[order][keep].to(dtype)
        counts = torch.zeros(rows, dtype=torch.long, device=device)
        counts.scatter_add_(0, indices // max(n, 1), torch.ones_like(indices))
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, dim=0)])
        sparse = cls._build(shape, dtype, device, _INDEX, indices=indices, ptr=ptr, data=values)
        if mask_type == "index":
            return sparse
        return cls._build(shape, dtype, device, _DENSE, mask=sparse._dense_values())

    # ------------------------------------------------------------------------------------------
    # Getters

    def is_full_mask(self) -> bool:
        """Whether the mask is flagged FULL (no values are inspected)."""
        return self.is_full

    def is_empty_mask(self) -> bool:
        """Whether the mask is flagged EMPTY (no values are inspected)."""
        return self.is_empty

    def _dense_values(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Dense values in ``dtype`` (default: the mask's); may be the stored tensor itself."""
        dtype = self.dtype if dtype is None else dtype
        if self._state == _FULL:
            return torch.ones(self.shape, dtype=dtype, device=self.device)
        if self._state == _EMPTY:
            return torch.zeros(self.shape, dtype=dtype, device=self.device)
        if self._state == _DENSE:
            return self.mask.to(dtype)
        if self._state == _ROWS:
            return ops.rows_to_dense(self.row_indices, self.row_probs, self.shape[-1]).to(dtype)
        total = math.prod(self.shape)
        dense = torch.zeros(total, dtype=dtype, device=self.device)
        if self.indices.numel() > 0:
            values = (
                torch.ones_like(self.indices, dtype=dtype)
                if self.data is None
                else self.data.to(dtype)
            )
            winner = _last_occurrence(self.indices, total)
            dense.scatter_add_(0, self.indices, torch.where(winner, values, 0))
        return dense.reshape(self.shape)

    def get_dense_mask(self) -> Tensor:
        """The mask as a new dense tensor of ``shape`` in ``dtype`` on ``device``.

        FULL gives ones and EMPTY zeros (EMPTY still means dense attention). INDEX resolves
        repeated positions to their last occurrence. ROWS goes through ``ops.rows_to_dense``.
        """
        dense = self._dense_values()
        return dense.clone() if self._state == _DENSE else dense

    def get_index_mask(self) -> Tuple[Tensor, Tensor, Tensor]:
        """The INDEX form ``(indices, ptr, data)``: flat positions, row offsets, values.

        FULL lists every position with value 1; EMPTY lists none (``ptr`` all zeros). DENSE and
        ROWS list their non-zero entries in row-major order. INDEX returns copies of the stored
        arrays (repeats kept; ``data`` ones when it was None).
        """
        rows, n = math.prod(self.shape[:-1]), self.shape[-1]
        total = rows * n
        if self._state == _FULL:
            indices = torch.arange(total, dtype=torch.long, device=self.device)
            ptr = torch.arange(rows + 1, dtype=torch.long, device=self.device) * n
            return indices, ptr, torch.ones(total, dtype=self.dtype, device=self.device)
        if self._state == _EMPTY:
            return (
                torch.empty(0, dtype=torch.long, device=self.device),
                torch.zeros(rows + 1, dtype=torch.long, device=self.device),
                torch.empty(0, dtype=self.dtype, device=self.device),
            )
        if self._state == _INDEX:
            data = (
                torch.ones(self.indices.numel(), dtype=self.dtype, device=self.device)
                if self.data is None
                else self.data.clone()
            )
            return self.indices.clone(), self.ptr.clone(), data
        if self._state == _DENSE:
            return _index_from_dense(self.mask, rows, n)
        cap = self.row_indices.shape[-1]
        idx = self.row_indices.reshape(rows, cap).long()
        probs = self.row_probs.reshape(rows, cap)
        valid = (idx >= 0) & (probs > 0)
        offsets = torch.arange(rows, device=self.device).unsqueeze(1) * n
        indices = (idx + offsets)[valid]
        counts = valid.sum(dim=1)
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, dim=0)])
        return indices, ptr, probs[valid].to(self.dtype)

    def get_rows(self) -> Tuple[Tensor, Tensor]:
        """The row form ``(indices int32, probs float32)`` of shape ``shape[:-1] + (cap,)``.

        ROWS returns its stored tensors (read-only). FULL lists every column with p = 1 as
        expanded views (cap = n); EMPTY gives cap-0 tensors; DENSE and INDEX go through
        ``ops.dense_to_rows`` (cap = n).
        """
        lead, n = self.shape[:-1], self.shape[-1]
        if self._state == _ROWS:
            return self.row_indices, self.row_probs
        if self._state == _FULL:
            cols = torch.arange(n, dtype=torch.int32, device=self.device)
            ones = torch.ones((), dtype=torch.float32, device=self.device)
            return cols.expand(*lead, n), ones.expand(*lead, n)
        if self._state == _EMPTY:
            return (
                torch.empty(*lead, 0, dtype=torch.int32, device=self.device),
                torch.empty(*lead, 0, dtype=torch.float32, device=self.device),
            )
        return ops.dense_to_rows(self._dense_values(torch.float32).contiguous())

    def get_density(self) -> float:
        """Fraction of positions with a probability above zero (a host sync).

        FULL gives 1.0. EMPTY gives 0.0, as in the reference implementation, although attention
        treats an EMPTY mask as dense: EMPTY means "no masker chose anything", and the density
        metric reports what the maskers chose, so logs stay comparable with the reference.
        Repeated INDEX positions count once.
        """
        total = math.prod(self.shape)
        if self._state == _FULL:
            return 1.0
        if self._state == _EMPTY or total == 0:
            return 0.0
        if self._state == _ROWS:
            count = ops.row_counts(self.row_indices, self.row_probs).sum(dtype=torch.int64)
        else:
            count = torch.count_nonzero(self._dense_values() > 0)
        return float(count) / float(total)

    # ------------------------------------------------------------------------------------------
    # Application

    def _check_input_shape(self, input_tensor: Tensor) -> None:
        if tuple(input_tensor.shape) != self.shape:
            raise ValueError(
                f"input_tensor.shape must be {self.shape}, got {tuple(input_tensor.shape)}"
            )

    def apply_mask(
        self, input_tensor: Tensor, mode: Literal["sparse", "dense"] = "dense"
    ) -> Tensor:
        """``input * mask``. FULL and EMPTY return ``input_tensor`` itself (no masking).

        ``mode`` is accepted for compatibility; both modes give the same result.
        """
        _check_mode(mode)
        self._check_input_shape(input_tensor)
        if self.is_full or self.is_empty:
            return input_tensor
        return input_tensor * self._dense_values()

    def apply_inv_mask(
        self, input_tensor: Tensor, mode: Literal["sparse", "dense"] = "dense"
    ) -> Tensor:
        """``input / p`` where ``p > 0`` and 0 elsewhere: the exact ``1/p`` weight of attention.

        FULL and EMPTY return ``input_tensor`` itself. The reciprocal is taken in float32 (float64
        for float64 inputs); the result has the promoted dtype of the input and the mask.
        ``mode`` is accepted for compatibility; both modes give the same result.
        """
        _check_mode(mode)
        self._check_input_shape(input_tensor)
        if self.is_full or self.is_empty:
            return input_tensor
        out_dtype = torch.promote_types(input_tensor.dtype, self.dtype)
        acc = torch.promote_types(out_dtype, torch.float32)
        probs = self._dense_values(acc)
        weights = torch.where(probs > 0, probs.reciprocal(), torch.zeros_like(probs))
        return (input_tensor.to(acc) * weights).to(out_dtype)

    # ------------------------------------------------------------------------------------------
    # Merging

    def merge_mask(
        self,
        other_mask: "Mask",
        inplace: bool,
        mode: Literal["sparse", "dense"] = "dense",
    ) -> "Mask":
        """Union with ``p = clamp(p1 + p2, 0, 1)``; returns ``self`` when ``inplace``.

        Either side FULL gives FULL; both EMPTY gives EMPTY. When both sides are ROWS or EMPTY
        the result is ROWS (``ops.mask_union``, whatever ``mode``). Otherwise the sum is taken
        densely and the result is DENSE for ``mode="dense"`` and INDEX for ``mode="sparse"``.
        The result keeps this mask's dtype; an EMPTY receiver takes the other mask's device.

        Raises:
            ValueError: for different shapes or a bad ``mode``.
        """
        _check_mode(mode)
        if self.shape != other_mask.shape:
            raise ValueError(
                f"Cannot merge masks with different shapes: {self.shape} vs {other_mask.shape}"
            )
        merged = self._merged(other_mask, mode)
        if not inplace:
            return merged
        self._set_state(
            merged.shape,
            merged.dtype,
            merged.device,
            merged._state,
            mask=merged.mask,
            indices=merged.indices,
            ptr=merged.ptr,
            data=merged.data,
            row_indices=merged.row_indices,
            row_probs=merged.row_probs,
        )
        return self

    def _merged(self, other: "Mask", mode: str) -> "Mask":
        if self.is_full or other.is_full:
            return Mask._build(self.shape, self.dtype, self.device, _FULL)
        if self.is_empty and other.is_empty:
            return Mask._build(self.shape, self.dtype, self.device, _EMPTY)
        if {self._state, other._state} <= {_ROWS, _EMPTY}:
            if other.is_empty:
                idx, probs = self.row_indices, self.row_probs
            elif self.is_empty:
                idx, probs = other.row_indices, other.row_probs
            else:
                idx, probs = ops.mask_union(
                    self.row_indices,
                    self.row_probs,
                    other.row_indices,
                    other.row_probs,
                    self.shape[-1],
                )
            return Mask._build(
                self.shape, self.dtype, idx.device, _ROWS, row_indices=idx, row_probs=probs
            )
        parts = [m._dense_values(torch.float32) for m in (self, other) if not m.is_empty]
        total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        dense = torch.clamp(total, 0.0, 1.0).to(self.dtype)
        if mode == "dense":
            return Mask._build(self.shape, self.dtype, dense.device, _DENSE, mask=dense)
        rows = math.prod(self.shape[:-1])
        indices, ptr, data = _index_from_dense(dense, rows, self.shape[-1])
        return Mask._build(
            self.shape, self.dtype, dense.device, _INDEX, indices=indices, ptr=ptr, data=data
        )

    def __repr__(self) -> str:
        return (
            f"Mask(shape={self.shape}, dtype={self.dtype}, "
            f"from_dense_mask={self.from_dense_mask}, from_index={self.from_index}, "
            f"from_rows={self.from_rows}, is_full={self.is_full}, is_empty={self.is_empty})"
        )


def _check_rows_shapes(shape: Shape, indices: Tensor, probs: Tensor) -> None:
    """Raises ValueError unless the row tensors match each other and ``shape[:-1]``."""
    if len(shape) < 1:
        raise ValueError("shape must have at least one dimension")
    if indices.shape != probs.shape:
        raise ValueError(
            f"row indices and probs must have one shape, got {tuple(indices.shape)} and "
            f"{tuple(probs.shape)}"
        )
    if tuple(indices.shape[:-1]) != shape[:-1] or indices.dim() != len(shape):
        raise ValueError(
            f"row indices shape must be {shape[:-1] + ('cap',)}, got {tuple(indices.shape)}"
        )
    if indices.device != probs.device:
        raise ValueError(
            f"row indices and probs must be on one device, got {indices.device} and {probs.device}"
        )


__all__ = ["Mask"]
