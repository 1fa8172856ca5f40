"""Base of sparse attention mechanisms: ``SparseAttentionConfig`` and ``SparseAttention``."""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

# (subpackage, attention class): configs of type ``<class>Config`` route to
# ``<class>.create_from_config``.
_ROUTES = (
    ("research_attention", "ResearchAttention"),
    ("efficient_attention", "EfficientAttention"),
)


def _optional_subpackage(name: str) -> Optional[ModuleType]:
    """The subpackage ``name`` of this package, or None while it does not exist yet."""
    qualified = f"{__package__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as error:
        if error.name != qualified:
            raise
        return None


@dataclass
class SparseAttentionConfig:
    """Configuration of a sparse attention mechanism (base of all attention configs)."""


class SparseAttention(ABC):
    """A sparse attention mechanism: computes attention for one layer call of a model."""

    sparse_attention_config: SparseAttentionConfig

    def __init__(self, sparse_attention_config: SparseAttentionConfig) -> None:
        """Stores the configuration."""
        self.sparse_attention_config = sparse_attention_config

    @abstractmethod
    def custom_attention(
        self,
        module: Optional[nn.Module],
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Dict[Any, Any],
        **kwargs: Any,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attention output (b, sq, h, d) and optional weights (b, h, sq, sk) for one call."""

    def pre_attention_hook_generator(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Hook for model integration; none by default."""

    @classmethod
    def create_from_config(cls, config: SparseAttentionConfig) -> "SparseAttention":
        """Builds the mechanism that ``config`` describes.

        ``ResearchAttentionConfig`` and ``EfficientAttentionConfig`` (and their subclasses) route
        to their classes' ``create_from_config``; any other config gives ``cls(config)``.

        Raises:
            NotImplementedError: if ``cls`` is abstract and a routed class does not exist yet,
                so no class can handle ``config``.
        """
        missing = []
        for subpackage_name, class_name in _ROUTES:
            subpackage = _optional_subpackage(subpackage_name)
            config_class = getattr(subpackage, f"{class_name}Config", None)
            if config_class is None:
                missing.append(f"{subpackage_name}.{class_name}")
                continue
            if isinstance(config, config_class):
                return getattr(subpackage, class_name).create_from_config(config)
        if missing and inspect.isabstract(cls):
            raise NotImplementedError(
                f"no sparse attention class handles {type(config).__name__}: "
                f"{', '.join(missing)} not implemented yet"
            )
        return cls(config)


__all__ = ["SparseAttention", "SparseAttentionConfig"]
