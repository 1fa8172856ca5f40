"""Masker framework: configs, the config -> masker registry, and the masker base class.

A masker takes the mask built so far (a :class:`Mask`) and returns the union of it and its own
picks. Maskers here are thin: they validate the configuration, compute the effective sizes from
the current shapes, decide the "sequence is short enough: attend to everything" shortcuts, and
call one ``torch.ops.sah`` operator on the row form of the previous mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

import torch

from ...utils.mask import Mask

Tensor = torch.Tensor
SizeLike = Union[int, float]


@dataclass
class MaskerConfig:
    """Base configuration of every masker."""


@dataclass
class AttentionTensorDimensions:
    """Sizes of one attention call: batch, query heads, query length, key length."""

    batch_size: int
    num_heads: int
    seq_len_queries: int
    seq_len_keys: int


M = TypeVar("M", bound="ResearchMasker")


class MaskerRegistry:
    """Maps config classes to masker classes; filled by the ``register`` decorator at import.

    A subclass of a registered config finds its nearest registered ancestor, except through the
    framework's own base configs (``MaskerConfig``, ``FixedMaskerConfig``, ``TopKMaskerConfig``,
    ``TopPMaskerConfig``, ``SamplingMaskerConfig``), which only match exactly.
    """

    _registry: Dict[type, type] = {}
    _exact_only: set = set()

    @classmethod
    def register(cls, config_type: type) -> Callable[[Type[M]], Type[M]]:
        def decorator(masker_class: Type[M]) -> Type[M]:
            cls._registry[config_type] = masker_class
            return masker_class

        return decorator

    @classmethod
    def mark_exact_only(cls, config_type: type) -> type:
        cls._exact_only.add(config_type)
        return config_type

    @classmethod
    def get_masker_class(cls, config_type: type) -> type:
        if config_type in cls._registry:
            return cls._registry[config_type]
        for base in config_type.__mro__[1:]:
            if base in cls._exact_only:
                break
            if base in cls._registry:
                return cls._registry[base]
        raise ValueError(f"No masker class registered for config type: {config_type}")

    @classmethod
    def get_all_registered_types(cls) -> Dict[type, type]:
        return dict(cls._registry)


MaskerRegistry.mark_exact_only(MaskerConfig)


def effective_size(value: SizeLike, seq_len_keys: Any) -> Any:
    """The reference's size rule: a float is a fraction of the keys, ``int(value * n)``
    (truncation), anything else a count, ``int(value)``. Symbolic key lengths stay symbolic."""
    if isinstance(value, float):
        return torch.sym_int(value * seq_len_keys)
    return int(value)


def padding_or_4d_mask(attention_mask: Optional[Tensor]) -> Optional[Tensor]:
    """The attention mask in the 4-D form the ops read, or None when there is none to honour.

    4-D masks (HF: additive float or bool) pass through; a 2-D ``(batch, keys)`` padding mask
    (bool, or 0/1 integers) becomes ``(batch, 1, 1, keys)`` bool; other shapes are ignored, as
    the reference ignores the mask in these maskers.
    """
    if attention_mask is None or not isinstance(attention_mask, Tensor):
        return None
    if attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
            return attention_mask
        return attention_mask != 0
    if attention_mask.dim() == 2 and not attention_mask.is_floating_point():
        return (attention_mask != 0)[:, None, None, :]
    return None


def require_layer_state(sparse_meta_data: Optional[Dict[Any, Any]], kwargs: Dict[str, Any]) -> int:
    """The layer index of a stateful masker's call; ValueError (the reference's messages)
    without ``sparse_meta_data`` or ``layer_idx``."""
    if sparse_meta_data is None:
        raise ValueError("sparse_meta_data cannot be None")
    layer_idx = kwargs.get("layer_idx")
    if layer_idx is None:
        raise ValueError("layer_idx must be provided in kwargs")
    return int(layer_idx)


class ResearchMasker(ABC):
    """A step of the mask chain: ``add_mask(..., previous_mask) -> Mask``."""

    #: Whether the masker keeps per-layer state with one entry per cached key (it follows the
    #: number of keys, so it needs an append-only, dynamic KV cache).
    keeps_key_state = False

    def __init__(self, config: MaskerConfig) -> None:
        self.config = config

    def add_mask(
        self,
        keys: Tensor,
        queries: Tensor,
        values: Tensor,
        attention_mask: Optional[Tensor],
        scaling: float,
        dropout: float,
        sparse_meta_data: Optional[Dict[Any, Any]],
        previous_mask: Mask,
        **kwargs: Any,
    ) -> Mask:
        """Returns the union of ``previous_mask`` and this masker's picks (never mutates it).

        A FULL previous mask is returned as is; when :meth:`_covers_all` says the sequence is
        short enough, a new FULL mask; otherwise :meth:`_select` runs on the row form.
        """
        self._validate(sparse_meta_data, keys=keys, queries=queries, **kwargs)
        if previous_mask.is_full_mask():
            return previous_mask
        dims = self._extract_tensor_dimensions(keys, queries)
        if self._covers_all(dims):
            return self._create_full_mask(dims, previous_mask.dtype, previous_mask.device)
        indices, probs = previous_mask.get_rows()
        indices, probs = self._select(
            indices,
            probs,
            keys=keys,
            queries=queries,
            values=values,
            attention_mask=padding_or_4d_mask(attention_mask),
            scaling=scaling,
            sparse_meta_data=sparse_meta_data,
            **kwargs,
        )
        return self._rows_mask(previous_mask, indices, probs)

    def _validate(
        self,
        sparse_meta_data: Optional[Dict[Any, Any]],
        *,
        keys: Tensor,
        queries: Tensor,
        **kwargs: Any,
    ) -> None:
        """Checks run before anything else, even for a FULL previous mask (as the reference)."""

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        """Whether this masker would select every key (then attention is dense)."""
        return False

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        """The union of the previous rows and this masker's picks, in row form."""
        raise NotImplementedError(f"{type(self).__name__} must implement _select or add_mask")

    @classmethod
    @abstractmethod
    def create_from_config(cls, config: MaskerConfig) -> "ResearchMasker":
        """Builds the masker; raises ``ValueError("Invalid config type: ...")`` for a wrong one."""

    @classmethod
    def _checked(cls, config: MaskerConfig, config_type: type) -> "ResearchMasker":
        if not isinstance(config, config_type):
            raise ValueError(f"Invalid config type: {type(config)}")
        return cls(config)

    @staticmethod
    def create_masker_from_config(config: MaskerConfig) -> "ResearchMasker":
        """Builds the masker registered for ``type(config)`` (or its nearest registered base)."""
        masker_class = MaskerRegistry.get_masker_class(type(config))
        return masker_class.create_from_config(config)

    @staticmethod
    def _extract_tensor_dimensions(keys: Tensor, queries: Tensor) -> AttentionTensorDimensions:
        return AttentionTensorDimensions(
            batch_size=queries.shape[0],
            num_heads=queries.shape[1],
            seq_len_queries=queries.shape[2],
            seq_len_keys=keys.shape[2],
        )

    @staticmethod
    def _calculate_effective_size(value: SizeLike, seq_len_keys: Any) -> Any:
        return effective_size(value, seq_len_keys)

    @staticmethod
    def _create_full_mask(
        dims: AttentionTensorDimensions, dtype: torch.dtype, device: torch.device
    ) -> Mask:
        shape = (dims.batch_size, dims.num_heads, dims.seq_len_queries, dims.seq_len_keys)
        return Mask.create_full_mask(shape, dtype=dtype, device=device)

    @staticmethod
    def _rows_mask(previous_mask: Mask, indices: Tensor, probs: Tensor) -> Mask:
        """Wraps an op's output rows (trusted: no copy, no host sync)."""
        return Mask.create_from_rows(
            previous_mask.shape, indices, probs, dtype=previous_mask.dtype, trusted=True
        )
