"""Masked attention with the reference API, computed by the ``sah`` attention ops.

Attention under a mask of inclusion probabilities ``p`` weights each included key by ``1/p``::

    out_i = sum_j (1/p_ij) exp(s_ij) v_j / sum_j (1/p_ij) exp(s_ij),  s_ij = scaling q_i.k_j + A_ij

``get_masked_attention_output`` dispatches on the mask's state: ROWS goes to
``ops.sparse_attention`` (reads only the listed keys); DENSE and INDEX go to
``ops.masked_attention`` on their float32 probabilities; FULL and EMPTY (no masker chose
anything) are dense attention, ``ops.masked_attention`` with an expanded all-ones mask. The ops
read grouped K/V heads in place (no ``repeat_kv`` copy), accumulate in float32, and give output 0
(never NaN) for a row with no usable key.

The other helpers (numerator, denominator, exp weights, inverse-mask sums, the dense reference)
exist for the reference API and its tests; they use plain torch math in float32 (float64 for
float64 inputs).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

from sparse_attention_hub import ops

from .kv_utils import _get_num_key_value_groups
from .mask import Mask

Tensor = torch.Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _additive_mask(attention_mask: Tensor, acc: torch.dtype) -> Tensor:
    """An HF-style mask as additive ``acc`` values; forbidden keys become -inf.

    As in the ops: a bool mask allows True; a float mask forbids -inf and its dtype's lowest
    value (HF's ``finfo(dtype).min``).
    """
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, 0.0, float("-inf")).to(acc)
    forbidden = attention_mask <= torch.finfo(attention_mask.dtype).min
    return attention_mask.to(acc).masked_fill(forbidden, float("-inf"))


def _scores(
    queries: Tensor, keys: Tensor, attention_mask: Optional[Tensor], scaling: float
) -> Tensor:
    """``scaling * q.k + A``, (b, h, sq, sk), in the accumulation dtype; GQA without copies."""
    groups = _get_num_key_value_groups(queries, keys)
    batch, heads, q_len, head_dim = queries.shape
    kv_heads, k_len = keys.shape[1], keys.shape[2]
    acc = _acc_dtype(queries.dtype)
    q = queries.to(acc).reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(q, keys.to(acc).transpose(-1, -2)) * scaling
    scores = scores.reshape(batch, heads, q_len, k_len)
    if attention_mask is not None:
        scores = scores + _additive_mask(attention_mask[:, :, :, :k_len], acc)
    return scores


def _grouped_matmul(weights: Tensor, values: Tensor) -> Tensor:
    """``weights`` (b, h, sq, sk) times ``values`` (b, h_kv, sk, d) with query head t reading kv
    head t // (h / h_kv); returns (b, h, sq, d) in ``weights``' dtype."""
    groups = _get_num_key_value_groups(weights, values)
    batch, heads, q_len, k_len = weights.shape
    kv_heads = values.shape[1]
    grouped = weights.reshape(batch, kv_heads, groups * q_len, k_len)
    out = torch.matmul(grouped, values.to(weights.dtype))
    return out.reshape(batch, heads, q_len, values.shape[-1])


def _training(module: Optional[nn.Module]) -> bool:
    return bool(module.training) if module is not None else False


def apply_inv_mask_sum(input_tensor: Tensor, mask: Mask) -> Tensor:
    """``sum_j input_ij / p_ij`` over included keys, shape (..., 1).

    FULL and EMPTY masks give the plain sum (EMPTY means dense attention).

    Raises:
        ValueError: if ``input_tensor.shape != mask.shape``.
    """
    if tuple(input_tensor.shape) != tuple(mask.shape):
        raise ValueError(
            f"input_tensor.shape must be {tuple(mask.shape)}, got {tuple(input_tensor.shape)}"
        )
    if mask.is_full or mask.is_empty:
        return input_tensor.sum(dim=-1, keepdim=True)
    return mask.apply_inv_mask(input_tensor).sum(dim=-1, keepdim=True)


def create_sampling_mask_with_per_head_budget(
    budgets: Tensor,
    sampling_probability: Tensor,
    seq_len_keys: int,
    start_idx: int,
    end_idx: int,
    dtype: torch.dtype = torch.float32,
) -> Mask:
    """An INDEX mask with ``budgets[r]`` keys drawn uniformly in [start_idx, end_idx) per row.

    ``budgets`` and ``sampling_probability`` have shape (b, h, q, 1); every draw of row ``r``
    gets value ``sampling_probability[r]``. As in the reference implementation the draws are
    with replacement (one ``torch.randint`` call of ``sum(budgets)`` draws, a host sync) and
    repeats are kept, so ``indices.numel() == budgets.sum()``.

    Raises:
        ValueError: if a sampling probability lies outside [0, 1].
    """
    batch, heads, q_len = budgets.shape[:3]
    rows = batch * heads * q_len
    device = budgets.device
    per_row = budgets.reshape(rows).long()
    total = int(per_row.sum())
    ptr = torch.cat([per_row.new_zeros(1), torch.cumsum(per_row, dim=0)])
    cols = torch.randint(start_idx, end_idx, (total,), device=device, dtype=torch.long)
    row_id = torch.repeat_interleave(torch.arange(rows, device=device), per_row, output_size=total)
    data = sampling_probability.reshape(rows)[row_id]
    return Mask.create_mask_from_indices(
        shape=(batch, heads, q_len, seq_len_keys),
        indices=cols + row_id * seq_len_keys,
        ptr=ptr,
        data=data,
        dtype=dtype,
    )


def _compute_masked_exp_attention_weights(
    queries: Tensor,
    keys: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    sparse_attention_mask: Mask,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """``exp(s_ij - max_j s_ij) / p_ij`` (0 for excluded keys), shape (b, h, sq, sk).

    The row maximum runs over all keys, as in the reference implementation. The result is
    float32 (float64 for float64 inputs). In training with ``dropout > 0``, inverted dropout is
    applied to it; numerator and denominator then share the factor ``1/(1-dropout)``, so dropout
    amounts to dropping keys and renormalising.
    """
    scores = _scores(queries, keys, attention_mask, scaling)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    exp_weights = sparse_attention_mask.apply_inv_mask(torch.exp(scores - row_max))
    if dropout > 0.0 and training:
        exp_weights = nn.functional.dropout(exp_weights, p=dropout, training=True)
    return exp_weights


def get_attention_denominator(
    module: Optional[nn.Module],
    queries: Tensor,
    keys: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    dropout: float,
    sparse_attention_mask: Mask,
    **kwargs: Any,
) -> Tensor:
    """``sum_j`` of the masked exp weights, shape (b, h, sq, 1), in the queries' dtype.

    Draws its own dropout mask (training only), independent of the numerator's.
    """
    exp_weights = _compute_masked_exp_attention_weights(
        queries=queries,
        keys=keys,
        attention_mask=attention_mask,
        scaling=scaling,
        sparse_attention_mask=sparse_attention_mask,
        dropout=dropout,
        training=_training(module),
    )
    return exp_weights.sum(dim=-1, keepdim=True).to(queries.dtype)


def get_attention_numerator(
    module: Optional[nn.Module],
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    dropout: float,
    sparse_attention_mask: Mask,
    **kwargs: Any,
) -> Tensor:
    """Masked exp weights times values, shape (b, h, sq, d), in the queries' dtype.

    Draws its own dropout mask (training only), independent of the denominator's.
    """
    exp_weights = _compute_masked_exp_attention_weights(
        queries=queries,
        keys=keys,
        attention_mask=attention_mask,
        scaling=scaling,
        sparse_attention_mask=sparse_attention_mask,
        dropout=dropout,
        training=_training(module),
    )
    return _grouped_matmul(exp_weights, values).to(queries.dtype)


def _drop_keys(probs: Tensor, dropout: float) -> Tensor:
    """Zeroes each entry of ``probs`` with probability ``dropout`` (the key leaves the row)."""
    keep = torch.rand(probs.shape, device=probs.device) >= dropout
    return torch.where(keep, probs, 0.0)


def _weights_from_lse(
    queries: Tensor,
    keys: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    dense_probs: Optional[Tensor],
    lse: Tensor,
) -> Tensor:
    """Attention weights ``exp(s_ij - lse_i) / p_ij`` (0 for excluded keys and empty rows).

    ``dense_probs`` None means every key has p = 1. Computed in float32, cast to the queries'
    dtype.
    """
    scores = _scores(queries, keys, attention_mask, scaling)
    if dense_probs is not None:
        probs = dense_probs.to(scores.dtype)
        scores = torch.where(probs > 0, scores - torch.log(probs), float("-inf"))
    lse = lse.to(scores.dtype).unsqueeze(-1)
    weights = torch.exp(scores - lse)
    weights = torch.where(torch.isfinite(lse), weights, 0.0)
    return weights.to(queries.dtype)


def get_masked_attention_output(
    module: Optional[nn.Module],
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    dropout: float,
    sparse_attention_mask: Mask,
    return_attention_weights: bool = False,
    **kwargs: Any,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Attention of ``queries`` over ``keys``/``values`` under ``sparse_attention_mask``.

    Shapes: ``queries`` (b, h, sq, d); ``keys``, ``values`` (b, h_kv, sk, d) with ``h`` a
    multiple of ``h_kv``; ``attention_mask`` None or 4-D HF-style ``(b|1, h|1, sq|1, >= sk)``,
    additive float or bool, sliced to ``sk`` keys; the mask has shape (b, h, sq, sk).

    In training (``module.training``) with ``dropout > 0`` each (query, key) entry of the mask is
    dropped with probability ``dropout`` and the rest renormalise, as in the reference
    implementation (not HF eager's dropout after normalisation).

    Returns:
        The output (b, sq, h, d), contiguous, in the queries' dtype; with
        ``return_attention_weights`` the pair ``(output, weights)``, weights (b, h, sq, sk)
        including the ``1/p`` factors and dropout (a dense QK^T in float32: only ask for them
        when needed).

    Raises:
        ValueError: if ``h`` is not a multiple of ``h_kv`` or the mask shape is wrong.
    """
    _get_num_key_value_groups(queries, keys)
    batch, heads, q_len = queries.shape[:3]
    k_len = keys.shape[2]
    expected = (batch, heads, q_len, k_len)
    if tuple(sparse_attention_mask.shape) != expected:
        raise ValueError(
            f"sparse_attention_mask.shape must be {expected}, "
            f"got {tuple(sparse_attention_mask.shape)}"
        )
    mask_4d = None if attention_mask is None else attention_mask[:, :, :, :k_len]
    drop = dropout if (dropout > 0.0 and _training(module)) else 0.0

    dense_probs: Optional[Tensor] = None
    if sparse_attention_mask.from_rows:
        indices, probs = sparse_attention_mask.get_rows()
        if drop > 0.0:
            probs = _drop_keys(probs, drop)
        out, lse = ops.sparse_attention(queries, keys, values, indices, probs, scaling, mask_4d)
        if return_attention_weights:
            dense_probs = ops.rows_to_dense(indices, probs, k_len)
    else:
        if sparse_attention_mask.is_full or sparse_attention_mask.is_empty:
            probs = torch.ones((), dtype=torch.float32, device=queries.device).expand(expected)
        else:
            probs = sparse_attention_mask.get_dense_mask().to(torch.float32)
            dense_probs = probs
        if drop > 0.0:
            probs = _drop_keys(probs, drop)
            dense_probs = probs
        out, lse = ops.masked_attention(queries, keys, values, probs, scaling, mask_4d)

    output = out.transpose(1, 2).contiguous()
    if not return_attention_weights:
        return output
    weights = _weights_from_lse(queries, keys, mask_4d, scaling, dense_probs, lse)
    return output, weights


def get_true_attention_output(
    module: Optional[nn.Module],
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    attention_mask: Optional[Tensor],
    scaling: float,
    dropout: float,
    **kwargs: Any,
) -> Tuple[Tensor, Tensor]:
    """Plain dense attention, the reference for error metrics: softmax in float32.

    ``attention_mask`` is added as given (bool masks allow True); dropout applies after the
    softmax when ``module.training``.

    Returns:
        ``(output (b, sq, h, d) contiguous, weights (b, h, sq, sk))`` in the queries' dtype.
    """
    groups = _get_num_key_value_groups(queries, keys)
    batch, heads, q_len, head_dim = queries.shape
    kv_heads, k_len = keys.shape[1], keys.shape[2]
    acc = _acc_dtype(queries.dtype)
    q = queries.to(acc).reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = (torch.matmul(q, keys.to(acc).transpose(-1, -2)) * scaling).reshape(
        batch, heads, q_len, k_len
    )
    if attention_mask is not None:
        window = attention_mask[:, :, :, :k_len]
        if window.dtype == torch.bool:
            scores = scores.masked_fill(~window, float("-inf"))
        else:
            scores = scores + window.to(acc)
    weights = torch.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=_training(module))
    output = _grouped_matmul(weights, values).to(queries.dtype)
    return output.transpose(1, 2).contiguous(), weights.to(queries.dtype)


__all__ = [
    "apply_inv_mask_sum",
    "create_sampling_mask_with_per_head_budget",
    "get_attention_denominator",
    "get_attention_numerator",
    "get_masked_attention_output",
    "get_true_attention_output",
]
