"""Tests of sparse_attention_hub.sparse_attention.utils.mask_attention_utils and kv_utils against
a plain-PyTorch float64 reference of masked attention."""

import math

import pytest
import torch
from torch import nn

from sparse_attention_hub.sparse_attention.utils import kv_utils
from sparse_attention_hub.sparse_attention.utils.mask import Mask
from sparse_attention_hub.sparse_attention.utils.mask_attention_utils import (
    _compute_masked_exp_attention_weights,
    apply_inv_mask_sum,
    create_sampling_mask_with_per_head_budget,
    get_attention_denominator,
    get_attention_numerator,
    get_masked_attention_output,
    get_true_attention_output,
)

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Reference: masked attention in float64. Key j of row i takes part when p_ij > 0 and the
# attention mask allows it, and is weighted by 1/p_ij; a row with no such key gives zeros.
def allowed_and_bias(attention_mask, shape):
    """(allowed bool, additive float64 bias) of an HF-style mask sliced to the keys."""
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.float64)
    m = attention_mask[..., : shape[-1]].cpu()
    if m.dtype == torch.bool:
        return m.expand(shape), torch.zeros(shape, dtype=torch.float64)
    forbidden = (m == torch.finfo(m.dtype).min) | (m == NEG_INF)
    return (~forbidden).expand(shape), m.double().masked_fill(forbidden, 0.0).expand(shape)


def reference_attention(q, k, v, probs, scale, attention_mask=None):
    """Returns (out (b, sq, h, d), weights (b, h, sq, sk)) in float64; `probs` None = all ones."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = scale * q @ k.transpose(-1, -2)
    p = torch.ones_like(s) if probs is None else probs.double().cpu()
    allowed, bias = allowed_and_bias(attention_mask, s.shape)
    keep = (p > 0) & allowed
    logits = torch.where(keep, s + bias - torch.log(p.clamp_min(1e-300)), NEG_INF)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    w = torch.exp(logits - lse).nan_to_num(0.0)
    return (w @ v).transpose(1, 2), w


def reference_exp_weights(q, k, probs, scale, attention_mask=None):
    """exp(s - max over all allowed keys) / p on included keys (the reference's E-hat)."""
    q, k = q.double().cpu(), k.double().cpu()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = scale * q @ k.transpose(-1, -2)
    allowed, bias = allowed_and_bias(attention_mask, s.shape)
    s = torch.where(allowed, s + bias, NEG_INF)
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    if probs is None:
        return e
    p = probs.double().cpu()
    return torch.where(p > 0, e / p.clamp_min(1e-300), 0.0)


def causal_mask(b, sq, sk, kind, extra=0, dtype=torch.float32):
    """HF-style (b, 1, sq, sk + extra) mask: query i sits at position sk - sq + i; the extra
    columns (beyond the keys) are forbidden, to check the slice."""
    pos = torch.arange(sk + extra)
    allowed = pos[None, :] <= (sk - sq + torch.arange(sq))[:, None]
    allowed = allowed.expand(b, 1, sq, sk + extra)
    if kind == "bool":
        return allowed.clone()
    fill = torch.finfo(dtype).min if kind == "additive" else NEG_INF
    zeros = torch.zeros(allowed.shape, dtype=dtype)
    return zeros.masked_fill(~allowed, fill)


def random_probs(shape, gen, density=0.5):
    keep = torch.rand(shape, generator=gen) < density
    p = torch.rand(shape, generator=gen) * 0.9 + 0.1
    p = torch.where(torch.rand(shape, generator=gen) < 0.33, torch.ones(shape), p)
    return torch.where(keep, p, torch.zeros(shape))


def rows_of(dense):
    """Row form (ascending, -1 padded, cap = most keys in a row) of dense probabilities."""
    n = dense.shape[-1]
    flat = dense.reshape(-1, n)
    cap = max(1, int((flat > 0).sum(dim=1).max()))
    idx = torch.full((flat.shape[0], cap), -1, dtype=torch.int32)
    probs = torch.zeros(flat.shape[0], cap)
    for r in range(flat.shape[0]):
        cols = flat[r].nonzero().flatten()
        idx[r, : len(cols)] = cols.int()
        probs[r, : len(cols)] = flat[r, cols]
    lead = tuple(dense.shape[:-1])
    return idx.reshape(*lead, cap), probs.reshape(*lead, cap)


def make_mask(state, probs, device, dtype=torch.float32):
    """A mask of `state` holding `probs`; returns (mask, reference probs or None for all ones)."""
    shape = tuple(probs.shape)
    dev = torch.device(device)
    if state == "full":
        return Mask.create_full_mask(shape, dtype, dev), None
    if state == "empty":
        return Mask.create_empty_mask(shape, dtype, dev), None
    if state == "dense":
        return Mask.create_mask_from_dense_mask(shape, probs.to(device), dtype), probs
    if state == "index":
        flat = probs.reshape(-1)
        indices = flat.nonzero().flatten()
        counts = (probs.reshape(-1, shape[-1]) > 0).sum(dim=1)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        mask = Mask.create_mask_from_indices(
            shape, indices.to(device), ptr.to(device), flat[indices].to(device), dtype
        )
        return mask, probs
    idx, row_probs = rows_of(probs)
    return Mask.create_from_rows(shape, idx.to(device), row_probs.to(device), dtype), probs


def qkv(b, h, hkv, sq, sk, d, gen, dtype, device):
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype).to(device)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype).to(device)
    v = torch.randn(b, hkv, sk, d, generator=gen).to(dtype).to(device)
    return q, k, v


def eval_module():
    return nn.Module().eval()


def train_module():
    return nn.Module().train()


STATES = ["full", "empty", "dense", "index", "rows"]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


# ----------------------------------------------------------------------------------------------
# get_masked_attention_output
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("lens", [(1, 9, None), (5, 12, "additive"), (4, 4, "bool")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_attention_matches_reference(state, heads, lens, dtype, device):
    gen = torch.Generator().manual_seed(1)
    (h, hkv), (sq, sk, kind), b, d = heads, lens, 2, 8
    q, k, v = qkv(b, h, hkv, sq, sk, d, gen, dtype, device)
    probs = random_probs((b, h, sq, sk), gen)
    mask, ref_probs = make_mask(state, probs, device)
    am = None if kind is None else causal_mask(b, sq, sk, kind).to(device)
    scale = 1.0 / math.sqrt(d)
    out, weights = get_masked_attention_output(
        eval_module(), q, k, v, am, scale, 0.0, mask, return_attention_weights=True
    )
    ref_out, ref_w = reference_attention(q, k, v, ref_probs, scale, am)
    assert out.shape == (b, sq, h, d) and out.is_contiguous() and out.dtype == dtype
    assert weights.shape == (b, h, sq, sk) and weights.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(out.cpu().double(), ref_out, **TOL[dtype])
    torch.testing.assert_close(weights.cpu().double(), ref_w, **TOL[dtype])
    has_key = ref_w.sum(dim=-1) > 0
    sums = weights.float().sum(dim=-1).cpu()
    torch.testing.assert_close(sums[has_key], torch.ones(int(has_key.sum())), **TOL[dtype])
    assert torch.all(sums[~has_key] == 0)


def test_output_without_weights_is_a_tensor(device):
    gen = torch.Generator().manual_seed(2)
    q, k, v = qkv(1, 2, 1, 3, 7, 8, gen, torch.float32, device)
    mask, _ = make_mask("rows", random_probs((1, 2, 3, 7), gen), device)
    out = get_masked_attention_output(None, q, k, v, None, 0.3, 0.0, mask)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 2, 8)
    pair = get_masked_attention_output(
        None, q, k, v, None, 0.3, 0.0, mask, return_attention_weights=True
    )
    torch.testing.assert_close(out, pair[0], rtol=0, atol=0)


@pytest.mark.parametrize("state", ["dense", "index", "rows"])
def test_row_with_no_key_gives_zero_not_nan(state, device):
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv(1, 2, 2, 3, 6, 4, gen, torch.float32, device)
    probs = random_probs((1, 2, 3, 6), gen, density=0.7)
    probs[0, 1, 2] = 0.0  # a row that selects nothing
    probs[0, 0, 0] = 0.0
    probs[0, 0, 0, 5] = 0.5  # only a key the causal mask forbids
    am = causal_mask(1, 3, 6, "additive").to(device)
    mask, _ = make_mask(state, probs, device)
    out, weights = get_masked_attention_output(
        None, q, k, v, am, 0.5, 0.0, mask, return_attention_weights=True
    )
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert torch.all(out[0, 2, 1] == 0) and torch.all(weights[0, 1, 2] == 0)
    assert torch.all(out[0, 0, 0] == 0) and torch.all(weights[0, 0, 0] == 0)
    ref_out, _ = reference_attention(q, k, v, probs, 0.5, am)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=1e-5)


def test_rows_and_dense_masks_agree(device):
    gen = torch.Generator().manual_seed(4)
    q, k, v = qkv(2, 4, 2, 3, 10, 8, gen, torch.float32, device)
    probs = random_probs((2, 4, 3, 10), gen)
    outs = [
        get_masked_attention_output(None, q, k, v, None, 0.3, 0.0, make_mask(s, probs, device)[0])
        for s in ("rows", "dense", "index")
    ]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outs[0], outs[2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("state", ["empty", "rows"])
def test_attention_mask_kinds_and_slicing(state, device):
    gen = torch.Generator().manual_seed(5)
    b, h, sq, sk = 2, 2, 3, 8
    q, k, v = qkv(b, h, h, sq, sk, 8, gen, torch.float32, device)
    mask, _ = make_mask(state, random_probs((b, h, sq, sk), gen), device)
    outs = [
        get_masked_attention_output(
            None, q, k, v, causal_mask(b, sq, sk, kind, extra=extra).to(device), 0.4, 0.0, mask
        )
        for kind in ("additive", "-inf", "bool")
        for extra in (0, 5)
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-6, rtol=1e-6)


def test_masked_attention_errors():
    q = torch.randn(1, 3, 2, 4)
    k = torch.randn(1, 2, 5, 4)
    mask = Mask.create_empty_mask((1, 3, 2, 5), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"num_attention_heads \(3\) must be divisible by"):
        get_masked_attention_output(None, q, k, k, None, 1.0, 0.0, mask)
    k = torch.randn(1, 1, 5, 4)
    wrong = Mask.create_empty_mask((1, 3, 2, 6), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"sparse_attention_mask.shape must be \(1, 3, 2, 5\)"):
        get_masked_attention_output(None, q, k, k, None, 1.0, 0.0, wrong)


# ----------------------------------------------------------------------------------------------
# Dropout (D18): in training, keys drop out of each row and the rest renormalise.
@pytest.mark.parametrize("state", ["full", "empty", "dense", "rows"])
def test_dropout_drops_keys_and_renormalises(state, device):
    gen = torch.Generator().manual_seed(6)
    b, h, hkv, sq, sk, d = 2, 4, 2, 8, 16, 8
    q, k, v = qkv(b, h, hkv, sq, sk, d, gen, torch.float32, device)
    probs = random_probs((b, h, sq, sk), gen, density=0.8)
    mask, ref_probs = make_mask(state, probs, device)
    torch.manual_seed(0)
    out, weights = get_masked_attention_output(
        train_module(), q, k, v, None, 0.3, 0.4, mask, return_attention_weights=True
    )
    included = torch.ones(b, h, sq, sk, dtype=torch.bool) if ref_probs is None else ref_probs > 0
    kept = weights.cpu() > 0
    assert not (kept & ~included).any()
    dropped_fraction = float((included & ~kept).sum()) / float(included.sum())
    assert 0.25 < dropped_fraction < 0.55
    base = torch.ones(b, h, sq, sk) if ref_probs is None else ref_probs
    ref_out, ref_w = reference_attention(q, k, v, base * kept, 0.3)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.cpu().double(), ref_w, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    again = get_masked_attention_output(train_module(), q, k, v, None, 0.3, 0.4, mask)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


@pytest.mark.parametrize("module", [None, "eval"])
def test_no_dropout_outside_training(module, device):
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(1, 2, 2, 4, 9, 8, gen, torch.float32, device)
    probs = random_probs((1, 2, 4, 9), gen)
    mask, _ = make_mask("rows", probs, device)
    module = eval_module() if module == "eval" else None
    out = get_masked_attention_output(module, q, k, v, None, 0.3, 0.9, mask)
    ref_out, _ = reference_attention(q, k, v, probs, 0.3)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Reference-API helpers
@pytest.mark.parametrize("state", ["empty", "full", "dense", "rows"])
@pytest.mark.parametrize("kind", [None, "additive"])
def test_compute_masked_exp_attention_weights(state, kind, device):
    gen = torch.Generator().manual_seed(8)
    b, h, hkv, sq, sk = 2, 4, 2, 5, 9
    q, k, _ = qkv(b, h, hkv, sq, sk, 8, gen, torch.float32, device)
    mask, ref_probs = make_mask(state, random_probs((b, h, sq, sk), gen), device)
    am = None if kind is None else causal_mask(b, sq, sk, kind).to(device)
    got = _compute_masked_exp_attention_weights(q, k, am, 0.35, mask)
    assert got.dtype == torch.float32 and got.shape == (b, h, sq, sk)
    expected = reference_exp_weights(q, k, ref_probs, 0.35, am)
    torch.testing.assert_close(got.cpu().double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("state", ["empty", "dense", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numerator_over_denominator_is_the_output(state, dtype, device):
    gen = torch.Generator().manual_seed(9)
    b, h, hkv, sq, sk, d = 1, 4, 1, 3, 8, 8
    q, k, v = qkv(b, h, hkv, sq, sk, d, gen, dtype, device)
    mask, ref_probs = make_mask(state, random_probs((b, h, sq, sk), gen, density=0.7), device)
    am = causal_mask(b, sq, sk, "additive").to(device)
    num = get_attention_numerator(None, q, k, v, am, 0.3, 0.0, mask)
    den = get_attention_denominator(None, q, k, am, 0.3, 0.0, mask)
    assert num.shape == (b, h, sq, d) and den.shape == (b, h, sq, 1)
    assert num.dtype == dtype and den.dtype == dtype
    ref_out, _ = reference_attention(q, k, v, ref_probs, 0.3, am)
    has_key = den.cpu().float().squeeze(-1) > 0
    ratio = (num.float() / den.float()).transpose(1, 2).cpu().double()
    got = ratio.transpose(1, 2)[has_key]
    torch.testing.assert_close(got, ref_out.transpose(1, 2)[has_key], **TOL[dtype])


@pytest.mark.parametrize("state", STATES)
def test_apply_inv_mask_sum(state, device):
    gen = torch.Generator().manual_seed(10)
    probs = random_probs((2, 3, 7), gen)
    x = torch.rand(2, 3, 7, generator=gen).to(device)
    mask, ref_probs = make_mask(state, probs, device)
    got = apply_inv_mask_sum(x, mask)
    if ref_probs is None:
        expected = x.sum(dim=-1, keepdim=True)
    else:
        p = ref_probs.to(device)
        expected = torch.where(p > 0, x / p.clamp_min(1e-30), 0.0).sum(dim=-1, keepdim=True)
    assert got.shape == (2, 3, 1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"input_tensor.shape must be \(2, 3, 7\)"):
        apply_inv_mask_sum(torch.zeros(2, 3, 6, device=device), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_create_sampling_mask_with_per_head_budget(dtype, device):
    gen = torch.Generator().manual_seed(11)
    b, h, q, sk, start, end = 2, 3, 4, 20, 3, 15
    budgets = torch.randint(0, 6, (b, h, q, 1), generator=gen).to(device)
    budgets[0, 0, 0] = 0
    rate = (torch.rand(b, h, q, 1, generator=gen) * 0.9 + 0.1).to(device)
    torch.manual_seed(0)
    mask = create_sampling_mask_with_per_head_budget(budgets, rate, sk, start, end, dtype)
    assert mask.from_index and mask.shape == (b, h, q, sk) and mask.dtype == dtype
    indices, ptr, data = mask.get_index_mask()
    counts = budgets.reshape(-1).cpu()
    assert indices.numel() == int(counts.sum())  # draws with replacement, repeats kept
    assert ptr.cpu().tolist() == [0] + counts.cumsum(0).tolist()
    rows = torch.repeat_interleave(torch.arange(b * h * q), counts)
    cols = indices.cpu() - rows * sk
    assert torch.all((cols >= start) & (cols < end))
    torch.testing.assert_close(data.cpu(), rate.reshape(-1).cpu()[rows].to(dtype))
    with pytest.raises(ValueError, match=r"data must hold probabilities in \[0, 1\]"):
        create_sampling_mask_with_per_head_budget(budgets, rate + 1.0, sk, start, end)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("kind", [None, "additive", "bool"])
def test_true_attention_output(heads, kind, device):
    gen = torch.Generator().manual_seed(12)
    (h, hkv), b, sq, sk, d = heads, 2, 4, 9, 8
    q, k, v = qkv(b, h, hkv, sq, sk, d, gen, torch.float32, device)
    am = None if kind is None else causal_mask(b, sq, sk, kind).to(device)
    out, weights = get_true_attention_output(eval_module(), q, k, v, am, 0.3, 0.0)
    ref_out, ref_w = reference_attention(q, k, v, None, 0.3, am)
    assert out.shape == (b, sq, h, d) and out.is_contiguous()
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.cpu().double(), ref_w, atol=1e-5, rtol=1e-5)
    empty = Mask.create_empty_mask((b, h, sq, sk), torch.float32, torch.device(device))
    masked = get_masked_attention_output(None, q, k, v, am, 0.3, 0.0, empty)
    torch.testing.assert_close(masked, out, atol=1e-5, rtol=1e-5)


def test_true_attention_dropout_in_training():
    gen = torch.Generator().manual_seed(13)
    q, k, v = qkv(1, 2, 2, 6, 10, 8, gen, torch.float32, "cpu")
    _, plain = get_true_attention_output(eval_module(), q, k, v, None, 0.3, 0.5)
    _, dropped = get_true_attention_output(train_module(), q, k, v, None, 0.3, 0.5)
    zero = dropped == 0
    assert zero.any() and (~zero).any()
    torch.testing.assert_close(dropped[~zero], plain[~zero] / 0.5)


# ----------------------------------------------------------------------------------------------
# kv_utils
@pytest.mark.parametrize("n_rep", [1, 2, 3])
def test_repeat_kv(n_rep):
    x = torch.randn(2, 3, 5, 4)
    got = kv_utils.repeat_kv(x, n_rep)
    assert torch.equal(got, torch.repeat_interleave(x, n_rep, dim=1))
    if n_rep == 1:
        assert got is x


def test_num_key_value_groups():
    q = torch.zeros(1, 8, 2, 4)
    assert kv_utils._get_num_key_value_groups(q, torch.zeros(1, 2, 5, 4)) == 4
    assert kv_utils._get_num_key_value_groups(q, torch.zeros(1, 8, 5, 4)) == 1
    with pytest.raises(ValueError, match=r"num_attention_heads \(8\) must be divisible by "):
        kv_utils._get_num_key_value_groups(q, torch.zeros(1, 3, 5, 4))
