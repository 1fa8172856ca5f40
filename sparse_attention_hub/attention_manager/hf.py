"""AttentionManager for a HuggingFace model adapter: the manager's choice, with an override."""

from __future__ import annotations

from typing import Any, Optional

from .inputs import AttentionShape
from .manager import AttentionManager
from .selection import AttentionSelection


def model_attention_shape(
    model: Any, query_length: int, key_length: int, batch: int = 1, sparse: bool = False
) -> AttentionShape:
    """The :class:`AttentionShape` of one attention layer of a transformers model (heads, kv
    heads, head dim and dtype from its config and weights); ``sparse``: a row-form mask."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttentionShape(
        batch=batch,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        q_len=query_length,
        k_len=key_length,
        head_dim=head_dim,
        dtype=next(model.parameters()).dtype,
        has_attention_mask=True,
        mask_format="rows" if sparse else None,
    )


class AttentionManagerMixin:
    """Adds an :class:`AttentionManager` to a model adapter (``self.model``, and
    ``self.sparse_attention`` None for a dense-only adapter).

    ``attention_type`` given to :meth:`init_attention_manager` pins a backend (an explicit
    override, validated at once); otherwise :meth:`select_attention` reports the manager's
    choice for a call shape of the model.
    """

    attention_manager: AttentionManager
    attention_override: Optional[str]

    def init_attention_manager(self, attention_type: Optional[str] = None) -> None:
        """Builds the manager on the model's device; call once ``self.model`` is set.

        Raises:
            ValueError: if ``attention_type`` is unknown or does not run on the device.
        """
        device = next(self.model.parameters()).device
        self.attention_manager = AttentionManager(device, attention_type=attention_type)
        self.attention_override = attention_type

    def select_attention(
        self, query_length: int = 1, key_length: Optional[int] = None, batch: int = 1
    ) -> AttentionSelection:
        """The backend for one layer call of ``query_length`` queries over ``key_length`` keys
        (default: the model's ``max_position_embeddings``, decode): the override when one is
        set, else the manager's choice, which becomes the active backend."""
        if self.attention_override is not None:
            return self.attention_manager.selection
        if key_length is None:
            key_length = self.model.config.get_text_config().max_position_embeddings
        shape = model_attention_shape(
            self.model,
            query_length,
            key_length,
            batch,
            sparse=getattr(self, "sparse_attention", None) is not None,
        )
        return self.attention_manager.select_attention_module(shape=shape)
