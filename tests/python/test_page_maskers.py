"""Tests of the Quest and DoubleSparsity top-k maskers (ops ``sah::quest_page_minmax_update``,
``sah::quest_topk_mask``, ``sah::double_sparsity_topk_mask``, the masker classes, their configs
and the reference's helper modules) against a plain-PyTorch transcription of the reference
implementation's algorithms.

The reference gates its result by the attention mask (and may pick forbidden keys in top-k);
this project never selects them (decision D6), so masks are compared on allowed positions, and
the forbidden positions must be empty in ours. Ties are broken towards the lower index (D13),
which the transcriptions below reproduce with a stable sort.
"""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from reference import causal_additive

from sparse_attention_hub import ops
from sparse_attention_hub.sparse_attention.efficient_attention import EfficientAttention
from sparse_attention_hub.sparse_attention.efficient_attention.implementations import (
    DoubleSparsityConfig,
)
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers import ResearchMasker
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    SinkMaskerConfig,
    TopKMasker,
    TopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.double_sparsity_top_k import (  # noqa: E501
    DoubleSparsityTopKMasker,
    DoubleSparsityTopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.quest_top_k import (  # noqa: E501
    QuestLayerState,
    QuestTopKMasker,
    QuestTopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.utils import (  # noqa: E501
    extract_layer_channels,
    load_sorted_channels_from_file,
    validate_channel_data,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.utils.common_utils import (  # noqa: E501
    pseudo_quantize,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.utils.quest_utils import (  # noqa: E501
    attention_mask_to_allowed_prob,
    compute_page_min_max,
    pages_to_token_mask,
    pages_valid,
    quest_page_scores,
)
from sparse_attention_hub.sparse_attention.utils.mask import Mask

MIN = torch.finfo(torch.float32).min


# ----------------------------------------------------------------------------------------------
# Reference transcription (dense masks (b, h, sq, sk), float32 like the reference's fp32 runs)


def ref_quantize(x, bits):
    """Reference pseudo_quantize: per row over the last axis, round half to even."""
    top = 2**bits - 1
    lo = x.min(dim=-1, keepdim=True)[0]
    rng = x.max(dim=-1, keepdim=True)[0] - lo
    rng[rng == 0] = 1
    scale = top / rng
    return torch.round((x - lo) * scale).clamp(0, top) / scale + lo


def ref_topk_indices(scores, k):
    """Top-k columns, ties to the lower index (decision D13)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def ref_quest(q, k, additive, prev, heavy, page_size, label_bits=16):
    """The reference Quest: page min/max on K repeated to the query heads, bound scores,
    invalid pages to MIN, top max(3, heavy // ps) pages, max(prev, pages) * allowed."""
    h = q.shape[1]
    keys = k.repeat_interleave(h // k.shape[1], 1)
    b, _, sk, d = keys.shape
    num_pages = -(-sk // page_size)
    pad = num_pages * page_size - sk
    lo = F.pad(keys, (0, 0, 0, pad), value=float("inf")).view(b, h, num_pages, page_size, d)
    hi = F.pad(keys, (0, 0, 0, pad), value=float("-inf")).view(b, h, num_pages, page_size, d)
    lo, hi = lo.amin(3), hi.amax(3)
    if label_bits < 16:
        lo, hi = ref_quantize(lo, label_bits), ref_quantize(hi, label_bits)
    qq = q.unsqueeze(3)
    scores = torch.maximum(qq * lo.unsqueeze(2), qq * hi.unsqueeze(2)).sum(-1)
    allowed = (additive[..., :sk] >= 0).float()
    valid = F.pad(allowed, (0, pad)).view(b, 1, -1, num_pages, page_size).amax(-1) > 0
    scores = torch.where(valid, scores, MIN)
    kp = max(1, min(num_pages, max(3, heavy // page_size)))
    top = ref_topk_indices(scores, kp)
    tokens = (torch.arange(sk) // page_size == top.unsqueeze(-1)).any(dim=3).float()
    return torch.maximum(prev.clamp(0, 1), tokens) * allowed


def ref_double_sparsity(q, k, additive, prev, channels, heavy, group_factor, label_bits):
    """The reference DoubleSparsity: per-head channel gather, first d // gf channels,
    optional pseudo-quantisation, scaled scores + A, previous keys to -inf, top-k := 1."""
    b, h, sq, d = q.shape
    keys = k.repeat_interleave(h // k.shape[1], 1)
    sk = keys.shape[2]
    qs = torch.gather(q.transpose(1, 2), -1, channels.expand(b, sq, -1, -1)).transpose(1, 2)
    ks = torch.gather(keys.transpose(1, 2), -1, channels.expand(b, sk, -1, -1)).transpose(1, 2)
    r = d // group_factor
    gq, gk = qs[..., :r], ks[..., :r]
    if label_bits < 16:
        gq, gk = ref_quantize(gq, label_bits), ref_quantize(gk, label_bits)
    scores = gq @ gk.transpose(2, 3) / math.sqrt(d // group_factor) + additive[..., :sk]
    scores[prev != 0] = float("-inf")
    out = prev.clone()
    out.scatter_(-1, ref_topk_indices(scores, heavy), 1.0)
    return out


# ----------------------------------------------------------------------------------------------
# Helpers


def empty_rows(b, h, sq, device="cpu"):
    return (
        torch.empty(b, h, sq, 0, dtype=torch.int32, device=device),
        torch.empty(b, h, sq, 0, device=device),
    )


def random_prev(b, h, sq, sk, gen, allowed, density=0.2):
    """A previous mask on allowed keys (what earlier maskers produce), values 1.0 or 0.3."""
    keep = (torch.rand(b, h, sq, sk, generator=gen) < density) & allowed
    vals = torch.where(torch.rand(b, h, sq, sk, generator=gen) < 0.5, 1.0, 0.3)
    return torch.where(keep, vals, torch.zeros(()))


def check_on_allowed(idx, p, want, allowed, sk):
    got = ops.rows_to_dense(idx.cpu(), p.cpu(), sk)
    allowed = allowed.expand_as(got)
    torch.testing.assert_close(got[allowed], want.float()[allowed])
    assert (got[~allowed] == 0).all(), "a forbidden key was selected"
    return got


def page_stats(keys, page_size, capacity=None):
    """Fresh page statistics of keys (b, h_kv, sk, d) through the update op."""
    b, hkv, sk, d = keys.shape
    capacity = -(-sk // page_size) if capacity is None else capacity
    lo = torch.full((b, hkv, capacity, d), float("nan"), device=keys.device)
    hi = torch.full((b, hkv, capacity, d), float("nan"), device=keys.device)
    torch.ops.sah.quest_page_minmax_update(keys, lo, hi, 0, page_size)
    return lo, hi


def quest_pages(heavy, sk, page_size):
    return 0 if heavy == 0 else min(-(-sk // page_size), max(3, heavy // page_size))


def padded_causal(b, sq, sk, pad):
    """Additive causal mask with `pad[i]` left-padding keys in batch row i, and 'allowed'."""
    additive, allowed = causal_additive(b, sq, sk)
    allowed = allowed.expand(b, 1, sq, sk).clone()
    for i, n in enumerate(pad):
        allowed[i, ..., :n] = False
    return torch.zeros(b, 1, sq, sk).masked_fill(~allowed, MIN), allowed


def channel_file(tmp_path, tables, name="channels.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tables))
    return str(path)


def random_channels(gen, heads, d):
    return torch.stack([torch.randperm(d, generator=gen) for _ in range(heads)])


# ----------------------------------------------------------------------------------------------
# Quest


@pytest.mark.parametrize(
    "sq,sk,page_size,heavy",
    [(1, 64, 4, 16), (1, 61, 8, 4), (3, 50, 4, 20), (8, 40, 5, 12), (1, 33, 16, 48)],
)
@pytest.mark.parametrize("label_bits", [16, 4])
@pytest.mark.parametrize("with_prev", [False, True])
def test_quest_op_matches_reference(sq, sk, page_size, heavy, label_bits, with_prev):
    gen = torch.Generator().manual_seed(sq * 1000 + sk * 10 + page_size)
    b, h, hkv, d = 2, 4, 2, 8
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = causal_additive(b, sq, sk)
    prev = random_prev(b, h, sq, sk, gen, allowed) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = ops.dense_to_rows(prev) if with_prev else empty_rows(b, h, sq)
    lo, hi = page_stats(k, page_size, capacity=-(-sk // page_size) + 3)
    pages = quest_pages(heavy, sk, page_size)
    idx, p = torch.ops.sah.quest_topk_mask(
        q, lo, hi, pi, pp, additive, sk, page_size, pages, label_bits
    )
    assert idx.shape[-1] == min(pi.shape[-1] + pages * page_size, sk)
    want = ref_quest(q, k, additive, prev, heavy, page_size, label_bits)
    check_on_allowed(idx, p, want, allowed, sk)
    # Without an attention mask the causal rule still holds.
    idx2, p2 = torch.ops.sah.quest_topk_mask(
        q, lo, hi, pi, pp, None, sk, page_size, pages, label_bits
    )
    assert torch.equal(idx2, idx) and torch.equal(p2, p)


def test_quest_masker_matches_reference_with_padding_and_bf16():
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, sq, sk, d, ps = 3, 4, 1, 2, 70, 16, 8
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = padded_causal(b, sq, sk, pad=[0, 11, 30])
    masker = QuestTopKMasker.create_from_config(QuestTopKMaskerConfig(0.3, page_size=ps))
    empty = Mask.create_empty_mask((b, h, sq, sk), torch.float32, q.device)
    mask = masker.add_mask(k, q, k, additive, 1.0, 0.0, {}, empty, layer_idx=0)
    idx, p = mask.get_rows()
    want = ref_quest(q, k, additive, torch.zeros(b, h, sq, sk), int(0.3 * sk), ps)
    got = check_on_allowed(idx, p, want, allowed, sk)
    # Rows keep three pages' worth of real keys even where the padding covers whole pages.
    assert (got.sum(-1) >= ps).all()
    # bf16 inputs run (fp32 accumulation) and never select a forbidden key either.
    mask16 = masker.add_mask(
        k.bfloat16(),
        q.bfloat16(),
        k.bfloat16(),
        additive.bfloat16(),
        1.0,
        0.0,
        {},
        empty,
        layer_idx=0,
    )
    dense16 = mask16.get_dense_mask().float()
    assert (dense16[~allowed.expand_as(dense16)] == 0).all() and dense16.sum() > 0


def test_quest_incremental_page_stats_equal_recomputation():
    """A simulated decode (prefill, single steps and chunks crossing page boundaries): the state
    equals statistics computed from scratch after every step, and so do the masks."""
    gen = torch.Generator().manual_seed(11)
    b, h, hkv, d, ps = 2, 4, 2, 8, 5
    masker = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=10, page_size=ps, label_bits=6))
    keys = torch.randn(b, hkv, 13, d, generator=gen)
    smd = {}
    steps = [1] * 23 + [7, 3, 1, 12, 1, 1]
    for step in [0] + steps:
        if step:
            keys = torch.cat([keys, torch.randn(b, hkv, step, d, generator=gen)], dim=2)
        sk = keys.shape[2]
        q = torch.randn(b, h, 1, d, generator=gen)
        empty = Mask.create_empty_mask((b, h, 1, sk), torch.float32, q.device)
        got = masker.add_mask(keys, q, keys, None, 1.0, 0.0, smd, empty, layer_idx=3)
        fresh = masker.add_mask(keys, q, keys, None, 1.0, 0.0, None, empty, layer_idx=3)
        state = smd["quest"][3]
        pages = -(-sk // ps)
        want_lo, want_hi = compute_page_min_max(keys, ps, pages)
        assert state.num_keys == sk
        assert torch.equal(state.page_min[:, :, :pages], want_lo)
        assert torch.equal(state.page_max[:, :, :pages], want_hi)
        assert torch.equal(got.get_dense_mask(), fresh.get_dense_mask())
    assert state.page_min.shape[2] >= pages  # grown with headroom along the way


def test_quest_update_op_recomputes_only_from_the_partial_page():
    gen = torch.Generator().manual_seed(12)
    k = torch.randn(1, 2, 23, 4, generator=gen)
    lo, hi = page_stats(k[:, :, :13], 4, capacity=8)
    sentinel = torch.full_like(lo[:, :, :3], 123.0)
    lo[:, :, :3] = sentinel  # pages 0..2 are complete at 13 keys: never read again
    torch.ops.sah.quest_page_minmax_update(k, lo, hi, 13, 4)
    want_lo, want_hi = compute_page_min_max(k, 4, 6)
    assert torch.equal(lo[:, :, :3], sentinel)
    assert torch.equal(lo[:, :, 3:6], want_lo[:, :, 3:]) and torch.equal(hi[:, :, :6], want_hi)


def test_quest_stale_state_is_detected():
    gen = torch.Generator().manual_seed(13)
    masker = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=4, page_size=4))
    keys = torch.randn(1, 2, 20, 8, generator=gen)
    q = torch.randn(1, 2, 1, 8, generator=gen)

    def run(keys, q, smd):
        empty = Mask.create_empty_mask((q.shape[0], 2, 1, keys.shape[2]), torch.float32, "cpu")
        return masker.add_mask(keys, q, keys, None, 1.0, 0.0, smd, empty, layer_idx=0)

    smd = {}
    run(keys, q, smd)
    assert isinstance(smd["quest"][0], QuestLayerState)
    with pytest.raises(ValueError, match=re.escape("(batch, kv_heads, head_dim) (1, 2, 8)")):
        run(keys.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1), smd)
    with pytest.raises(ValueError, match=re.escape("Current number of keys (16) is less than")):
        run(keys[:, :, :16], q, smd)
    other = keys.clone()
    other[:, :, 19] += 1.0
    with pytest.raises(RuntimeError, match="belongs to another sequence"):
        run(other, q, smd)
    smd2 = {}
    run(keys, q, smd2)
    with pytest.raises(ValueError, match="for page_size 4, expected 8"):
        QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=4, page_size=8)).add_mask(
            keys,
            q,
            keys,
            None,
            1.0,
            0.0,
            smd2,
            Mask.create_empty_mask((1, 2, 1, 20), torch.float32, "cpu"),
            layer_idx=0,
        )


def test_quest_full_shortcut_and_zero_budget():
    gen = torch.Generator().manual_seed(14)
    q, k = torch.randn(1, 2, 1, 4, generator=gen), torch.randn(1, 2, 30, 4, generator=gen)
    empty = Mask.create_empty_mask((1, 2, 1, 30), torch.float32, "cpu")
    full = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=30, page_size=4))
    assert full.add_mask(k, q, k, None, 1.0, 0.0, {}, empty, layer_idx=0).is_full_mask()
    zero = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=0.01, page_size=4))  # int(0.3) = 0
    prev_rows = torch.tensor([[[[3]], [[5]]]], dtype=torch.int32), torch.ones(1, 2, 1, 1)
    prev = Mask.create_from_rows((1, 2, 1, 30), *prev_rows)
    out = zero.add_mask(k, q, k, None, 1.0, 0.0, {}, prev, layer_idx=0)
    assert torch.equal(out.get_dense_mask(), prev.get_dense_mask())
    idx, _ = torch.ops.sah.quest_topk_mask(
        q, *page_stats(k, 4), *empty_rows(1, 2, 1), None, 30, 4, 0, 16
    )
    assert idx.shape[-1] == 0
    # Small budgets still take three pages (upstream Quest).
    three = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=2, page_size=4))
    k32 = torch.randn(1, 2, 32, 4, generator=gen)
    empty32 = Mask.create_empty_mask((1, 2, 1, 32), torch.float32, "cpu")
    dense = three.add_mask(k32, q, k32, None, 1.0, 0.0, {}, empty32, layer_idx=0).get_dense_mask()
    assert (dense.sum(-1) == 12).all()


def test_quest_config_and_registry():
    cfg = QuestTopKMaskerConfig(heavy_size=0.05, page_size=128)
    assert cfg.label_bits == 16
    assert cfg.search_space["page_size"] == {"grid_search": [64, 128, 256]}
    for bits in (0, 17):
        with pytest.raises(
            ValueError, match=re.escape(f"label_bits must be in range (0, 16], got {bits}")
        ):
            QuestTopKMaskerConfig(heavy_size=0.05, page_size=128, label_bits=bits)
    with pytest.raises(ValueError, match="page_size must be greater than 0"):
        QuestTopKMaskerConfig(heavy_size=0.05, page_size=0)
    with pytest.raises(ValueError, match="heavy_size must be > 0"):
        QuestTopKMaskerConfig(heavy_size=0, page_size=4)
    masker = ResearchMasker.create_masker_from_config(cfg)
    assert type(masker) is QuestTopKMasker and masker.config == cfg
    assert isinstance(masker, TopKMasker) and issubclass(QuestTopKMaskerConfig, TopKMaskerConfig)
    assert (masker.page_size, masker.label_bits, masker.heavy_size) == (128, 16, 0.05)
    with pytest.raises(ValueError, match="Invalid config type"):
        QuestTopKMasker.create_from_config(TopKMaskerConfig(heavy_size=3))


# ----------------------------------------------------------------------------------------------
# Quest helpers (the reference's exact expectations)


def test_quest_utils_exact_outputs():
    keys = torch.tensor(
        [[[[1.0, 2, 3, 4], [2, 1, 4, 3], [3, 4, 1, 2], [4, 3, 2, 1], [5, 6, 7, 8], [6, 5, 8, 7]]]]
    )
    lo, hi = compute_page_min_max(keys, 4, 2)
    assert lo.shape == (1, 1, 2, 4)
    assert torch.equal(lo[0, 0], torch.tensor([[1.0, 1, 1, 1], [5, 5, 7, 7]]))
    assert torch.equal(hi[0, 0], torch.tensor([[4.0, 4, 4, 4], [6, 6, 8, 8]]))
    lo, hi = compute_page_min_max(keys, 2, 3)
    assert torch.equal(lo[0, 0], torch.tensor([[1.0, 1, 3, 3], [3, 3, 1, 1], [5, 5, 7, 7]]))

    q = torch.tensor([[[[1.0, -1.0, 0.0, float("inf")]]]])
    s = quest_page_scores(
        q,
        torch.tensor([[[[0.0, 0, 1, -float("inf")]]]]),
        torch.tensor([[[[1.0, 1, 2, float("inf")]]]]),
    )
    assert s.item() == float("inf")
    s = quest_page_scores(
        torch.tensor([[[[1e10, 1e-10]]]]),
        torch.tensor([[[[1e-10, 1e10]]]]),
        torch.tensor([[[[1e10, 1e20]]]]),
    )
    torch.testing.assert_close(s, torch.tensor([[[[1e20 + 1e10]]]]), rtol=1e-5, atol=0)
    assert quest_page_scores(
        torch.randn(1, 2, 2, 4), torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    ).shape == (2, 2, 2, 3)

    allowed = attention_mask_to_allowed_prob(torch.tensor([[[False, True, False, True]]]), 4)
    assert allowed.shape == (1, 1, 1, 4) and allowed.dtype == torch.float32
    assert allowed.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    fl = attention_mask_to_allowed_prob(torch.tensor([[[1.0, -2.0, 0.5], [-1.0, 3.0, -0.1]]]), 3)
    assert torch.equal(fl, torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]]))
    assert attention_mask_to_allowed_prob(torch.zeros(2, 1, 3, 9), 5).shape == (2, 1, 3, 5)

    valid = pages_valid(torch.tensor([[[[1.0, 0.0, 1.0, 0.0, 1.0]]]]), 2, 3)
    assert torch.equal(valid, torch.tensor([[[True, True, True]]]))
    valid = pages_valid(torch.tensor([[[[1.0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]]]]), 2, 3)
    assert torch.equal(valid, torch.tensor([[[True, False, True], [False, True, True]]]))
    # A head axis > 1 takes any head; a non-contiguous slice works.
    heads = torch.tensor([[[[1.0, 0, 0, 0]], [[0.0, 0, 0, 1]]]])
    assert torch.equal(pages_valid(heads, 2, 2), torch.tensor([[[True, True]]]))
    wide = torch.zeros(1, 1, 2, 8)
    wide[..., 5] = 1
    assert torch.equal(pages_valid(wide[..., :6], 3, 2), torch.tensor([[[False, True]] * 2]))

    pages = torch.tensor([[[[0, 1, 2], [1, 2, 3]], [[0, 2, 3], [1, 2, 4]]]])
    tokens = pages_to_token_mask(pages, 10, 2, torch.device("cpu"), torch.float32)
    assert tokens.shape == (1, 2, 2, 10) and tokens.dtype == torch.float32
    assert tokens[0, 0, 0].tolist() == [1.0] * 6 + [0.0] * 4
    assert tokens[0, 1, 1].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    empty = pages_to_token_mask(torch.zeros(2, 2, 2, 0), 10, 2, torch.device("cpu"), torch.float32)
    assert empty.shape == (2, 2, 2, 10) and (empty == 0).all()


def test_pseudo_quantize_matches_reference_and_ops():
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(2, 8, 16, 64, generator=gen)
    for bits in (1, 4, 8, 16):
        assert torch.equal(pseudo_quantize(x, bits), ref_quantize(x, bits))
    assert not torch.allclose(pseudo_quantize(x, 4), x)
    constant = torch.full((3, 5), 2.5)
    assert torch.equal(pseudo_quantize(constant, 4), constant)
    assert torch.equal(DoubleSparsityTopKMasker._pseudo_quantize(x, 4), pseudo_quantize(x, 4))


# ----------------------------------------------------------------------------------------------
# DoubleSparsity


@pytest.mark.parametrize(
    "sq,sk,heavy,group_factor,label_bits",
    [(1, 40, 5, 4, 16), (1, 57, 9, 2, 8), (3, 48, 6, 4, 4), (6, 30, 3, 1, 16), (2, 50, 1, 8, 16)],
)
@pytest.mark.parametrize("with_prev", [False, True])
def test_double_sparsity_op_matches_reference(sq, sk, heavy, group_factor, label_bits, with_prev):
    gen = torch.Generator().manual_seed(sq * 1000 + sk * 10 + heavy)
    b, h, hkv, d = 2, 4, 2, 16
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    channels = random_channels(gen, h, d)
    additive, allowed = causal_additive(b, sq, sk)
    prev = random_prev(b, h, sq, sk, gen, allowed) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = ops.dense_to_rows(prev) if with_prev else empty_rows(b, h, sq)
    idx, p = torch.ops.sah.double_sparsity_topk_mask(
        q, k, channels, pi, pp, additive, heavy, group_factor, label_bits
    )
    assert idx.shape[-1] == min(pi.shape[-1] + heavy, sk)
    want = ref_double_sparsity(q, k, additive, prev, channels, heavy, group_factor, label_bits)
    check_on_allowed(idx, p, want, allowed, sk)
    idx2, p2 = torch.ops.sah.double_sparsity_topk_mask(
        q, k, channels, pi, pp, None, heavy, group_factor, label_bits
    )
    assert torch.equal(idx2, idx) and torch.equal(p2, p)


def test_double_sparsity_masker_uses_each_layers_channels(tmp_path):
    gen = torch.Generator().manual_seed(31)
    b, h, hkv, sq, sk, d = 1, 4, 2, 2, 64, 16
    tables = {layer: random_channels(gen, h, d) for layer in (0, 1, 2)}
    entries = {f"model.layers.{i}.self_attn.qk_proj": t.tolist() for i, t in tables.items()}
    entries["model.layers.0.self_attn.k_proj"] = tables[2].tolist()
    path = channel_file(tmp_path, entries)
    cfg = DoubleSparsityTopKMaskerConfig(heavy_size=6, sorted_channel_file=path, group_factor=4)
    assert (cfg.group_factor, cfg.label_bits, cfg.channel_selection) == (4, 4, "qk_proj")
    masker = ResearchMasker.create_masker_from_config(cfg)
    assert type(masker) is DoubleSparsityTopKMasker and masker.config == cfg
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = causal_additive(b, sq, sk)
    empty = Mask.create_empty_mask((b, h, sq, sk), torch.float32, q.device)
    masks = []
    for layer in (1, 0, 2, 1):
        mask = masker.add_mask(k, q, k, additive, 1.0, 0.0, {}, empty, layer_idx=layer)
        want = ref_double_sparsity(
            q, k, additive, torch.zeros(b, h, sq, sk), tables[layer], 6, 4, 4
        )
        masks.append(check_on_allowed(*mask.get_rows(), want, allowed, sk))
    assert not torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[3])
    assert len(masker.sorted_channels) == 4


def test_double_sparsity_padding_selects_what_the_unpadded_sequence_would():
    gen = torch.Generator().manual_seed(32)
    h, d, sk, pad = 2, 8, 30, 5
    q = torch.randn(1, h, 1, d, generator=gen)
    k = torch.randn(1, h, sk, d, generator=gen)
    channels = random_channels(gen, h, d)
    kp = torch.cat([torch.randn(1, h, pad, d, generator=gen) * 50, k], dim=2)
    keep = torch.ones(2, sk + pad, dtype=torch.bool)
    keep[1, :pad] = False
    qq, kk = torch.cat([q, q]), torch.cat([kp, kp])
    masker_cfg = dict(group_factor=2, label_bits=16)
    pi, pp = empty_rows(2, h, 1)
    idx, _ = torch.ops.sah.double_sparsity_topk_mask(
        qq, kk, channels, pi, pp, keep[:, None, None, :], 4, **masker_cfg
    )
    ref_idx, _ = torch.ops.sah.double_sparsity_topk_mask(
        q, k, channels, *empty_rows(1, h, 1), None, 4, **masker_cfg
    )
    assert torch.equal(idx[1], ref_idx[0] + pad)
    assert (idx[0] < pad).any()  # the large unmasked keys win without padding


def test_double_sparsity_shortcuts_zero_budget_and_layer_idx(tmp_path):
    path = channel_file(tmp_path, {"model.layers.0.self_attn.qk_proj": [[0, 1, 2, 3]] * 2})
    gen = torch.Generator().manual_seed(33)
    q, k = torch.randn(1, 2, 4, 4, generator=gen), torch.randn(1, 2, 20, 4, generator=gen)
    empty = Mask.create_empty_mask((1, 2, 4, 20), torch.float32, "cpu")
    masker = DoubleSparsityTopKMasker(DoubleSparsityTopKMaskerConfig(16, path, group_factor=2))
    assert masker.add_mask(k, q, k, None, 1.0, 0.0, {}, empty, layer_idx=0).is_full_mask()
    with pytest.raises(ValueError, match="layer_idx must be provided in kwargs"):
        masker.add_mask(
            k, q, k, None, 1.0, 0.0, {}, Mask.create_full_mask((1, 2, 4, 20), torch.float32, "cpu")
        )
    zero = DoubleSparsityTopKMasker(DoubleSparsityTopKMaskerConfig(0.01, path, group_factor=2))
    out = zero.add_mask(k, q, k, None, 1.0, 0.0, {}, empty, layer_idx=0)
    assert out.get_rows()[0].shape[-1] == 0
    assert masker.sorted_channels is None and zero.sorted_channels is not None  # lazy loading
    lazy = DoubleSparsityTopKMasker(DoubleSparsityTopKMaskerConfig(16, path))
    assert lazy.sorted_channels is None
    lazy._ensure_sorted_channel_is_loaded(0, torch.device("cpu"))
    assert len(lazy.sorted_channels) == 1


def test_double_sparsity_config_and_loader_messages(tmp_path):
    path = channel_file(tmp_path, {"model.layers.0.self_attn.k_proj": [[0, 1, 2, 3, 4, 5, 6, 7]]})
    with pytest.raises(ValueError, match="group_factor must be > 0, got 0"):
        DoubleSparsityTopKMaskerConfig(heavy_size=256, sorted_channel_file=path, group_factor=0)
    with pytest.raises(ValueError, match=re.escape("label_bits must be in range (0, 16], got 17")):
        DoubleSparsityTopKMaskerConfig(heavy_size=256, sorted_channel_file=path, label_bits=17)
    missing = str(tmp_path / "missing.json")
    with pytest.raises(
        ValueError, match=re.escape(f"sorted_channel_file does not exist: {missing}")
    ):
        DoubleSparsityTopKMaskerConfig(heavy_size=256, sorted_channel_file=missing)
    assert DoubleSparsityTopKMaskerConfig(256, path).search_space == {}

    data = load_sorted_channels_from_file(path)
    assert data == {"model.layers.0.self_attn.k_proj": [[0, 1, 2, 3, 4, 5, 6, 7]]}
    assert torch.equal(
        extract_layer_channels(data, 0, "k_proj", torch.device("cpu")),
        torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]]),
    )
    assert extract_layer_channels(data, 0, "k_proj", torch.device("cpu")).dtype == torch.long
    bad = tmp_path / "bad.json"
    cases = [
        ("invalid json content", "Invalid JSON in channel file"),
        ("[1, 2, 3]", "Channel file must contain a JSON object"),
        ('{"a": "not_a_list"}', "Channel data for a must be a list"),
        ('{"a": [1]}', re.escape("Channel data for a[0] must be a list")),
        ('{"a": [["x", "y"]]}', re.escape("Channel indices for a[0] must be integers")),
    ]
    for text, msg in cases:
        bad.write_text(text)
        with pytest.raises(ValueError, match=msg):
            load_sorted_channels_from_file(str(bad))
    with pytest.raises(ValueError, match="Channel file not found: nonexistent_file.json"):
        load_sorted_channels_from_file("nonexistent_file.json")
    with pytest.raises(
        ValueError, match="No sorted channels found for model.layers.1.self_attn.k_proj"
    ):
        extract_layer_channels(data, 1, "k_proj", torch.device("cpu"))
    with pytest.raises(ValueError, match="Empty channel data for model.layers.0.self_attn.q_proj"):
        extract_layer_channels({"model.layers.0.self_attn.q_proj": []}, 0, "q_proj", "cpu")
    validate_channel_data({})
    validate_channel_data({"x": [[0, 1], [2, 3]], "y": [[4]]})
    with pytest.raises(ValueError, match="Channel data must be a dictionary"):
        validate_channel_data("not_a_dict")
    with pytest.raises(ValueError, match="Channel data for y must be a list"):
        validate_channel_data({"x": [[0]], "y": "invalid"})
    with pytest.raises(ValueError, match=re.escape("Channel indices for x[0] must be integers")):
        validate_channel_data({"x": [["not", "integers"]]})


# ----------------------------------------------------------------------------------------------
# Operator registration: opcheck, bad inputs, torch.compile


def test_opcheck():
    gen = torch.Generator().manual_seed(41)
    q = torch.randn(1, 4, 2, 8, generator=gen)
    k = torch.randn(1, 2, 21, 8, generator=gen)
    additive = causal_additive(1, 2, 21)[0]
    si, sp = torch.ops.sah.sink_mask(*empty_rows(1, 4, 2), additive, 21, 2)
    lo, hi = torch.zeros(1, 2, 7, 8), torch.zeros(1, 2, 7, 8)
    torch.library.opcheck(torch.ops.sah.quest_page_minmax_update, (k, lo, hi, 0, 4))
    torch.library.opcheck(torch.ops.sah.quest_page_minmax_update, (k, lo, hi, 13, 4))
    torch.library.opcheck(
        torch.ops.sah.quest_topk_mask, (q, lo, hi, si, sp, additive, 21, 4, 3, 16)
    )
    torch.library.opcheck(torch.ops.sah.quest_topk_mask, (q, lo, hi, si, sp, None, 21, 4, 2, 4))
    channels = random_channels(gen, 4, 8)
    torch.library.opcheck(
        torch.ops.sah.double_sparsity_topk_mask, (q, k, channels, si, sp, additive, 3, 2, 4)
    )


def test_bad_inputs():
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 10, 8)
    pi, pp = empty_rows(1, 4, 1)
    lo, hi = page_stats(k, 4)
    quest = torch.ops.sah.quest_topk_mask
    with pytest.raises(RuntimeError, match=re.escape("label_bits must be in [1, 16], got 0")):
        quest(q, lo, hi, pi, pp, None, 10, 4, 3, 0)
    with pytest.raises(RuntimeError, match="page_size must be >= 1, got 0"):
        quest(q, lo, hi, pi, pp, None, 10, 0, 3, 16)
    with pytest.raises(
        RuntimeError, match=r"page_min must be float32 of shape .* got Float \[1, 2, 3, 8\]"
    ):
        quest(q, lo, hi, pi, pp, None, 13, 4, 3, 16)
    with pytest.raises(RuntimeError, match="must be a multiple of the page statistics' kv heads 3"):
        quest(q, torch.zeros(1, 3, 3, 8), hi, pi, pp, None, 10, 4, 3, 16)
    with pytest.raises(RuntimeError, match="page_max must be contiguous"):
        quest(q, lo, torch.zeros(1, 2, 8, 3).transpose(2, 3), pi, pp, None, 10, 4, 3, 16)
    with pytest.raises(
        RuntimeError, match=re.escape("num_cached_keys must be in [0, k_len=10], got 11")
    ):
        torch.ops.sah.quest_page_minmax_update(k, lo, hi, 11, 4)
    with pytest.raises(RuntimeError, match="page_min must be float32"):
        torch.ops.sah.quest_page_minmax_update(k, lo.double(), hi, 0, 4)
    ds = torch.ops.sah.double_sparsity_topk_mask
    ch = torch.arange(8).expand(4, 8)
    with pytest.raises(
        RuntimeError, match=re.escape("channels must be int64 of shape (heads=4, >= 1)")
    ):
        ds(q, k, ch[:2], pi, pp, None, 2, 2, 4)
    with pytest.raises(
        RuntimeError, match=re.escape("channels must lie in [0, head_dim=8), got values in [1, 8]")
    ):
        ds(q, k, ch + 1, pi, pp, None, 2, 2, 4)
    with pytest.raises(
        RuntimeError, match=re.escape("group_factor must be in [1, head_dim=8], got 9")
    ):
        ds(q, k, ch, pi, pp, None, 2, 9, 4)
    with pytest.raises(RuntimeError, match="size must be >= 0, got -1"):
        ds(q, k, ch, pi, pp, None, -1, 2, 4)
    bad_prev = torch.tensor([3, 1], dtype=torch.int32).expand(1, 4, 1, 2)
    with pytest.raises(RuntimeError, match="strictly ascending"):
        ds(q, k, ch, bad_prev, torch.ones(1, 4, 1, 2), None, 2, 2, 4)


def test_compile_sink_local_quest_chain_with_attention():
    """Sink + local + Quest + sparse attention compile into one graph with a dynamic key length
    that serves every step of a decode loop, updating the Quest state (in sparse_meta_data, an
    argument; created by an eager prefill call) in place; outputs and state match eager."""
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [
                SinkMaskerConfig(2),
                LocalMaskerConfig(4),
                QuestTopKMaskerConfig(heavy_size=0.25, page_size=4, label_bits=8),
            ]
        )
    )

    def step(q, k, v, mask, smd):
        return attention.custom_attention(None, q, k, v, mask, 0.3, 0.0, smd, layer_idx=1)[0]

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(42)
    k, v = torch.randn(1, 2, 22, 8, generator=gen), torch.randn(1, 2, 22, 8, generator=gen)
    smd_compiled, smd_eager = {}, {}
    q, mask = torch.randn(1, 4, 1, 8, generator=gen), torch.zeros(1, 1, 1, 22)
    for smd in (smd_compiled, smd_eager):
        step(q, k, v, mask, smd)
    for _ in range(5):  # 23 .. 27 keys: page 5 fills up, page 6 starts
        q = torch.randn(1, 4, 1, 8, generator=gen)
        k = torch.cat([k, torch.randn(1, 2, 1, 8, generator=gen)], dim=2)
        v = torch.cat([v, torch.randn(1, 2, 1, 8, generator=gen)], dim=2)
        mask = torch.zeros(1, 1, 1, k.shape[2])
        got = compiled(q, k, v, mask, smd_compiled)
        torch.testing.assert_close(got, step(q, k, v, mask, smd_eager))
    ours, theirs = smd_compiled["quest"][1], smd_eager["quest"][1]
    assert ours.num_keys == theirs.num_keys == 27
    assert torch.equal(ours.page_min[:, :, :7], theirs.page_min[:, :, :7])
    assert torch.equal(ours.page_max[:, :, :7], theirs.page_max[:, :, :7])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ----------------------------------------------------------------------------------------------
# CUDA kernels: the same indices, probabilities and page statistics as the CPU kernels, bit for
# bit (the CUDA kernels run the CPU's float operations in the CPU's order)


def cuda_test(fn):
    """A test of the CUDA kernels: the `gpu` mark, skipped without a CUDA device."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(skip(fn))


def strided(x):
    """x's values in a non-contiguous layout (dimensions 1 and 2 swapped in memory)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def to_cuda(x):
    """x on CUDA with its strides kept (None and non-tensors pass through)."""
    return x.cuda() if isinstance(x, torch.Tensor) else x


def assert_same_bits(want, got):
    """Exact equality, NaN payloads and zero signs included (got may live on CUDA)."""
    got = got.cpu()
    assert want.dtype == got.dtype and want.shape == got.shape
    bits = {torch.float32: torch.int32, torch.int32: torch.int32}[want.dtype]
    assert torch.equal(want.view(bits), got.view(bits))


def assert_same_rows(want, got):
    assert_same_bits(want[0], got[0])
    assert_same_bits(want[1], got[1])


def run_on_both(op, *args):
    """op's outputs on the CPU arguments and on their CUDA copies."""
    return op(*args), op(*[to_cuda(a) for a in args])


def cuda_case_mask(kind, b, h, sq, sk, gen, dtype=torch.float32):
    """(attention mask over sk + 5 columns or None, allowed keys (b|1, h|1, sq, sk)): an HF
    additive mask with causal structure and per-batch left padding (in `dtype`), its bool form,
    a random per-head bool mask, an additive mask with finite negative values on allowed keys, or
    a static-cache mask (keys from sk - 13 not written yet)."""
    n = sk + 5
    causal = torch.arange(n)[None, :] <= (sk - sq + torch.arange(sq))[:, None]
    pad = torch.randint(0, max(1, sk // 3), (b,), generator=gen).tolist()
    allowed = causal.expand(b, 1, sq, n).clone()
    for i, p in enumerate(pad):
        allowed[i, ..., :p] = False
    if kind == "none":
        return None, causal[:, :sk]
    if kind == "bool":
        return allowed, allowed[..., :sk]
    if kind == "bool_heads":
        allowed = (torch.rand(b, h, sq, n, generator=gen) < 0.6) & causal
        return allowed, allowed[..., :sk]
    if kind == "static":
        valid = sk - 13
        allowed = torch.arange(n)[None, :] <= (valid - sq + torch.arange(sq))[:, None]
        allowed = allowed.expand(1, 1, sq, n)
    values = torch.zeros(allowed.shape)
    if kind == "values":
        values = -3 * torch.rand(allowed.shape, generator=gen)
    mask = values.to(dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask, allowed[..., :sk]


def cuda_case_prev(kind, b, h, sq, sk, gen, mask, allowed):
    """Previous rows: none, random (p = 1 or 0.3 on allowed keys) or sink + local rows."""
    if kind == "none":
        return empty_rows(b, h, sq)
    if kind == "random":
        return ops.dense_to_rows(random_prev(b, h, sq, sk, gen, allowed))
    si, sp = torch.ops.sah.sink_mask(*empty_rows(b, h, sq), mask, sk, 3)
    return torch.ops.sah.local_mask(si, sp, mask, sk, 5)


# (batch, heads, kv_heads, q_len, k_len, head_dim, page_size, pages, label_bits, mask, dtype)
QUEST_CUDA_CASES = [
    (2, 8, 2, 1, 300, 64, 16, 5, 16, "none", torch.float32),  # decode, GQA
    (2, 8, 2, 1, 300, 64, 16, 5, 16, "additive", torch.bfloat16),  # padded HF mask
    (1, 4, 4, 1, 129, 128, 1, 40, 16, "bool", torch.float16),  # page size 1
    (3, 6, 2, 5, 77, 40, 8, 3, 4, "bool_heads", torch.float32),  # head_dim % 32 != 0
    (2, 4, 1, 9, 50, 8, 7, 100, 1, "values", torch.float16),  # more pages than there are
    (2, 4, 2, 3, 60, 16, 4, 0, 16, "additive", torch.float32),  # zero budget
    (1, 32, 8, 1, 5000, 128, 16, 20, 16, "additive", torch.bfloat16),  # several page tiles
    (2, 4, 2, 20, 40, 16, 5, 4, 8, "none", torch.float64),  # several query-row tiles
    (2, 4, 2, 6, 90, 32, 4, 6, 16, "static", torch.float32),  # static cache
    (1, 2, 1, 4, 3, 8, 2, 3, 16, "none", torch.float32),  # q_len > k_len: early rows see nothing
]


@cuda_test
@pytest.mark.parametrize("case", QUEST_CUDA_CASES)
@pytest.mark.parametrize("prev", ["none", "random", "sink_local"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_quest_cuda_matches_cpu(case, prev, layout):
    b, h, hkv, sq, sk, d, ps, pages, bits, mask_kind, dtype = case
    gen = torch.Generator().manual_seed(sq * 1000 + sk * 10 + ps)
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    mask, allowed = cuda_case_mask(mask_kind, b, h, sq, sk, gen, dtype)
    pi, pp = cuda_case_prev(prev, b, h, sq, sk, gen, mask, allowed)
    lo, hi = page_stats(k, ps, capacity=-(-sk // ps) + 3)  # NaN past the pages in use
    if layout == "strided":
        q, pi, pp = strided(q), strided(pi), strided(pp)
        mask = None if mask is None else mask[..., : sk + 2]
    want, got = run_on_both(
        torch.ops.sah.quest_topk_mask, q, lo, hi, pi, pp, mask, sk, ps, pages, bits
    )
    assert_same_rows(want, got)


@cuda_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("page_size", [1, 5, 16])
def test_quest_page_stats_cuda_match_cpu_over_decode_steps(dtype, page_size):
    """Incremental updates (single steps and chunks, from a non-contiguous key cache with signed
    zeros) give the CPU's statistics, the same as recomputing from scratch, and never touch the
    complete pages before the cached partial one."""
    gen = torch.Generator().manual_seed(51 + page_size)
    b, hkv, d, total = 2, 3, 40, 140
    cache = torch.randn(b, hkv, total, d, generator=gen)
    cache[:, :, ::7] = 0.0
    cache[:, :, 3::11, ::2] = -0.0
    cache = cache.to(dtype)
    cache_cuda = cache.cuda()
    capacity = -(-total // page_size) + 2
    state = [torch.full((b, hkv, capacity, d), float("nan")) for _ in range(2)]
    state_cuda = [s.cuda() for s in state]
    n = 0
    for step in [13, 1, 1, 1, page_size, 7, 1, 30, 1, 2, 17, 1, 40, 1, 1, 1, 1, 1, 1, 1]:
        new = n + step
        assert new <= total
        done = n // page_size  # complete pages before the partial one: never rewritten
        before = state_cuda[0][:, :, :done].clone()
        torch.ops.sah.quest_page_minmax_update(cache[:, :, :new], *state, n, page_size)
        torch.ops.sah.quest_page_minmax_update(cache_cuda[:, :, :new], *state_cuda, n, page_size)
        assert_same_bits(state[0], state_cuda[0])
        assert_same_bits(state[1], state_cuda[1])
        assert_same_bits(before.cpu(), state_cuda[0][:, :, :done])
        fresh = page_stats(cache_cuda[:, :, :new], page_size)
        pages = -(-new // page_size)
        assert_same_bits(fresh[0].cpu(), state_cuda[0][:, :, :pages])
        assert_same_bits(fresh[1].cpu(), state_cuda[1][:, :, :pages])
        n = new


# (batch, heads, kv_heads, q_len, k_len, head_dim, k, group_factor, label_bits, mask, dtype)
DS_CUDA_CASES = [
    (2, 8, 2, 1, 300, 64, 20, 8, 4, "none", torch.float32),  # decode, GQA
    (2, 8, 2, 1, 300, 64, 20, 8, 4, "additive", torch.bfloat16),  # padded HF mask
    (1, 4, 4, 1, 129, 128, 7, 16, 16, "bool", torch.float16),
    (3, 6, 2, 5, 77, 40, 9, 4, 8, "bool_heads", torch.float32),
    (2, 4, 1, 9, 50, 8, 100, 1, 1, "values", torch.float16),  # budget above the allowed keys
    (2, 4, 2, 3, 60, 16, 0, 2, 4, "additive", torch.float32),  # zero budget
    (1, 32, 8, 1, 3000, 128, 100, 16, 4, "additive", torch.bfloat16),
    (2, 4, 2, 20, 40, 16, 5, 2, 16, "none", torch.float64),  # several query-row tiles
    (2, 4, 2, 6, 90, 32, 10, 4, 4, "static", torch.float32),  # static cache
    (1, 2, 1, 4, 3, 8, 2, 2, 16, "none", torch.float32),  # q_len > k_len
]


@cuda_test
@pytest.mark.parametrize("case", DS_CUDA_CASES)
@pytest.mark.parametrize("prev", ["none", "random", "sink_local"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_double_sparsity_cuda_matches_cpu(case, prev, layout):
    b, h, hkv, sq, sk, d, k, gf, bits, mask_kind, dtype = case
    gen = torch.Generator().manual_seed(sq * 1000 + sk * 10 + k)
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    keys = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    channels = random_channels(gen, h, d)
    mask, allowed = cuda_case_mask(mask_kind, b, h, sq, sk, gen, dtype)
    pi, pp = cuda_case_prev(prev, b, h, sq, sk, gen, mask, allowed)
    if layout == "strided":
        q, keys, pi, pp = strided(q), strided(keys), strided(pi), strided(pp)
        channels = channels[:, :3].t().contiguous().t()  # fewer channels than d // gf, strided
        mask = None if mask is None else mask[..., : sk + 2]
    want, got = run_on_both(
        torch.ops.sah.double_sparsity_topk_mask, q, keys, channels, pi, pp, mask, k, gf, bits
    )
    assert_same_rows(want, got)


@cuda_test
def test_cuda_ties_prefer_lower_index():
    q = torch.ones(1, 2, 1, 8)
    keys = torch.ones(1, 1, 50, 8)
    keys[0, 0, 40:44] = 2.0
    channels = torch.arange(8).expand(2, 8)
    pi, pp = empty_rows(1, 2, 1)
    want, got = run_on_both(
        torch.ops.sah.double_sparsity_topk_mask, q, keys, channels, pi, pp, None, 7, 2, 16
    )
    assert_same_rows(want, got)
    assert got[0][0, 0, 0].tolist() == [0, 1, 2, 40, 41, 42, 43]
    lo, hi = page_stats(torch.ones(1, 1, 50, 8), 4)  # every page ties
    want, got = run_on_both(torch.ops.sah.quest_topk_mask, q, lo, hi, pi, pp, None, 50, 4, 3, 16)
    assert_same_rows(want, got)
    assert got[0][0, 1, 0].tolist() == list(range(12))


@cuda_test
def test_cuda_decode_ops_do_not_sync_with_the_host():
    gen = torch.Generator().manual_seed(52)
    b, h, hkv, d, sk, ps = 2, 8, 2, 64, 1000, 16
    q = torch.randn(b, h, 1, d, generator=gen).cuda()
    keys = torch.randn(b, hkv, sk, d, generator=gen).cuda()
    mask = padded_causal(b, 1, sk, pad=[0, 17])[0].cuda()
    lo, hi = page_stats(keys[:, :, :-1], ps, capacity=-(-sk // ps))
    channels = random_channels(gen, h, d).cuda()
    pi, pp = empty_rows(b, h, 1, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.sah.quest_page_minmax_update(keys, lo, hi, sk - 1, ps)
        torch.ops.sah.quest_topk_mask(q, lo, hi, pi, pp, mask, sk, ps, 8, 16)
        torch.ops.sah.quest_topk_mask(q, lo, hi, pi, pp, mask, sk, ps, 8, 4)
        torch.ops.sah.double_sparsity_topk_mask(q, keys, channels, pi, pp, mask, 64, 16, 4)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@cuda_test
def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(53)
    q = torch.randn(1, 4, 2, 8, generator=gen).cuda()
    k = torch.randn(1, 2, 21, 8, generator=gen).cuda()
    additive = causal_additive(1, 2, 21)[0].cuda()
    si, sp = torch.ops.sah.sink_mask(*empty_rows(1, 4, 2, "cuda"), additive, 21, 2)
    lo, hi = torch.zeros(1, 2, 7, 8, device="cuda"), torch.zeros(1, 2, 7, 8, device="cuda")
    torch.library.opcheck(torch.ops.sah.quest_page_minmax_update, (k, lo, hi, 0, 4))
    torch.library.opcheck(torch.ops.sah.quest_page_minmax_update, (k, lo, hi, 13, 4))
    torch.library.opcheck(
        torch.ops.sah.quest_topk_mask, (q, lo, hi, si, sp, additive, 21, 4, 3, 16)
    )
    torch.library.opcheck(torch.ops.sah.quest_topk_mask, (q, lo, hi, si, sp, None, 21, 4, 2, 4))
    channels = random_channels(gen, 4, 8).cuda()
    torch.library.opcheck(
        torch.ops.sah.double_sparsity_topk_mask, (q, k, channels, si, sp, additive, 3, 2, 4)
    )


@cuda_test
def test_compile_cuda_matches_eager():
    """The three ops in one CUDA graph (fullgraph, in-place page statistics) equal eager."""

    def step(q, keys, lo, hi, channels, mask, cached):
        torch.ops.sah.quest_page_minmax_update(keys, lo, hi, cached, 4)
        lead = (q.shape[0], q.shape[1], q.shape[2], 0)
        pi = torch.empty(lead, dtype=torch.int32, device=q.device)
        pp = torch.empty(lead, dtype=torch.float32, device=q.device)
        qi, qp = torch.ops.sah.quest_topk_mask(q, lo, hi, pi, pp, mask, keys.shape[2], 4, 3, 8)
        return torch.ops.sah.double_sparsity_topk_mask(q, keys, channels, qi, qp, mask, 5, 2, 4)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    gen = torch.Generator().manual_seed(54)
    q = torch.randn(2, 4, 1, 16, generator=gen).cuda()
    keys = torch.randn(2, 2, 45, 16, generator=gen).cuda()
    channels = random_channels(gen, 4, 16).cuda()
    mask = padded_causal(2, 1, 45, pad=[0, 6])[0].cuda()
    eager_state = list(page_stats(keys[:, :, :44], 4, capacity=16))
    compiled_state = [s.clone() for s in eager_state]
    want = step(q, keys, *eager_state, channels, mask, 44)
    got = compiled(q, keys, *compiled_state, channels, mask, 44)
    assert_same_rows([t.cpu() for t in want], got)
    assert_same_bits(eager_state[0].cpu(), compiled_state[0])
    assert_same_bits(eager_state[1].cpu(), compiled_state[1])


@cuda_test
def test_cuda_size_limits_name_the_argument():
    quest = torch.ops.sah.quest_topk_mask
    q = torch.randn(1, 65536, 1, 1, device="cuda")
    stats = torch.zeros(1, 65536, 1, 1, device="cuda")
    pi, pp = empty_rows(1, 65536, 1, "cuda")
    with pytest.raises(
        RuntimeError,
        match=re.escape("batch * kv_heads of page_min must be at most 65535 on CUDA, got 65536"),
    ):
        quest(q, stats, stats, pi, pp, None, 1, 1, 1, 16)
    ds = torch.ops.sah.double_sparsity_topk_mask
    pi, pp = empty_rows(1, 1, 1, "cuda")
    q = torch.randn(1, 1, 1, 2048, device="cuda")
    keys = torch.randn(1, 1, 4, 2048, device="cuda")
    scored = "min(channels.size(1), head_dim / group_factor) must be at most 1024 on CUDA, got 2048"
    with pytest.raises(RuntimeError, match=re.escape(scored)):
        ds(q, keys, torch.arange(2048, device="cuda")[None], pi, pp, None, 2, 1, 16)
    n = 65535 * 256 + 1
    q = torch.randn(1, 1, 1, 1, device="cuda", dtype=torch.float16)
    keys = torch.zeros(1, 1, n, 1, device="cuda", dtype=torch.float16)
    with pytest.raises(
        RuntimeError, match=re.escape(f"keys.size(2) (k_len) must be at most {n - 1} on CUDA")
    ):
        ds(q, keys, torch.zeros(1, 1, dtype=torch.long, device="cuda"), pi, pp, None, 1, 1, 16)


@cuda_test
@pytest.mark.parametrize("heavy", [0.3, 20])
def test_maskers_and_efficient_double_sparsity_cuda_match_cpu(tmp_path, heavy):
    """QuestTopKMasker over a decode loop (cached page statistics), DoubleSparsityTopKMasker and
    the efficient DoubleSparsity path give the CPU's masks (and states) on CUDA."""
    gen = torch.Generator().manual_seed(55)
    b, h, hkv, d, ps = 2, 8, 2, 32, 4
    keys = torch.randn(b, hkv, 60, d, generator=gen, dtype=torch.bfloat16)
    table = {"model.layers.3.self_attn.qk_proj": random_channels(gen, h, d).tolist()}
    path = channel_file(tmp_path, table)
    quest = QuestTopKMasker(QuestTopKMaskerConfig(heavy_size=heavy, page_size=ps, label_bits=6))
    ds = DoubleSparsityTopKMasker(
        DoubleSparsityTopKMaskerConfig(heavy_size=heavy, sorted_channel_file=path, group_factor=4)
    )
    efficient = EfficientAttention.create_from_config(DoubleSparsityConfig(heavy, 2, 3, path, 4, 4))
    smd = {"cpu": {}, "cuda": {}}
    for step in [0, 1, 1, 1, 5, 1, 1]:
        if step:
            keys = torch.cat([keys, torch.randn(b, hkv, step, d, generator=gen).bfloat16()], 2)
        sk = keys.shape[2]
        q = torch.randn(b, h, 1, d, generator=gen, dtype=torch.bfloat16)
        values = torch.randn(b, hkv, sk, d, generator=gen, dtype=torch.bfloat16)
        mask = padded_causal(b, 1, sk, pad=[0, 9])[0].bfloat16()
        rows = {}
        for device in ("cpu", "cuda"):
            qd, kd, vd, md = (x.to(device) for x in (q, keys, values, mask))
            prev_rows = torch.ops.sah.sink_mask(*empty_rows(b, h, 1, device), md, sk, 2)
            prev = Mask.create_from_rows((b, h, 1, sk), *prev_rows)
            got = quest.add_mask(kd, qd, vd, md, 1.0, 0.0, smd[device], prev, layer_idx=3)
            got_ds = ds.add_mask(kd, qd, vd, md, 1.0, 0.0, {}, prev, layer_idx=3)
            out, _ = efficient.custom_attention(
                None, qd, kd, vd, md, 0.2, 0.0, sparse_meta_data={}, layer_idx=3
            )
            rows[device] = (got.get_rows(), got_ds.get_rows(), out)
        assert_same_rows(rows["cpu"][0], rows["cuda"][0])
        assert_same_rows(rows["cpu"][1], rows["cuda"][1])
        torch.testing.assert_close(rows["cuda"][2].cpu(), rows["cpu"][2], atol=2e-2, rtol=2e-2)
        cpu_state, cuda_state = smd["cpu"]["quest"][3], smd["cuda"]["quest"][3]
        assert cpu_state.num_keys == cuda_state.num_keys == sk
        pages = -(-sk // ps)
        assert_same_bits(cpu_state.page_min[:, :, :pages], cuda_state.page_min[:, :, :pages])
        assert_same_bits(cpu_state.page_max[:, :, :pages], cuda_state.page_max[:, :, :pages])
