"""Quest: page-level top-k by an upper bound of ``q.k`` over each page's key box.

Keys are split into pages of ``page_size`` (the last one may be partial). Per page and channel
the state keeps the min ``lo`` and max ``hi`` of the page's keys (per kv head; the reference
repeats K to the query heads first, which gives the same statistics). A query row scores page
``t`` by ``sum_c max(q_c lo_tc, q_c hi_tc)`` (with ``label_bits < 16`` on pseudo-quantised
``lo``/``hi``), takes the best ``min(pages, max(3, k // page_size))`` pages (at least three, as
upstream Quest) and adds their keys with p = 1.

Differences from the reference implementation:

- Only keys the query may attend to are added: the attention mask's allowed keys up to the
  query's position ``k_len - q_len + i``. Pages with no such key are never chosen. The reference
  gates its result by the mask instead, which gives the same attention output. The mask reads
  as in the attention ops: additive masks forbid ``-inf`` and the dtype's lowest value (the
  reference forbids every negative value), bool masks allow True (the reference's Quest allows
  False), and a per-head mask is read per head (the reference takes any head for page validity).
- The merge is the clamp-add union, which equals the reference's ``max(prev, pages)`` on every
  key the query may attend to; previous entries are never zeroed or mutated.
- Ties between page scores go to the lower page index. Page bounds are kept, pseudo-quantised
  and scored in float32 whatever the input dtype.
- A budget ``k = 0`` (a small fractional ``heavy_size``) selects nothing.
- The page min/max are cached per layer in ``sparse_meta_data["quest"][layer_idx]`` and updated
  incrementally: each call recomputes only the last cached page (if partial) and the new ones.
  With a static cache (as many keys as cached, an attention mask) a call recomputes the pages
  holding the positions it wrote, over the written keys only (see :mod:`.key_rows_state`).
  Without ``sparse_meta_data`` or ``layer_idx`` they are computed from scratch on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ...base import AttentionTensorDimensions, MaskerRegistry
from ..base import TopKMasker, TopKMaskerConfig
from .key_rows_state import SequenceGuard, written_end

Tensor = torch.Tensor

#: ``sparse_meta_data`` key of the per-layer :class:`QuestLayerState` dict.
STATE_KEY = "quest"
#: Minimum number of pages a row selects (upstream Quest).
MIN_PAGES = 3


@dataclass
class QuestTopKMaskerConfig(TopKMaskerConfig):
    """Quest page top-k: ``heavy_size`` keys' worth of pages of ``page_size`` keys (at least
    three pages); ``label_bits < 16`` scores on pseudo-quantised page bounds."""

    page_size: int
    label_bits: int = 16
    search_space: Dict[str, Any] = field(
        default_factory=lambda: {
            "heavy_size": {
                "grid_search": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10]
            },
            "page_size": {"grid_search": [64, 128, 256]},
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.label_bits <= 16:
            raise ValueError(f"label_bits must be in range (0, 16], got {self.label_bits}")
        if self.page_size <= 0:
            raise ValueError("page_size must be greater than 0")


@dataclass
class QuestLayerState(SequenceGuard):
    """One layer's Quest page statistics for one sequence.

    ``page_min``/``page_max`` float32 ``(b, h_kv, capacity, d)``: the first
    ``ceil(num_keys / page_size)`` pages hold the per-channel min/max of the cached keys (the
    capacity grows with headroom, so decoding rarely reallocates). ``last_key`` is the key at
    position ``num_keys - 1``, a fingerprint of the sequence the state belongs to (see
    :class:`SequenceGuard`).
    """

    owner = "Quest"
    page_size: int
    page_min: Tensor
    page_max: Tensor
    num_keys: int = 0
    last_key: Optional[Tensor] = None

    def __post_init__(self) -> None:
        self.stale = torch.zeros((), dtype=torch.int32, device=self.page_min.device)

    @classmethod
    def create(cls, keys: Tensor, page_size: int) -> "QuestLayerState":
        """An empty state (no key cached) for keys shaped like ``keys`` (b, h_kv, n, d)."""
        batch, kv_heads, _, dim = keys.shape
        empty = torch.empty(batch, kv_heads, 0, dim, dtype=torch.float32, device=keys.device)
        return cls(page_size, empty, empty.clone())

    def check(self, keys: Tensor, layer: int, end: Optional[Tensor] = None) -> None:
        """Raises unless ``keys`` continue the sequence this state was built for: same batch,
        kv heads, head dim and device (ValueError), at least ``num_keys`` keys (ValueError), and
        the same fingerprint keys (see :class:`SequenceGuard`; ``end`` from :func:`written_end`
        for a positional refresh: StaleStateError on CPU, deferred to :meth:`raise_if_stale` on
        CUDA)."""
        batch, kv_heads, n, dim = keys.shape
        expected = (self.page_min.shape[0], self.page_min.shape[1], self.page_min.shape[3])
        if (batch, kv_heads, dim) != expected or keys.device != self.page_min.device:
            raise ValueError(
                f"Quest state of layer {layer} belongs to keys of (batch, kv_heads, head_dim) "
                f"{expected} on {self.page_min.device}, got {(batch, kv_heads, dim)} on "
                f"{keys.device}; use a fresh sparse_meta_data for a new sequence"
            )
        if n < self.num_keys:
            raise ValueError(
                f"Current number of keys ({n}) is less than cached number of keys ({self.num_keys})"
            )
        self._verify_sequence(keys, layer, end)

    def update(self, keys: Tensor) -> None:
        """Brings the page statistics up to date with ``keys`` (only the new pages and the
        cached partial page are computed) and records them as cached."""
        n = keys.shape[2]
        self._reserve(-(-n // self.page_size))
        torch.ops.sah.quest_page_minmax_update(
            keys, self.page_min, self.page_max, self.num_keys, self.page_size
        )
        self.num_keys = n
        if n > 0:
            self.last_key = keys[:, :, -1:].detach().clone()

    def refresh(self, keys: Tensor, end: Tensor, q_len: int) -> None:
        """Positional refresh (a static cache, see :mod:`.key_rows_state`): recomputes the
        min/max of the pages that hold the ``q_len`` positions ending at ``end`` (from
        :func:`written_end`), over their keys before ``end`` only, in place. Static shapes, no
        host sync: ``(q_len - 1) // page_size + 2`` pages are computed (ids clamped to the page
        of key ``end - 1``; a duplicate rewrites identical values)."""
        n, ps = keys.shape[2], self.page_size
        device = keys.device
        end = end.clamp(1, n)  # a row that sees no key: refresh page 0 (hidden anyway)
        count = (q_len - 1) // ps + 2
        first_page = (end - q_len).clamp_min(0) // ps
        pages = torch.minimum(first_page + torch.arange(count, device=device), (end - 1) // ps)
        positions = pages[:, None] * ps + torch.arange(ps, device=device)  # (count, ps)
        valid = positions < end
        batch, kv_heads, _, dim = keys.shape
        page_keys = keys.index_select(2, positions.clamp(max=n - 1).flatten())
        page_keys = page_keys.reshape(batch, kv_heads, count, ps, dim).to(torch.float32)
        hidden = ~valid[:, :, None]
        lo = page_keys.masked_fill(hidden, float("inf")).amin(dim=3)
        hi = page_keys.masked_fill(hidden, float("-inf")).amax(dim=3)
        self.page_min.index_copy_(2, pages, lo)
        self.page_max.index_copy_(2, pages, hi)

    def _state_tensors(self) -> Tuple[Optional[Tensor], ...]:
        return (*super()._state_tensors(), self.page_min, self.page_max)

    def _reserve(self, num_pages: int) -> None:
        """Grows the capacity to ``num_pages`` pages (with headroom), keeping cached pages."""
        batch, kv_heads, capacity, dim = self.page_min.shape
        if num_pages <= capacity:
            return
        grown = num_pages + max(16, num_pages // 8)
        cached = -(-self.num_keys // self.page_size)
        stats = []
        for old in (self.page_min, self.page_max):
            new = old.new_empty(batch, kv_heads, grown, dim)
            new[:, :, :cached] = old[:, :, :cached]
            stats.append(new)
        self.page_min, self.page_max = stats


@MaskerRegistry.register(QuestTopKMaskerConfig)
class QuestTopKMasker(TopKMasker):
    """Adds every key the query may see in its best-scoring pages (see the module docstring).

    Full attention when ``k_len <= max(1, k)``. Reads the page statistics, not the keys, to
    score; only the new keys are read to update the statistics.
    """

    keeps_key_state = True

    def __init__(self, config: QuestTopKMaskerConfig) -> None:
        super().__init__(config)
        if config.page_size <= 0:
            raise ValueError("page_size must be a positive integer")
        self.page_size = int(config.page_size)
        self.heavy_size = config.heavy_size
        self.label_bits = config.label_bits

    def _covers_all(self, dims: AttentionTensorDimensions) -> bool:
        k = self._calculate_effective_size(self.heavy_size, dims.seq_len_keys)
        return dims.seq_len_keys <= max(1, k)

    def _select(
        self, indices: Tensor, probs: Tensor, *, keys: Tensor, queries: Tensor, **context: Any
    ) -> Tuple[Tensor, Tensor]:
        n = keys.shape[2]
        k = self._calculate_effective_size(self.heavy_size, n)
        attention_mask = context["attention_mask"]
        sparse_meta_data, layer = context.get("sparse_meta_data"), context.get("layer_idx")
        if sparse_meta_data is None or layer is None:
            state = QuestLayerState.create(keys, self.page_size)  # uncached
            state.update(keys)
        else:
            state = self._cached_state(
                keys, attention_mask, queries.shape[2], sparse_meta_data, int(layer)
            )
        pages = self.pages_to_pick(k, n)
        return torch.ops.sah.quest_topk_mask(
            queries,
            state.page_min,
            state.page_max,
            indices,
            probs,
            context["attention_mask"],
            n,
            self.page_size,
            pages,
            self.label_bits,
        )

    def pages_to_pick(self, k: Any, num_keys: Any) -> Any:
        """Pages per row for a budget of ``k`` keys: ``min(pages, max(3, k // page_size))``, or
        0 when ``k == 0`` (a zero budget selects nothing)."""
        if k == 0:
            return 0
        num_pages = -(-num_keys // self.page_size)
        return min(num_pages, max(MIN_PAGES, k // self.page_size))

    def _cached_state(
        self,
        keys: Tensor,
        attention_mask: Optional[Tensor],
        q_len: int,
        sparse_meta_data: Dict[Any, Any],
        layer: int,
    ) -> QuestLayerState:
        """The layer's cached state brought up to date with ``keys``: created on first use (all
        pages computed; with a static cache the pages this call wrote are then recomputed over
        the written keys only), else checked and updated: new pages (dynamic cache) or the pages
        of the positions this call wrote (a call with as many keys as cached and an attention
        mask: a static cache, see :mod:`.key_rows_state`)."""
        n = keys.shape[2]
        states = sparse_meta_data.setdefault(STATE_KEY, {})
        state = states.get(layer)
        if state is None:
            state = states[layer] = QuestLayerState.create(keys, self.page_size)
            state.update(keys)
            if attention_mask is not None and q_len < n:  # a static buffer's unwritten tail
                state.refresh(keys, written_end(attention_mask, n), q_len)
            state.finish_creation(keys, attention_mask)
            return state
        if state.page_size != self.page_size:
            raise ValueError(
                f"sparse_meta_data holds Quest state of layer {layer} for page_size "
                f"{state.page_size}, expected {self.page_size}"
            )
        if n == state.num_keys and attention_mask is not None:  # positional refresh
            end = written_end(attention_mask, n)
            state.check(keys, layer, end)
            state.refresh(keys, end, q_len)
        else:
            state.check(keys, layer)
            state.update(keys)
        return state

    @classmethod
    def create_from_config(cls, config: QuestTopKMaskerConfig) -> "QuestTopKMasker":
        return cls._checked(config, QuestTopKMaskerConfig)
