"""HashAttention top-k: keys ranked by the agreement of learned bit signatures.

A learned MLP per query head maps queries and keys to ``bits`` values whose signs form the
signatures (a value of exactly 0 counts as +1; the reference's ``torch.sign`` gives 0 there). The
score of a key is the dot product of the two +-1 signatures, ``bits - 2 * hamming(q, k)``,
plus the additive attention mask; the ``heavy_size`` best keys not yet selected join the mask
(equal scores: lower key index first). Signatures are bit-packed, 32 per int32 word
(``torch.ops.sah.hash_pack_signs``), so scoring reads ``4 * ceil(bits / 32)`` bytes per key and
query head (``torch.ops.sah.hash_topk_mask``).

Weights: see :mod:`~sparse_attention_hub.sparse_attention.utils.hashattention_utils`. They are
cast once per layer to the dtype and device of the tensors they are applied to (the MLP runs in
the model's dtype) and kept on the masker; the caller's dict is never modified.

State: the packed key signatures of a layer live in ``sparse_meta_data["hash_attention"]
[layer_idx]`` (a :class:`HashAttentionLayerState`); each call computes the MLP only for keys
appended since the previous call (with a static cache: only for the positions each call wrote,
see :mod:`.key_rows_state`). ``sparse_meta_data["key"][layer_idx]`` mirrors the
reference's entry with the packed layout: int32 ``(b, h, num_keys, ceil(bits / 32))`` instead of
float ``(b, h, num_keys, bits)``. Signatures are per query head (the weights are), so the cache
takes ``4 * h * ceil(bits / 32)`` bytes per key per layer (16 MB for 32 heads, 32 bits and 128K
keys); keys are never repeated to query heads in memory (the first MLP layer reads each kv head
once for its whole group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .....utils.hashattention_utils import HatWeights, load_hat_weights, validate_hat_weights
from ...base import MaskerRegistry, require_layer_state
from ..base import TopKMasker, TopKMaskerConfig
from .key_rows_state import KeyRowsState, mark_static, written_end, written_positions

Tensor = torch.Tensor

#: ``sparse_meta_data`` key of the per-layer :class:`HashAttentionLayerState` dict.
STATE_KEY = "hash_attention"

_ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.nn.functional.relu,
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "tanh": torch.tanh,
}


@dataclass
class HashAttentionTopKMaskerConfig(TopKMaskerConfig):
    """HashAttention top-k: ``heavy_size`` keys per row by learned signature agreement.

    Exactly one of ``hat_weights`` (the nested dict) and ``hat_weight_file`` (safetensors, or a
    pickle with ``trust_pickle=True``) must be given. ``hat_bits``, ``hat_mlp_layers`` and
    ``hat_mlp_hidden_size`` are informational, as in the reference: the weights' shapes decide.
    ``hat_mlp_activation`` is one of relu, silu, gelu (erf form), tanh.
    """

    hat_bits: int
    hat_mlp_layers: int
    hat_mlp_hidden_size: int
    hat_mlp_activation: str
    hat_weights: Optional[HatWeights] = None
    hat_weight_file: Optional[str] = None
    trust_pickle: bool = False
    search_space: Dict[str, Any] = field(
        default_factory=lambda: {"heavy_size": {"grid_search": [0.01, 0.02, 0.05, 0.1]}}
    )


class HashAttentionLayerState(KeyRowsState):
    """One layer's packed key signatures, int32 (b, h, capacity, ceil(bits / 32)), for one
    sequence (see :class:`KeyRowsState`)."""

    owner = "HashAttention"

    def __init__(self, keys: Tensor, heads: int, bits: int) -> None:
        super().__init__(keys, heads, (bits + 31) // 32, torch.int32)
        self.bits = bits


@MaskerRegistry.register(HashAttentionTopKMaskerConfig)
class HashAttentionTopKMasker(TopKMasker):
    """Adds the ``heavy_size`` keys whose signatures agree most with the query's (module
    docstring). Needs ``sparse_meta_data`` and ``layer_idx``, checked before anything else.

    Keys the attention mask forbids, and keys after the query's position, are never chosen; if
    fewer than ``k`` remain, all of them are added.
    """

    keeps_key_state = True

    def __init__(self, config: HashAttentionTopKMaskerConfig) -> None:
        super().__init__(config)
        self.heavy_size = config.heavy_size
        self.hat_bits = config.hat_bits
        self.hat_mlp_layers = config.hat_mlp_layers
        self.hat_mlp_hidden_size = config.hat_mlp_hidden_size
        self.hat_mlp_activation = config.hat_mlp_activation
        if config.hat_weights is not None and config.hat_weight_file is not None:
            raise ValueError("Only one of hat_weights or hat_weight_file should be provided")
        if config.hat_weights is None and config.hat_weight_file is None:
            raise ValueError("Either hat_weights or hat_weight_file must be provided")
        if config.hat_weight_file is not None:
            self.hat_weights = load_hat_weights(
                config.hat_weight_file, trust_pickle=config.trust_pickle
            )
        else:
            validate_hat_weights(config.hat_weights)
            self.hat_weights = config.hat_weights
        # (layer, "query" | "key", device, dtype) -> (matrices, biases), cast once.
        self._cast_weights: Dict[Tuple[int, str, torch.device, torch.dtype], Any] = {}

    def _validate(
        self,
        sparse_meta_data: Optional[Dict[Any, Any]],
        *,
        keys: Tensor,
        queries: Tensor,
        **kwargs: Any,
    ) -> None:
        require_layer_state(sparse_meta_data, kwargs)

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        layer = int(context["layer_idx"])
        k = self._calculate_effective_size(self.heavy_size, keys.shape[2])
        key_signatures = self._update_key_signatures(
            keys,
            context["sparse_meta_data"],
            layer,
            attention_mask=context["attention_mask"],
            q_len=queries.shape[2],
        )
        matrices, biases = self._layer_weights(layer, "query", queries)
        query_signatures = torch.ops.sah.hash_pack_signs(
            self._get_signatures(queries, matrices, biases)
        )
        bits = matrices[-1].shape[-1]
        return torch.ops.sah.hash_topk_mask(
            query_signatures, key_signatures, indices, probs, context["attention_mask"], k, bits
        )

    def _get_signatures(
        self, input_tensor: Tensor, matrix_list: List[Tensor], bias_list: List[Tensor]
    ) -> Tensor:
        """+-1 signatures (b, H, s, bits) of ``input_tensor`` (b, H or a divisor of H, s, d):
        the MLP with the configured activation between layers, then the sign (0 gives +1).

        Raises:
            ValueError: for an unsupported activation.
        """
        activation = _ACTIVATIONS.get(self.hat_mlp_activation)
        if activation is None:
            raise ValueError(f"Unsupported activation function: {self.hat_mlp_activation}")
        x = input_tensor
        for idx, (matrix, bias) in enumerate(zip(matrix_list, bias_list)):
            x = self._apply_single_layer(x, matrix, bias)
            if idx < len(matrix_list) - 1:
                x = activation(x)
        return (x >= 0).to(x.dtype) * 2 - 1

    @staticmethod
    def _apply_single_layer(input_tensor: Tensor, weight_matrix: Tensor, bias: Tensor) -> Tensor:
        """``x W[h] + c[h]`` per head: (b, hx, s, d_in) x (H, d_in, d_out) -> (b, H, s, d_out).

        With ``hx < H`` (keys with fewer kv heads, H a multiple of hx) kv head ``t`` feeds
        query heads ``t g .. t g + g - 1`` (``g = H / hx``), as ``repeat_kv`` would, without
        copying the keys.
        """
        batch, in_heads, length, d_in = input_tensor.shape
        heads, _, d_out = weight_matrix.shape
        if in_heads == heads:
            out = torch.einsum("bhsd,hde->bhse", input_tensor, weight_matrix)
        elif in_heads > 0 and heads % in_heads == 0:
            grouped = weight_matrix.reshape(in_heads, heads // in_heads, d_in, d_out)
            out = torch.einsum("bksd,kgde->bkgse", input_tensor, grouped)
            out = out.reshape(batch, heads, length, d_out)
        else:
            raise ValueError(
                f"HashAttention weights have {heads} heads; inputs have {in_heads} heads, which "
                f"must equal or divide it"
            )
        return out + bias[None, :, None, :]

    def _update_key_signatures(
        self,
        keys: Tensor,
        sparse_meta_data: Dict[Any, Any],
        layer_idx: int,
        attention_mask: Optional[Tensor] = None,
        q_len: int = 1,
        **kwargs: Any,
    ) -> Tensor:
        """The packed signatures (b, H, n, words) of all ``n`` keys (b, h_kv or H, n, d),
        computing only those of keys appended since the layer's previous call, or, for a call
        with as many keys as cached and an ``attention_mask`` (a static cache), those of the
        ``q_len`` positions the call wrote (see :mod:`.key_rows_state`)."""
        matrices, biases = self._layer_weights(layer_idx, "key", keys)
        heads, bits = matrices[0].shape[0], matrices[-1].shape[-1]
        states = sparse_meta_data.setdefault(STATE_KEY, {})
        state = states.get(layer_idx)
        n = keys.shape[2]
        if state is None:
            state = HashAttentionLayerState(keys, heads, bits)
            states[layer_idx] = state
        elif (state.rows.shape[1], state.bits) != (heads, bits):
            raise ValueError(
                f"sparse_meta_data holds HashAttention state of layer {layer_idx} for (heads, "
                f"bits) = {(state.rows.shape[1], state.bits)}, expected {(heads, bits)}"
            )
        elif n == state.num_keys and attention_mask is not None:  # positional refresh
            state.check(keys, layer_idx, written_end(attention_mask, n))
            positions = written_positions(attention_mask, q_len, n)
            signs = self._get_signatures(keys.index_select(2, positions), matrices, biases)
            state.refresh(positions, torch.ops.sah.hash_pack_signs(signs))
        else:
            state.check(keys, layer_idx)
        if n > state.num_keys:
            created = state.num_keys == 0
            new_keys = keys[:, :, state.num_keys :]
            signs = self._get_signatures(new_keys, matrices, biases)
            state.append(keys, torch.ops.sah.hash_pack_signs(signs))
            if created:
                state.finish_creation(keys, attention_mask)
        signatures = state.valid_rows
        sparse_meta_data.setdefault("key", {})[layer_idx] = signatures
        return signatures

    def _layer_weights(
        self, layer: int, kind: str, like: Tensor
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """The layer's ``kind`` ("query" or "key") matrices and biases in ``like``'s dtype and on
        its device, cast on first use and cached."""
        cache_key = (layer, kind, like.device, like.dtype)
        cached = self._cast_weights.get(cache_key)
        if cached is None:
            if layer not in self.hat_weights:
                raise ValueError(
                    f"hat_weights has no entry for layer {layer}; it holds layers "
                    f"{sorted(self.hat_weights)}"
                )
            entry = self.hat_weights[layer]
            cached = tuple(
                [t.to(device=like.device, dtype=like.dtype) for t in entry[f"{kind}_{part}"]]
                for part in ("matrix", "bias")
            )
            self._cast_weights[cache_key] = cached
            mark_static(*cached[0], *cached[1])  # read by every compiled step: no CUDA-graph copy
        return cached

    @classmethod
    def create_from_config(cls, config: HashAttentionTopKMaskerConfig) -> "HashAttentionTopKMasker":
        return cls._checked(config, HashAttentionTopKMaskerConfig)
