"""MagicPig: LSH sampling of keys, weighted by their collision probability.

Transform (Neyshabur & Srebro's MIPS-to-cosine reduction, made stable for a growing cache).
At the first call of a layer the state captures, per batch row and kv head, the key mean ``mu``
(zero when ``center=False``) and the norm bound ``N = (1 + 2^-10) max_j ||k_j - mu||`` over the
keys present then (with a static cache: the written part of the buffer, read from the attention
mask; later calls then recompute the signatures of the positions they wrote, see
:mod:`~..fixed.implementations.key_rows_state`). With ``x = k - mu`` and ``y = q - mu``::

    K(k) = [x, sqrt(max(0, N^2 - ||x||^2))] / max(N, ||x||)      Q(q) = [y / ||y||, 0]

``K(k)`` depends only on ``k`` and the frozen ``(mu, N)``, so a cached key's signature never
changes when keys are appended (the reference recomputes a global ``N`` every call, which makes
cached signatures stale). Up to ``N`` this is the exact MIPS transform, where the cosine of
``Q(q)`` and ``K(k)`` is ``y.x / (||y|| N)``; a later key with ``||x|| > N`` keeps its direction
and gets augmentation 0, i.e. its cosine ``y.x / (||y|| ||x||)``. The slack ``2^-10`` keeps the
augmentation of the first call's keys at least ``0.044 N``: without it the largest key's
augmentation is the square root of a rounding error, and its signature would hinge on rounding
(for example between CPU and CUDA).

LSH: ``L`` tables of ``K`` sign bits of Gaussian projections ``W`` ((d + 1) x L K, generated
from ``(seed, layer)`` by a counter-based generator, identical on every device). A key is picked
when its signature equals the query's in at least one table, with probability
``1 - (1 - (1 - theta/pi)^K)^L``, ``theta`` the angle between ``Q(q)`` and ``K(k)``. Candidates
are the keys the query may attend to (attention mask, causality) that the previous mask does
not hold; previous entries are kept unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple

import torch

from .....utils.mask import Mask
from ...base import MaskerRegistry, padding_or_4d_mask, require_layer_state
from ...fixed.implementations.key_rows_state import (
    SequenceGuard,
    valid_key_count,
    written_end,
    written_positions,
)
from ..base import SamplingMasker, SamplingMaskerConfig
from .seeding import check_seed, resolve_seed

Tensor = torch.Tensor

#: ``sparse_meta_data`` key of the per-layer :class:`MagicPigLayerState` dict.
STATE_KEY = "magic_pig"
#: Relative slack of the norm bound over the largest key norm of the first call.
NORM_SLACK = 2.0**-10


def signature_words(lsh_l: int, lsh_k: int) -> int:
    """int32 words per signature: each table takes ``K`` rounded up to a power of two bits
    (``K <= 32``) or to a multiple of 32 bits, as laid out by the C++ kernels."""
    slot = 1 << (lsh_k - 1).bit_length() if lsh_k <= 32 else 32 * -(-lsh_k // 32)
    return -(-lsh_l * slot // 32)


@dataclass
class MagicPigConfig(SamplingMaskerConfig):
    """MagicPig LSH sampling: ``lsh_l`` tables of ``lsh_k`` bits.

    ``center`` subtracts the key mean (frozen at a layer's first call) from keys and queries.
    ``packing`` is kept for compatibility: signatures are always bit-packed and both values give
    the same masks. ``seed`` fixes the projections (None: drawn from torch's default generator
    when a layer's state is created).
    """

    lsh_l: int
    lsh_k: int
    center: bool = True
    packing: Literal["int64", "float32"] = "int64"
    seed: Optional[int] = 42
    search_space: Dict[str, Any] = field(
        default_factory=lambda: {
            "lsh_l": {"grid_search": [16, 32, 64, 128]},
            "lsh_k": {"grid_search": [4, 8, 16, 32]},
        }
    )

    def __post_init__(self) -> None:
        if self.lsh_l <= 0:
            raise ValueError(f"lsh_l must be positive, got {self.lsh_l}")
        if self.lsh_k <= 0:
            raise ValueError(f"lsh_k must be positive, got {self.lsh_k}")
        if self.packing not in ("int64", "float32"):
            raise ValueError(f"packing must be 'int64' or 'float32', got {self.packing}")
        if self.packing == "int64" and self.lsh_k > 64:
            raise ValueError(f"For 'int64' packing, lsh_k must be <= 64, but got {self.lsh_k}")
        check_seed(self.seed)


@dataclass
class MagicPigLayerState(SequenceGuard):
    """One layer's MagicPig state for one sequence (see the module docstring).

    ``projections`` float32 (d + 1, L K); ``key_mean`` float32 (b, h_kv, d); ``key_norm_bound``
    float32 (b, h_kv); ``key_signatures`` int32 (b, h_kv, capacity, words), of which the first
    ``num_keys`` rows are the signatures of the cached keys; ``last_key`` is the key at position
    ``num_keys - 1``, a fingerprint of the sequence the state belongs to (see
    :class:`SequenceGuard`).
    """

    owner = "MagicPig"
    lsh_l: int
    lsh_k: int
    center: bool
    seed: int
    projections: Tensor
    key_mean: Tensor
    key_norm_bound: Tensor
    key_signatures: Tensor
    num_keys: int = 0
    last_key: Optional[Tensor] = None

    def __post_init__(self) -> None:
        self.stale = torch.zeros((), dtype=torch.int32, device=self.key_mean.device)

    @classmethod
    def create(
        cls, keys: Tensor, lsh_l: int, lsh_k: int, center: bool, seed: int, layer: int
    ) -> "MagicPigLayerState":
        """A state whose transform is captured from ``keys`` (b, h_kv, n, d); no key cached."""
        batch, kv_heads, n, dim = keys.shape
        projections = torch.empty(dim + 1, lsh_l * lsh_k, dtype=torch.float32)
        torch.ops.sah.fill_lsh_projections(projections, seed, layer)
        k = keys.detach().to(torch.float32)
        if center and n > 0:
            key_mean = k.mean(dim=2)
        else:
            key_mean = k.new_zeros(batch, kv_heads, dim)
        if n > 0:
            norms = (k - key_mean[:, :, None]).norm(dim=-1)
            key_norm_bound = norms.amax(dim=2) * (1.0 + NORM_SLACK)
        else:
            key_norm_bound = k.new_zeros(batch, kv_heads)
        signatures = torch.zeros(
            batch, kv_heads, 0, signature_words(lsh_l, lsh_k), dtype=torch.int32, device=k.device
        )
        return cls(
            lsh_l,
            lsh_k,
            center,
            seed,
            projections.to(k.device),
            key_mean,
            key_norm_bound,
            signatures,
        )

    def check(self, keys: Tensor, layer: int, end: Optional[Tensor] = None) -> None:
        """Raises unless ``keys`` continue the sequence this state was built for: same batch,
        kv heads, head dim and device (ValueError), at least ``num_keys`` keys (ValueError), and
        the same fingerprint keys (see :class:`SequenceGuard`; ``end`` from :func:`written_end`
        for a positional refresh: StaleStateError on CPU, deferred to :meth:`raise_if_stale` on
        CUDA)."""
        batch, kv_heads, n, dim = keys.shape
        expected = tuple(self.key_mean.shape)
        if (batch, kv_heads, dim) != expected or keys.device != self.key_mean.device:
            raise ValueError(
                f"MagicPig state of layer {layer} belongs to keys of (batch, kv_heads, head_dim) "
                f"{expected} on {self.key_mean.device}, got {(batch, kv_heads, dim)} on "
                f"{keys.device}; use a fresh sparse_meta_data for a new sequence"
            )
        if n < self.num_keys:
            raise ValueError(
                f"Current number of keys ({n}) is less than cached number of keys ({self.num_keys})"
            )
        self._verify_sequence(keys, layer, end)

    def _key_at(self, keys: Tensor, position: int) -> Tensor:
        return keys[:, :, position]

    def reserve(self, num_keys: int) -> None:
        """Grows the signature buffer to hold ``num_keys`` rows (with headroom for decoding)."""
        batch, kv_heads, capacity, words = self.key_signatures.shape
        if num_keys <= capacity:
            return
        grown = self.key_signatures.new_zeros(
            batch, kv_heads, num_keys + max(256, num_keys // 8), words
        )
        grown[:, :, : self.num_keys] = self.key_signatures[:, :, : self.num_keys]
        self.key_signatures = grown

    def advance(self, keys: Tensor) -> None:
        """Records that the signatures of all of ``keys`` are cached."""
        self.num_keys = keys.shape[2]
        if self.num_keys > 0:
            self.last_key = keys[:, :, self.num_keys - 1].detach().clone()

    def refresh(self, keys: Tensor, positions: Tensor) -> None:
        """Positional refresh (a static cache, see :mod:`.key_rows_state`): recomputes, in
        place, the signatures of the keys at ``positions`` (int64, from
        :func:`written_positions`) with this state's frozen transform. The signatures come from
        ``sah::magicpig_mask`` run on those keys alone (its mask output is discarded), so they
        are exactly those an append computes."""
        selected = keys.index_select(2, positions)  # (b, h_kv, q, d)
        batch, kv_heads, count, _ = selected.shape
        signatures = self.key_signatures.new_empty(
            batch, kv_heads, count, self.key_signatures.shape[3]
        )
        no_rows = torch.empty(batch, kv_heads, 1, 0, dtype=torch.int32, device=keys.device)
        torch.ops.sah.magicpig_mask(
            selected[:, :, :1],
            selected,
            no_rows,
            no_rows.to(torch.float32),
            None,
            self.projections,
            self.key_mean,
            self.key_norm_bound,
            signatures,
            0,
            self.lsh_l,
            self.lsh_k,
        )
        self.key_signatures.index_copy_(2, positions, signatures)

    def _state_tensors(self) -> Tuple[Optional[Tensor], ...]:
        # Projections, mean and bound are only read after creation; static addresses spare CUDA
        # graphs a copy.
        return (
            *super()._state_tensors(),
            self.key_signatures,
            self.projections,
            self.key_mean,
            self.key_norm_bound,
        )


@MaskerRegistry.register(MagicPigConfig)
class MagicPig(SamplingMasker):
    """Adds the keys whose LSH signature collides with the query's in at least one of ``lsh_l``
    tables, each with its collision probability (see the module docstring).

    Needs ``sparse_meta_data`` (a dict per sequence) and ``layer_idx``: the layer's
    :class:`MagicPigLayerState` lives in ``sparse_meta_data["magic_pig"][layer_idx]`` and only the
    signatures of new keys are computed on each call. ``sparse_meta_data["projections"]`` and
    ``["key_mean"]`` (per query head, ``(b, h, 1, d)``, None without centering) mirror the
    reference's entries.
    """

    keeps_key_state = True

    def __init__(self, config: MagicPigConfig) -> None:
        super().__init__(config)
        self.lsh_l = config.lsh_l
        self.lsh_k = config.lsh_k
        self.center = config.center
        self.packing = config.packing
        self.seed = config.seed

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
        layer = require_layer_state(sparse_meta_data, kwargs)
        if previous_mask.is_full_mask():
            return previous_mask
        mask = padding_or_4d_mask(attention_mask)
        n = keys.shape[2]
        state = sparse_meta_data.setdefault(STATE_KEY, {}).get(layer)
        created = state is None
        if created:
            state = self._new_state(keys, queries, mask, sparse_meta_data, layer)
        else:
            self._check_config(state, layer)
            if n == state.num_keys and mask is not None:  # positional refresh
                state.check(keys, layer, written_end(mask, n))
                state.refresh(keys, written_positions(mask, queries.shape[2], n))
            else:
                state.check(keys, layer)
        state.reserve(n)
        indices, probs = previous_mask.get_rows()
        indices, probs = torch.ops.sah.magicpig_mask(
            queries,
            keys,
            indices,
            probs,
            mask,
            state.projections,
            state.key_mean,
            state.key_norm_bound,
            state.key_signatures,
            state.num_keys,
            self.lsh_l,
            self.lsh_k,
        )
        if n > state.num_keys:
            state.advance(keys)
        if created:
            state.finish_creation(keys, mask)
        return self._rows_mask(previous_mask, indices, probs)

    def _new_state(
        self,
        keys: Tensor,
        queries: Tensor,
        attention_mask: Optional[Tensor],
        sparse_meta_data: Dict[Any, Any],
        layer: int,
    ) -> MagicPigLayerState:
        """A state whose transform is captured from the keys of the sequence so far: all of
        ``keys``, or with a static cache the written part of the buffer (the keys before the end
        that :func:`valid_key_count` reads from the mask: one host sync, at creation only)."""
        valid = valid_key_count(attention_mask, queries.shape[2], keys.shape[2])
        state = MagicPigLayerState.create(
            keys[:, :, :valid], self.lsh_l, self.lsh_k, self.center, resolve_seed(self.seed), layer
        )
        sparse_meta_data[STATE_KEY][layer] = state
        groups = queries.shape[1] // keys.shape[1]
        key_mean = state.key_mean.repeat_interleave(groups, dim=1)[:, :, None]
        sparse_meta_data.setdefault("projections", {})[layer] = state.projections
        sparse_meta_data.setdefault("key_mean", {})[layer] = key_mean if self.center else None
        return state

    def _check_config(self, state: MagicPigLayerState, layer: int) -> None:
        """ValueError unless ``state`` was built for this masker's configuration."""
        config = (self.lsh_l, self.lsh_k, self.center)
        if (state.lsh_l, state.lsh_k, state.center) != config or (
            self.seed is not None and state.seed != self.seed
        ):
            raise ValueError(
                f"sparse_meta_data holds MagicPig state of layer {layer} for (lsh_l, lsh_k, "
                f"center, seed) = {(state.lsh_l, state.lsh_k, state.center, state.seed)}, "
                f"expected {config + (self.seed,)}"
            )

    @classmethod
    def create_from_config(cls, config: MagicPigConfig) -> "MagicPig":
        return cls._checked(config, MagicPigConfig)
