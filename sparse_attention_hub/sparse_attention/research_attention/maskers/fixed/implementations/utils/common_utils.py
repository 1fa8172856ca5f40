"""Helpers shared by several masker implementations."""

from __future__ import annotations

import torch


def pseudo_quantize(tensor: torch.Tensor, q_bit: int) -> torch.Tensor:
    """Quantises each row (last axis) to ``2**q_bit`` levels between its min and max, and maps
    the levels back to values: the "labels" of Quest and DoubleSparsity are low-precision
    copies, and their scores are taken on these rounded values.

    A constant row (max == min) uses a range of 1. Rounding is half-to-even (``torch.round``).
    The C++ ops (``sah::quest_topk_mask``, ``sah::double_sparsity_topk_mask``) run the same
    float32 operations, so float32 results agree bit for bit.
    """
    levels = 2**q_bit - 1
    low = tensor.amin(dim=-1, keepdim=True)
    span = tensor.amax(dim=-1, keepdim=True) - low
    span = torch.where(span == 0, torch.ones_like(span), span)
    step = levels / span
    return torch.round((tensor - low) * step).clamp(0, levels) / step + low
