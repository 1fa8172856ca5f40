"""Key/value head helpers for grouped-query attention (GQA)."""

from __future__ import annotations

import torch


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeats each kv head ``n_rep`` times in a row: (b, h_kv, s, d) -> (b, h_kv * n_rep, s, d).

    Query head ``t`` then lines up with kv head ``t // n_rep`` (same as
    ``torch.repeat_interleave(x, n_rep, dim=1)``). Returns the input itself when ``n_rep == 1``.
    The attention ops read grouped heads without this copy; it exists for code that needs
    K/V with one head per query head.
    """
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, seq_len, head_dim = hidden_states.shape
    expanded = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, seq_len, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, seq_len, head_dim)


def _get_num_key_value_groups(queries: torch.Tensor, kv_tensor: torch.Tensor) -> int:
    """Number of query heads per kv head, ``h // h_kv``, for (b, h, ., d) and (b, h_kv, ., d).

    Raises:
        ValueError: if ``h`` is not a multiple of ``h_kv``.
    """
    num_attention_heads = queries.shape[1]
    num_key_value_heads = kv_tensor.shape[1]
    if num_key_value_heads == 0 or num_attention_heads % num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads ({num_attention_heads}) must be divisible by "
            f"num_key_value_heads ({num_key_value_heads})"
        )
    return num_attention_heads // num_key_value_heads


__all__ = ["_get_num_key_value_groups", "repeat_kv"]
