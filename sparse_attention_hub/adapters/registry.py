"""Registration of sparse attention with transformers' attention interface, and its lifecycle.

Each registered name maps to an attention function (``AttentionInterface.register``) and to a
mask function (``AttentionMaskInterface.register``: without one transformers builds no mask for
a custom implementation). transformers has no public way to remove a name, so unregistering
points the name at a function that raises, and forgets it here.

Every call is thread-safe: one process-wide lock guards the registries' state together with
transformers' (process-wide) interfaces, so concurrent registrations never lose, duplicate or
reuse a name, and a model is never configured with a name being unregistered.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any, Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from ..sparse_attention.base import SparseAttention, SparseAttentionConfig

Tensor = torch.Tensor

#: Guards every AttentionRegistry and transformers' attention/mask interfaces (reentrant:
#: configure_model_attention looks the adapter up under it).
_LOCK = threading.RLock()


def _hf():
    """transformers' registries and dense kernels (imported lazily: optional dependency)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    return AttentionInterface, AttentionMaskInterface, sdpa_attention_forward, sdpa_mask


def _explicit_bool_mask(*args: Any, **kwargs: Any) -> Optional[Tensor]:
    """transformers' boolean SDPA mask, always materialised (never the 'is_causal' shortcut),
    so the sparse path always knows which keys each query may see."""
    kwargs["allow_is_causal_skip"] = False
    return _hf()[3](*args, **kwargs)


class BaseAttentionFunction:
    """An attention function with transformers' signature, bound to a sparse attention.

    ``layer_indices`` (None = all) lists the layers that run sparse; the others, and every
    layer while ``enabled`` is False, run transformers' SDPA attention unchanged. ``state`` is
    the per-request masker state (``sparse_meta_data``), set by the adapter for each request.
    """

    def __init__(self, sparse_attention: SparseAttention, name: str) -> None:
        self.sparse_attention = sparse_attention
        self.name = name
        self.layer_indices: Optional[Set[int]] = None
        self.state: Dict[Any, Any] = {}

    def get_attention_name(self) -> str:
        return self.name

    @property
    def keeps_key_state(self) -> bool:
        """Whether the sparse attention, or one of its maskers, keeps state per cached key
        (HashAttention signatures, Quest pages, PQ codes, MagicPig signatures)."""
        parts = [self.sparse_attention, *(getattr(self.sparse_attention, "maskers", None) or [])]
        return any(getattr(part, "keeps_key_state", False) for part in parts)

    def is_sparse_layer(self, layer_idx: Optional[int]) -> bool:
        return self.layer_indices is None or layer_idx in self.layer_indices

    def attention_forward(
        self,
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        scaling: Optional[float] = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        layer_idx = getattr(module, "layer_idx", None)
        if not self.is_sparse_layer(layer_idx):
            return _hf()[2](
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        sparse_meta_data = kwargs.pop("sparse_meta_data", None)
        if sparse_meta_data is None:
            sparse_meta_data = self.state
        if kwargs.get("sliding_window") is not None and self.keeps_key_state:
            # A sliding-window layer's cache drops its oldest keys and shifts the rest (dynamic
            # and static caches alike), so per-key state kept across calls would be misaligned:
            # such layers rebuild it from the window's keys on every call.
            sparse_meta_data = {}
        kwargs["layer_idx"] = layer_idx
        return self.sparse_attention.custom_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            scaling,
            dropout,
            sparse_meta_data=sparse_meta_data,
            **kwargs,
        )

    __call__ = attention_forward


class ResearchAttentionFunction(BaseAttentionFunction):
    """Adapter for ``ResearchAttention`` (masker chains)."""


class EfficientAttentionFunction(BaseAttentionFunction):
    """Adapter for ``EfficientAttention`` (fused HashAttention / DoubleSparsity)."""


def _adapter_class(sparse_attention: SparseAttention) -> type:
    from ..sparse_attention.research_attention import ResearchAttention

    if isinstance(sparse_attention, ResearchAttention):
        return ResearchAttentionFunction
    return EfficientAttentionFunction


class AttentionRegistry:
    """The lifecycle API: register, look up, configure models, unregister (thread-safe)."""

    def __init__(self) -> None:
        self._functions: Dict[str, BaseAttentionFunction] = {}

    def register_sparse_attention(
        self,
        sparse_attention: SparseAttention,
        attention_name: Optional[str] = None,
        config: Optional[SparseAttentionConfig] = None,
    ) -> str:
        """Registers ``sparse_attention`` (or one built from ``config``) and returns its name.

        Raises:
            ValueError: if ``attention_name`` is already registered (here or in transformers).
        """
        if sparse_attention is None:
            if config is None:
                raise ValueError("register_sparse_attention needs a sparse_attention or a config")
            sparse_attention = SparseAttention.create_from_config(config)
        attention_interface, mask_interface, _, _ = _hf()
        with _LOCK:
            if attention_name is None:
                attention_name = f"sparse_attention_{secrets.token_hex(4)}"
                while attention_name in self._functions or attention_name in attention_interface():
                    attention_name = f"sparse_attention_{secrets.token_hex(4)}"
            elif attention_name in self._functions or attention_name in attention_interface():
                raise ValueError(f"attention name {attention_name!r} is already registered")
            function = _adapter_class(sparse_attention)(sparse_attention, attention_name)
            attention_interface.register(attention_name, function)
            mask_interface.register(attention_name, _explicit_bool_mask)
            self._functions[attention_name] = function
        return attention_name

    def unregister_attention_function(self, attention_name: str) -> None:
        """Forgets ``attention_name``; a model still configured with it raises a clear error."""
        attention_interface, _, _, _ = _hf()
        with _LOCK:
            if attention_name not in self._functions:
                raise KeyError(f"attention name {attention_name!r} is not registered")
            del self._functions[attention_name]

            def unregistered(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError(
                    f"attention function {attention_name!r} was unregistered; configure the "
                    "model with another attention implementation"
                )

            attention_interface.register(attention_name, unregistered)

    def get_attention_adapter(self, attention_name: str) -> BaseAttentionFunction:
        with _LOCK:
            if attention_name not in self._functions:
                raise KeyError(f"attention name {attention_name!r} is not registered")
            return self._functions[attention_name]

    def list_registered_attention_functions(self) -> Dict[str, str]:
        """``{name: adapter class name}`` of every registered function."""
        with _LOCK:
            return {n: type(f).__name__ for n, f in self._functions.items()}

    def configure_model_attention(
        self, model: nn.Module, attention_name: str, layer_indices: Optional[Iterable[int]] = None
    ) -> Dict[int, str]:
        """Switches ``model`` to ``attention_name``; layers not in ``layer_indices`` (None = all)
        stay dense. Returns the previous implementation of each config object (by ``id``), for
        :func:`restore_model_attention`."""
        layers = None if layer_indices is None else set(layer_indices)
        configs = _attention_configs(model)
        with _LOCK:
            function = self.get_attention_adapter(attention_name)
            function.layer_indices = layers
            previous: Dict[int, str] = {}
            for config in configs:
                previous[id(config)] = config._attn_implementation
                config._attn_implementation = attention_name
        return previous

    @staticmethod
    def restore_model_attention(model: nn.Module, previous: Dict[int, str]) -> None:
        """Puts back the implementations :meth:`configure_model_attention` returned."""
        configs = _attention_configs(model)
        with _LOCK:
            for config in configs:
                if id(config) in previous:
                    config._attn_implementation = previous[id(config)]


def _attention_configs(model: nn.Module) -> list:
    """The distinct config objects of ``model``'s modules that select an attention function."""
    seen: Dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


#: The process-wide registry behind the module-level functions.
default_registry = AttentionRegistry()
register_sparse_attention = default_registry.register_sparse_attention
unregister_attention_function = default_registry.unregister_attention_function
get_attention_adapter = default_registry.get_attention_adapter
list_registered_attention_functions = default_registry.list_registered_attention_functions
configure_model_attention = default_registry.configure_model_attention
restore_model_attention = default_registry.restore_model_attention
