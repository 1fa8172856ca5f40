"""Shared pieces of sparse attention: the ``Mask`` class, masked attention and kv helpers."""

from .kv_utils import _get_num_key_value_groups, repeat_kv
from .mask import Mask
from .mask_attention_utils import (
    _compute_masked_exp_attention_weights,
    apply_inv_mask_sum,
    create_sampling_mask_with_per_head_budget,
    get_attention_denominator,
    get_attention_numerator,
    get_masked_attention_output,
    get_true_attention_output,
)

__all__ = [
    "Mask",
    "_compute_masked_exp_attention_weights",
    "_get_num_key_value_groups",
    "apply_inv_mask_sum",
    "create_sampling_mask_with_per_head_budget",
    "get_attention_denominator",
    "get_attention_numerator",
    "get_masked_attention_output",
    "get_true_attention_output",
    "repeat_kv",
]
