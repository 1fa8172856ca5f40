"""DoubleSparsity channel tables: loading and checking the sorted-channel JSON file.

The file maps ``"model.layers.{L}.self_attn.{k_proj|q_proj|qk_proj}"`` to one list of channel
indices per attention head, sorted by importance (the "outlier" channels first). The masker
keeps the first ``head_dim // group_factor`` channels of each head's list, per layer.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import torch

ChannelTable = Dict[str, List[List[int]]]


def _check_entries(data: Dict[str, Any]) -> None:
    for key, heads in data.items():
        if not isinstance(heads, list):
            raise ValueError(f"Channel data for {key} must be a list")
        for i, channels in enumerate(heads):
            if not isinstance(channels, list):
                raise ValueError(f"Channel data for {key}[{i}] must be a list")
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in channels):
                raise ValueError(f"Channel indices for {key}[{i}] must be integers")


def load_sorted_channels_from_file(file_path: str) -> ChannelTable:
    """Reads and checks a sorted-channel JSON file; raises ValueError for a missing file,
    invalid JSON or a wrong structure (the message names the offending entry)."""
    try:
        with open(file_path, "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"Channel file not found: {file_path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"Invalid JSON in channel file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("Channel file must contain a JSON object")
    _check_entries(data)
    return data


def extract_layer_channels(
    sorted_channels: ChannelTable, layer_idx: int, projection_type: str, device: torch.device
) -> torch.Tensor:
    """The ``(heads, channels)`` int64 table of one layer and projection type on ``device``."""
    key = f"model.layers.{layer_idx}.self_attn.{projection_type}"
    if key not in sorted_channels:
        raise ValueError(f"No sorted channels found for {key}")
    heads = sorted_channels[key]
    if not heads:
        raise ValueError(f"Empty channel data for {key}")
    if len({len(channels) for channels in heads}) != 1:
        raise ValueError(f"Channel data for {key} must list as many channels for every head")
    return torch.tensor(heads, dtype=torch.long, device=device)


def validate_channel_data(data: ChannelTable) -> None:
    """Raises ValueError unless ``data`` maps names to lists (heads) of lists of int channels."""
    if not isinstance(data, dict):
        raise ValueError("Channel data must be a dictionary")
    _check_entries(data)
