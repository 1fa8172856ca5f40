"""Research attention: configurable masker chains over real sparse attention."""

from . import maskers
from .base import ResearchAttention, ResearchAttentionConfig

__all__ = ["ResearchAttention", "ResearchAttentionConfig", "maskers"]
