"""HashAttention weights: validation, safe loading and saving, and conversion from USA checkpoints.

In memory the weights are a dict ``layer_idx -> {"query_matrix": [W_0, ..], "query_bias": [c_0, ..],
"key_matrix": [..], "key_bias": [..]}``: one MLP per query head and per side (queries, keys),
``W_l`` of shape ``(H, d_in, d_out)`` (already input-major) and ``c_l`` of shape ``(H, d_out)``,
``H`` the number of query heads. The last layer's ``d_out`` is the number of signature bits.

On disk they are a safetensors file with one tensor per entry, named ``"{layer}.{kind}.{l}"``
(for example ``"3.key_bias.1"``). A pickle file (the reference implementation's format) can
run arbitrary code when loaded, so :func:`load_hat_weights` refuses it unless the caller passes
``trust_pickle=True``; :func:`save_hat_weights` converts such a file once.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Dict, List, Mapping, Union

import torch

Tensor = torch.Tensor
HatWeights = Dict[int, Dict[str, List[Tensor]]]
PathLike = Union[str, "os.PathLike[str]"]

#: The four weight lists of a layer.
WEIGHT_KINDS = ("query_matrix", "query_bias", "key_matrix", "key_bias")


def validate_hat_weights(weights: Mapping[Any, Any]) -> None:
    """Raises ValueError unless ``weights`` has the layout in the module docstring: integer
    layers, the four lists of equal length L >= 1, ``W_l`` (H, d_in, d_out) chained
    (``d_out`` of layer l is ``d_in`` of layer l + 1), ``c_l`` (H, d_out), one H per layer,
    and as many query bits as key bits."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("hat_weights must be a non-empty dict: layer_idx -> weight lists")
    for layer, entry in weights.items():
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"hat_weights keys must be int layer indices, got {layer!r}")
        missing = [kind for kind in WEIGHT_KINDS if kind not in entry]
        if missing:
            raise ValueError(f"hat_weights[{layer}] lacks {missing}; expected keys {WEIGHT_KINDS}")
        depth = len(entry["query_matrix"])
        lengths = {kind: len(entry[kind]) for kind in WEIGHT_KINDS}
        if depth == 0 or set(lengths.values()) != {depth}:
            raise ValueError(
                f"hat_weights[{layer}] lists must all have the same length >= 1, got {lengths}"
            )
        heads = entry["query_matrix"][0].shape[0]
        bits = {}
        for side in ("query", "key"):
            d_in = None
            for idx, (w, c) in enumerate(zip(entry[f"{side}_matrix"], entry[f"{side}_bias"])):
                where = f"hat_weights[{layer}]['{side}_matrix'][{idx}]"
                if w.dim() != 3 or w.shape[0] != heads or (d_in is not None and w.shape[1] != d_in):
                    expected = f"({heads}, {'d_in' if d_in is None else d_in}, d_out)"
                    raise ValueError(f"{where} must have shape {expected}, got {tuple(w.shape)}")
                if tuple(c.shape) != (heads, w.shape[2]):
                    raise ValueError(
                        f"hat_weights[{layer}]['{side}_bias'][{idx}] must have shape "
                        f"{(heads, w.shape[2])}, got {tuple(c.shape)}"
                    )
                d_in = w.shape[2]
            bits[side] = d_in
        if bits["query"] != bits["key"]:
            raise ValueError(
                f"hat_weights[{layer}] gives {bits['query']} query bits but {bits['key']} key bits"
            )


def _is_safetensors(path: PathLike) -> bool:
    """Whether the file starts like a safetensors file (u64 header length, then a JSON object)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= size


def _from_flat(tensors: Mapping[str, Tensor], source: str) -> HatWeights:
    """Rebuilds the nested dict from safetensors names ``"{layer}.{kind}.{l}"``."""
    slots: Dict[int, Dict[str, Dict[int, Tensor]]] = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        if len(parts) != 3 or parts[1] not in WEIGHT_KINDS:
            raise ValueError(f"{source}: unexpected tensor name {name!r} (want 'layer.kind.index')")
        try:
            layer, idx = int(parts[0]), int(parts[2])
        except ValueError:
            raise ValueError(f"{source}: unexpected tensor name {name!r}") from None
        slots.setdefault(layer, {}).setdefault(parts[1], {})[idx] = tensor
    weights: HatWeights = {}
    for layer in sorted(slots):
        weights[layer] = {}
        for kind, by_index in slots[layer].items():
            if sorted(by_index) != list(range(len(by_index))):
                raise ValueError(
                    f"{source}: layer {layer} {kind} indices must be 0..n-1, got {sorted(by_index)}"
                )
            weights[layer][kind] = [by_index[i] for i in range(len(by_index))]
    return weights


def load_hat_weights(
    hat_weights_path: Union[PathLike, Mapping[int, Any]],
    device: Union[str, torch.device] = "cpu",
    *,
    trust_pickle: bool = False,
) -> HatWeights:
    """Loads and validates HashAttention weights onto ``device``.

    Args:
        hat_weights_path: a safetensors file (see the module docstring), a pickle file of the
            nested dict (only with ``trust_pickle=True``), or the nested dict itself (its tensors
            are moved, never modified in place).
        device: where the returned tensors live.
        trust_pickle: allow unpickling a non-safetensors file. Only for files from a trusted
            source: unpickling can execute arbitrary code.

    Raises:
        ValueError: for a pickle file without ``trust_pickle=True``, or malformed weights.
    """
    if isinstance(hat_weights_path, Mapping):
        raw: Mapping[Any, Any] = hat_weights_path
    else:
        path = os.fspath(hat_weights_path)
        if _is_safetensors(path):
            from safetensors.torch import load_file

            raw = _from_flat(load_file(path), path)
        elif not trust_pickle:
            raise ValueError(
                f"{path} is not a safetensors file; refusing to unpickle it because unpickling can "
                "run arbitrary code. Pass trust_pickle=True only if you trust its source, or "
                "convert it once with save_hat_weights(load_hat_weights(path, "
                "trust_pickle=True), 'weights.safetensors')"
            )
        else:
            with open(path, "rb") as f:
                raw = pickle.load(f)
    validate_hat_weights(raw)
    return {
        int(layer): {kind: [t.to(device) for t in entry[kind]] for kind in WEIGHT_KINDS}
        for layer, entry in raw.items()
    }


def save_hat_weights(weights: Mapping[int, Any], path: PathLike) -> None:
    """Writes validated HashAttention weights to a safetensors file."""
    from safetensors.torch import save_file

    validate_hat_weights(weights)
    flat = {
        f"{layer}.{kind}.{idx}": t.detach().to("cpu").contiguous()
        for layer, entry in weights.items()
        for kind in WEIGHT_KINDS
        for idx, t in enumerate(entry[kind])
    }
    save_file(flat, os.fspath(path), metadata={"format": "sparse_attention_hub.hat_weights"})


def convert_usa_weights_to_hash_attention(
    usa_checkpoint_path: Union[PathLike, Mapping[str, Tensor]],
    num_layers: int = 32,
    num_heads: int = 32,
    num_mlp_layers: int = 3,
    device: str = "cpu",
) -> HatWeights:
    """Converts a USA checkpoint (a state dict, or a file of one) into HashAttention weights.

    The checkpoint holds, for every layer, side ``s`` in {q, k}, head and MLP layer ``l``, the
    ``nn.Linear`` entries ``"{layer}.learning_to_hash_transformation_{s}.{head}.{2 l}.weight"``
    (out x in) and ``.bias`` (activations sit at the odd indices of the ``nn.Sequential``). Each
    weight is transposed to input-major, a missing bias becomes zeros, and heads are stacked.
    Files are read with ``torch.load(weights_only=True)`` (no arbitrary code).

    Raises:
        ValueError: if a weight is missing.
    """
    if isinstance(usa_checkpoint_path, Mapping):
        state = usa_checkpoint_path
    else:
        state = torch.load(os.fspath(usa_checkpoint_path), map_location=device, weights_only=True)
    weights: HatWeights = {}
    for layer in range(num_layers):
        entry: Dict[str, List[Tensor]] = {kind: [] for kind in WEIGHT_KINDS}
        for side, name in (("q", "query"), ("k", "key")):
            for mlp_layer in range(num_mlp_layers):
                mats, biases = [], []
                for head in range(num_heads):
                    prefix = (
                        f"{layer}.learning_to_hash_transformation_{side}.{head}.{2 * mlp_layer}"
                    )
                    if f"{prefix}.weight" not in state:
                        raise ValueError(f"USA checkpoint lacks {prefix}.weight")
                    w = state[f"{prefix}.weight"].to(device)
                    mats.append(w.t())
                    bias = state.get(f"{prefix}.bias")
                    biases.append(w.new_zeros(w.shape[0]) if bias is None else bias.to(device))
                entry[f"{name}_matrix"].append(torch.stack(mats).contiguous())
                entry[f"{name}_bias"].append(torch.stack(biases))
        weights[layer] = entry
    validate_hat_weights(weights)
    return weights


def create_hat_weights_file_from_usa(
    usa_checkpoint_path: Union[PathLike, Mapping[str, Tensor]],
    target_hat_path: PathLike,
    num_layers: int = 32,
    num_heads: int = 32,
    num_mlp_layers: int = 3,
    device: str = "cpu",
) -> None:
    """Converts a USA checkpoint (see :func:`convert_usa_weights_to_hash_attention`) and writes
    the weights to ``target_hat_path`` as safetensors."""
    weights = convert_usa_weights_to_hash_attention(
        usa_checkpoint_path, num_layers, num_heads, num_mlp_layers, device
    )
    save_hat_weights(weights, target_hat_path)


__all__ = [
    "HatWeights",
    "WEIGHT_KINDS",
    "convert_usa_weights_to_hash_attention",
    "create_hat_weights_file_from_usa",
    "load_hat_weights",
    "save_hat_weights",
    "validate_hat_weights",
]
