"""The inputs of one attention call: as tensors, and as the shape-only summary the selection and
the cost model read.

Every backend takes the same inputs: ``queries`` (b, h, q, d); ``keys``/``values``
(b, h_kv, k, d) with ``h % h_kv == 0`` (GQA); an optional HF-style 4-D ``attention_mask``
(b|1, h|1, q|1, >= k), additive float (-inf or the dtype's lowest value forbids) or bool (True
allows); ``scaling`` (None: 1/sqrt(d)); and an optional sparse mask of inclusion probabilities:
a ``Mask``, a row-form pair ``(indices, probs)`` of shape (b, h, q, cap), or dense float
probabilities (b, h, q, k). Attention weights each included key by 1/p (see ARCHITECTURE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .. import ops
from ..sparse_attention.utils.mask import Mask

Tensor = torch.Tensor
SparseMaskLike = Union[None, Mask, Tuple[Tensor, Tensor], Tensor]

#: Sparse mask formats of :class:`AttentionShape`: row form (index lists) or dense probabilities.
MASK_FORMATS = ("rows", "dense")


@dataclass(frozen=True)
class SparseProbs:
    """A sparse mask as the backends read it: ``indices`` (b, h, q, cap) int32 with ``probs``
    (b, h, q, cap) float32 (row form), or ``indices`` None and ``probs`` (b, h, q, k) float32."""

    indices: Optional[Tensor]
    probs: Tensor

    @property
    def is_rows(self) -> bool:
        return self.indices is not None

    def dense(self, num_keys: int) -> Tensor:
        """Dense float32 probabilities (b, h, q, num_keys)."""
        if self.is_rows:
            return ops.rows_to_dense(self.indices, self.probs, num_keys)
        return self.probs

    def query_rows(self, start: int, stop: int) -> "SparseProbs":
        """The mask of queries ``start:stop``."""
        idx = None if self.indices is None else self.indices[:, :, start:stop]
        return SparseProbs(idx, self.probs[:, :, start:stop])


def resolve_sparse_mask(
    sparse_mask: SparseMaskLike, shape: Tuple[int, ...]
) -> Optional[SparseProbs]:
    """The backends' form of ``sparse_mask`` for attention of logical shape (b, h, q, k);
    None means dense attention (no mask, or a FULL or EMPTY ``Mask``).

    Raises:
        ValueError: if the mask's shape does not match ``shape``.
    """
    if sparse_mask is None:
        return None
    if isinstance(sparse_mask, Mask):
        if tuple(sparse_mask.shape) != tuple(shape):
            raise ValueError(f"sparse_mask.shape must be {tuple(shape)}, got {sparse_mask.shape}")
        if sparse_mask.is_full_mask() or sparse_mask.is_empty_mask():
            return None
        if sparse_mask.from_rows:
            return SparseProbs(*sparse_mask.get_rows())
        return SparseProbs(None, sparse_mask.get_dense_mask().to(torch.float32))
    if isinstance(sparse_mask, Tensor):
        if tuple(sparse_mask.shape) != tuple(shape):
            raise ValueError(
                f"sparse_mask (dense probabilities) must have shape {tuple(shape)}, "
                f"got {tuple(sparse_mask.shape)}"
            )
        return SparseProbs(None, sparse_mask.to(torch.float32))
    indices, probs = sparse_mask
    if indices.dim() != 4 or tuple(indices.shape[:3]) != tuple(shape[:3]):
        raise ValueError(
            f"sparse_mask indices must have shape {tuple(shape[:3])} + (cap,), "
            f"got {tuple(indices.shape)}"
        )
    if tuple(probs.shape) != tuple(indices.shape):
        raise ValueError(
            f"sparse_mask probs must have the indices' shape {tuple(indices.shape)}, "
            f"got {tuple(probs.shape)}"
        )
    return SparseProbs(indices, probs)


def mask_density(sparse_mask: SparseMaskLike, shape: Tuple[int, ...]) -> float:
    """Fraction of the (b, h, q, k) positions the sparse mask keeps; 1.0 for dense attention
    (a host sync for a real mask)."""
    if isinstance(sparse_mask, Mask):
        if sparse_mask.is_full_mask() or sparse_mask.is_empty_mask():
            return 1.0
        return sparse_mask.get_density()
    probs = resolve_sparse_mask(sparse_mask, shape)
    if probs is None:
        return 1.0
    total = math.prod(shape)
    if probs.is_rows:
        return float(ops.row_counts(probs.indices, probs.probs).sum(dtype=torch.int64)) / total
    return float(torch.count_nonzero(probs.probs > 0)) / total


@dataclass(frozen=True)
class AttentionShape:
    """Shape-only description of one attention call: what the selection and cost model read.

    ``mask_format`` is None for dense attention, else ``"rows"`` or ``"dense"`` (the sparse
    mask's form); ``density`` is the fraction of (query, key) pairs it keeps (1.0 when dense).
    ``has_attention_mask`` says whether an HF attention mask comes with the call.
    """

    batch: int
    heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    dtype: torch.dtype = torch.bfloat16
    has_attention_mask: bool = False
    mask_format: Optional[str] = None
    density: float = 1.0

    def __post_init__(self) -> None:
        if self.kv_heads <= 0 or self.heads % self.kv_heads != 0:
            raise ValueError(
                f"heads ({self.heads}) must be a positive multiple of kv_heads ({self.kv_heads})"
            )
        if self.mask_format is not None and self.mask_format not in MASK_FORMATS:
            raise ValueError(
                f"mask_format must be None or one of {MASK_FORMATS}, got {self.mask_format!r}"
            )
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must lie in [0, 1], got {self.density}")

    @property
    def has_sparse_mask(self) -> bool:
        return self.mask_format is not None

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def score_elements(self) -> int:
        """Elements of the full (b, h, q, k) score matrix."""
        return self.batch * self.heads * self.q_len * self.k_len


@dataclass
class AttentionInputs:
    """The tensors of one attention call (see the module docstring); a benchmark sample."""

    queries: Tensor
    keys: Tensor
    values: Tensor
    attention_mask: Optional[Tensor] = None
    scaling: Optional[float] = None
    sparse_mask: SparseMaskLike = None

    @property
    def logical_shape(self) -> Tuple[int, int, int, int]:
        """(b, h, q, k)."""
        b, h, q = self.queries.shape[:3]
        return (b, h, q, self.keys.shape[2])

    def describe(self, with_density: bool = False) -> AttentionShape:
        """The :class:`AttentionShape` of these tensors. The density of a sparse mask needs a
        host sync, so it is read only when ``with_density`` is True (else 1.0)."""
        b, h, q, k = self.logical_shape
        probs = resolve_sparse_mask(self.sparse_mask, (b, h, q, k))
        mask_format = None if probs is None else ("rows" if probs.is_rows else "dense")
        density = 1.0
        if with_density and probs is not None:
            density = mask_density(self.sparse_mask, (b, h, q, k))
        return AttentionShape(
            batch=b,
            heads=h,
            kv_heads=self.keys.shape[1],
            q_len=q,
            k_len=k,
            head_dim=self.queries.shape[3],
            dtype=self.queries.dtype,
            has_attention_mask=self.attention_mask is not None,
            mask_format=mask_format,
            density=density,
        )
