"""Efficient attention: fixed masker chains run as one fused path (no ``Mask`` objects)."""

from .base import EfficientAttention, EfficientAttentionConfig
from .implementations import (
    ChannelConfig,
    DoubleSparsity,
    DoubleSparsityConfig,
    HashAttention,
    HashAttentionConfig,
)

__all__ = [
    "ChannelConfig",
    "DoubleSparsity",
    "DoubleSparsityConfig",
    "EfficientAttention",
    "EfficientAttentionConfig",
    "HashAttention",
    "HashAttentionConfig",
]
