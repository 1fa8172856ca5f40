"""Helpers of the fixed masker implementations (the reference's public utility modules)."""

from .double_sparsity_utils import (
    extract_layer_channels,
    load_sorted_channels_from_file,
    validate_channel_data,
)

__all__ = [
    "load_sorted_channels_from_file",
    "extract_layer_channels",
    "validate_channel_data",
]
