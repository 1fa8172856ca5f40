"""Efficient attention implementations: HashAttention and DoubleSparsity."""

from .double_sparsity import ChannelConfig, DoubleSparsity, DoubleSparsityConfig
from .hash_attention import HashAttention, HashAttentionConfig

__all__ = [
    "ChannelConfig",
    "DoubleSparsity",
    "DoubleSparsityConfig",
    "HashAttention",
    "HashAttentionConfig",
]
