"""Tests of sah::sparse_attention and sah::masked_attention against plain PyTorch math."""

import math

import pytest
import torch

from sparse_attention_hub import ops

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Reference: dense weighted softmax in float64 (weights 1/p on included keys, mask additive).
def reference_attention(q, k, v, dense_probs, scale, attention_mask=None):
    """Returns (out, lse) in float64; rows with no usable key give out 0 and lse -inf."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = scale * q @ k.transpose(-1, -2)
    p = dense_probs.double()
    keep = p > 0
    if attention_mask is not None:
        m = attention_mask[..., : k.shape[2]]
        if m.dtype == torch.bool:
            keep = keep & m
        else:
            forbidden = (m == torch.finfo(m.dtype).min) | (m == NEG_INF)
            keep = keep & ~forbidden
            s = s + m.double().masked_fill(forbidden, 0.0)
    logits = torch.where(keep, s - torch.log(p.clamp_min(1e-30)), torch.full_like(s, NEG_INF))
    lse = torch.logsumexp(logits, dim=-1)
    w = torch.exp(logits - lse.unsqueeze(-1)).nan_to_num(0.0)
    return w @ v, lse


def random_rows(b, h, sq, sk, density, cap, gen, empty_rows=False):
    """Random row-form mask (ascending, -1 padded) and its dense float32 probabilities."""
    dense = torch.zeros(b, h, sq, sk)
    n = min(cap, max(0, int(round(density * sk))))
    for r in range(b * h * sq):
        if empty_rows and r % 3 == 0:
            continue
        cols = torch.randperm(sk, generator=gen)[:n]
        p = torch.rand(n, generator=gen) * 0.9 + 0.1
        p[torch.rand(n, generator=gen) < 0.5] = 1.0
        dense.view(-1, sk)[r, cols] = p
    idx = torch.full((b, h, sq, cap), -1, dtype=torch.int32)
    pr = torch.zeros(b, h, sq, cap)
    for r in range(b * h * sq):
        cols = dense.view(-1, sk)[r].nonzero().flatten()
        idx.view(-1, cap)[r, : len(cols)] = cols.int()
        pr.view(-1, cap)[r, : len(cols)] = dense.view(-1, sk)[r, cols]
    return idx, pr, dense


def causal_mask(b, sq, sk, dtype, kind):
    """HF-style 4-D mask (b, 1, sq, sk): query i sits at position sk - sq + i."""
    pos = torch.arange(sk)
    allowed = pos[None, :] <= (sk - sq + torch.arange(sq))[:, None]
    allowed = allowed.expand(b, 1, sq, sk)
    if kind == "bool":
        return allowed.clone()
    m = torch.zeros(b, 1, sq, sk, dtype=dtype)
    return m.masked_fill(~allowed, torch.finfo(dtype).min)


TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def make_qkv(b, h, hkv, sq, sk, d, dtype, device, gen):
    q = torch.randn(b, h, sq, d, generator=gen).to(device, dtype)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(device, dtype)
    v = torch.randn(b, hkv, sk, d, generator=gen).to(device, dtype)
    return q, k, v


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,h,hkv", [(1, 4, 4), (2, 4, 2), (2, 8, 1)])
@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 37), (3, 64), (5, 300)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.6, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse_attention_matches_reference(device, b, h, hkv, sq, sk, density, dtype):
    gen = torch.Generator().manual_seed(hash((b, h, hkv, sq, sk, density)) % 2**31)
    d = 16
    q, k, v = make_qkv(b, h, hkv, sq, sk, d, dtype, device, gen)
    cap = max(1, int(round(density * sk)) + 3)
    idx, pr, dense = random_rows(b, h, sq, sk, density, cap, gen, empty_rows=True)
    scale = 1.0 / math.sqrt(d)
    out, lse = ops.sparse_attention(q, k, v, idx.to(device), pr.to(device), scale)
    ref_out, ref_lse = reference_attention(q.cpu(), k.cpu(), v.cpu(), dense, scale)
    assert out.dtype == dtype and out.shape == (b, h, sq, d)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, sq)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=TOL[dtype], rtol=TOL[dtype])
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("kind", ["additive", "bool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_mask_causal_and_padded_cache(device, kind, dtype):
    """HF 4-D masks, also wider than k_len (static cache), forbid keys after each query."""
    gen = torch.Generator().manual_seed(1)
    b, h, hkv, sq, sk, d = 2, 4, 2, 4, 40, 32
    q, k, v = make_qkv(b, h, hkv, sq, sk, d, dtype, device, gen)
    idx, pr, dense = random_rows(b, h, sq, sk, 0.5, sk, gen)
    mask = causal_mask(b, sq, sk + 8, dtype, kind)  # 8 extra columns beyond k_len
    out, lse = ops.sparse_attention(q, k, v, idx.to(device), pr.to(device), 0.3, mask.to(device))
    ref_out, ref_lse = reference_attention(q.cpu(), k.cpu(), v.cpu(), dense, 0.3, mask)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    out_d, lse_d = ops.masked_attention(q, k, v, dense.to(device), 0.3, mask.to(device))
    torch.testing.assert_close(out_d.cpu().double(), ref_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse_d, lse)


def test_all_forbidden_row_gives_zero_not_nan(device):
    gen = torch.Generator().manual_seed(2)
    q, k, v = make_qkv(1, 2, 1, 1, 8, 8, torch.float32, device, gen)
    idx = torch.tensor([0, 1, 2, -1], dtype=torch.int32).expand(1, 2, 1, 4).to(device)
    pr = torch.tensor([1.0, 1.0, 0.5, 0.0]).expand(1, 2, 1, 4).to(device)
    mask = torch.zeros(1, 1, 1, 8)
    mask[..., :3] = torch.finfo(torch.float32).min
    out, lse = ops.sparse_attention(q, k, v, idx, pr, 1.0, mask.to(device))
    assert torch.equal(out.cpu(), torch.zeros_like(out.cpu()))
    assert torch.isinf(lse).all() and (lse < 0).all()


@pytest.mark.parametrize("sq,sk,density", [(1, 50, 0.3), (3, 20, 1.0)])
@pytest.mark.parametrize("b,h,hkv", [(1, 2, 2), (2, 4, 2)])
def test_masked_attention_matches_reference(device, b, h, hkv, sq, sk, density):
    gen = torch.Generator().manual_seed(3)
    q, k, v = make_qkv(b, h, hkv, sq, sk, 16, torch.float32, device, gen)
    _, _, dense = random_rows(b, h, sq, sk, density, sk, gen, empty_rows=True)
    out, lse = ops.masked_attention(q, k, v, dense.to(device), 0.25)
    ref_out, ref_lse = reference_attention(q.cpu(), k.cpu(), v.cpu(), dense, 0.25)
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=2e-5, rtol=2e-5)


def test_masked_attention_reads_expanded_probs(device):
    """A stride-0 (expanded) all-ones mask is dense attention; nothing is materialised."""
    gen = torch.Generator().manual_seed(4)
    b, h, sq, sk = 2, 4, 3, 33
    q, k, v = make_qkv(b, h, 2, sq, sk, 8, torch.float32, device, gen)
    ones = torch.ones(1, 1, 1, 1, device=device).expand(b, h, sq, sk)
    out, _ = ops.masked_attention(q, k, v, ones, 0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5, enable_gqa=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_noncontiguous_query_and_head_major_layout(device):
    """q as HF produces it ((b, sq, h, d) transposed) gives the same result as contiguous q."""
    gen = torch.Generator().manual_seed(5)
    b, h, hkv, sq, sk, d = 1, 4, 2, 3, 20, 16
    q_bshd = torch.randn(b, sq, h, d, generator=gen).to(device)
    q = q_bshd.transpose(1, 2)
    _, k, v = make_qkv(b, h, hkv, sq, sk, d, torch.float32, device, gen)
    idx, pr, _ = random_rows(b, h, sq, sk, 0.4, sk, gen)
    a, _ = ops.sparse_attention(q, k, v, idx.to(device), pr.to(device), 0.2)
    c, _ = ops.sparse_attention(q.contiguous(), k, v, idx.to(device), pr.to(device), 0.2)
    torch.testing.assert_close(a, c)


# ----------------------------------------------------------------------------------------------
# Gradients.
@pytest.mark.parametrize("hkv", [1, 2, 4])
def test_sparse_attention_gradcheck(hkv):
    gen = torch.Generator().manual_seed(6)
    b, h, sq, sk, d = 2, 4, 2, 9, 6
    q, k, v = (
        t.requires_grad_() for t in make_qkv(b, h, hkv, sq, sk, d, torch.float64, "cpu", gen)
    )
    idx, pr, _ = random_rows(b, h, sq, sk, 0.5, 7, gen, empty_rows=True)
    mask = causal_mask(b, sq, sk, torch.float64, "additive")
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.sparse_attention(q, k, v, idx, pr, 0.4, mask)[0], (q, k, v)
    )
    _, _, dense = random_rows(b, h, sq, sk, 0.5, sk, gen)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.masked_attention(q, k, v, dense, 0.4, mask)[0], (q, k, v)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_reference_including_lse(device, dtype):
    """dq, dk, dv of a loss that uses both out and lse equal autograd through the reference."""
    gen = torch.Generator().manual_seed(7)
    b, h, hkv, sq, sk, d = 2, 4, 2, 3, 24, 16
    q, k, v = make_qkv(b, h, hkv, sq, sk, d, dtype, device, gen)
    idx, pr, dense = random_rows(b, h, sq, sk, 0.4, 12, gen, empty_rows=True)
    w_out = torch.randn(b, h, sq, d, generator=gen)
    w_lse = torch.randn(b, h, sq, generator=gen)
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = ops.sparse_attention(qs, ks, vs, idx.to(device), pr.to(device), 0.3)
    lse_fin = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    ((out.float().cpu() * w_out).sum() + (lse_fin.cpu() * w_lse).sum()).backward()
    qr, kr, vr = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ro, rl = reference_attention(qr, kr, vr, dense, 0.3)
    rl = torch.where(torch.isinf(rl), torch.zeros_like(rl), rl)
    ((ro * w_out.double()).sum() + (rl * w_lse.double()).sum()).backward()
    tol = 1e-4 if dtype == torch.float32 else 8e-2
    for got, want in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.cpu().double(), want, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------
# Operator registration: opcheck and torch.compile.
def test_opcheck(device):
    gen = torch.Generator().manual_seed(8)
    b, h, hkv, sq, sk, d = 1, 4, 2, 2, 16, 8
    q, k, v = make_qkv(b, h, hkv, sq, sk, d, torch.float32, device, gen)
    idx, pr, dense = random_rows(b, h, sq, sk, 0.5, 10, gen)
    idx, pr, dense = idx.to(device), pr.to(device), dense.to(device)
    mask = causal_mask(b, sq, sk, torch.float32, "additive").to(device)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.sah.sparse_attention, (q, k, v, idx, pr, 0.3, mask))
    torch.library.opcheck(torch.ops.sah.sparse_attention, (qg, kg, vg, idx, pr, 0.3, None))
    torch.library.opcheck(torch.ops.sah.masked_attention, (q, k, v, dense, 0.3, mask))
    torch.library.opcheck(torch.ops.sah.masked_attention, (qg, kg, vg, dense, 0.3, None))
    out, lse = torch.ops.sah.sparse_attention(q, k, v, idx, pr, 0.3, mask)
    gout = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.sah.sparse_attention_backward,
        (gout, torch.randn_like(lse), q, k, v, idx, pr, out, lse, 0.3, mask),
    )
    out, lse = torch.ops.sah.masked_attention(q, k, v, dense, 0.3, None)
    torch.library.opcheck(
        torch.ops.sah.masked_attention_backward,
        (gout, None, q, k, v, dense, out, lse, 0.3, None),
    )


def test_compile_fullgraph_dynamic_key_length(device):
    """One compiled graph serves growing key lengths (decode) and matches eager."""
    torch._dynamo.reset()

    def step(q, k, v, idx, pr, mask):
        out, lse = ops.sparse_attention(q, k, v, idx, pr, 0.25, mask)
        return out * 2.0, lse

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(9)
    for sk in (17, 23, 40):
        q, k, v = make_qkv(1, 4, 2, 1, sk, 8, torch.float32, device, gen)
        idx, pr, _ = random_rows(1, 4, 1, sk, 0.5, 12, gen)
        mask = causal_mask(1, 1, sk, torch.float32, "additive").to(device)
        args = (q, k, v, idx.to(device), pr.to(device), mask)
        got, want = compiled(*args), step(*args)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_compile_backward(device):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(10)
    q, k, v = make_qkv(1, 2, 1, 2, 12, 8, torch.float32, device, gen)
    idx, pr, _ = random_rows(1, 2, 2, 12, 0.5, 8, gen)
    idx, pr = idx.to(device), pr.to(device)

    def loss(q, k, v):
        return ops.sparse_attention(q, k, v, idx, pr, 0.5)[0].square().sum()

    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(loss(*ins), ins)
    ins2 = [t.clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*ins2), ins2)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# Bad inputs give clear errors.
def _good(device="cpu"):
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv(1, 4, 2, 1, 10, 8, torch.float32, device, gen)
    idx, pr, _ = random_rows(1, 4, 1, 10, 0.5, 6, gen)
    return dict(q=q, k=k, v=v, indices=idx.to(device), probs=pr.to(device))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.update(q=a["q"][0]), "query .* must be 4-D"),
        (lambda a: a.update(k=a["k"].double()), "key and value must have the query's dtype"),
        (lambda a: a.update(q=a["q"].int()), "query must be float16, bfloat16, float32 or float64"),
        (lambda a: a.update(indices=a["indices"].long()), "indices must be int32"),
        (lambda a: a.update(probs=a["probs"].half()), "probs must be float32"),
        (lambda a: a.update(probs=a["probs"][..., :3]), "indices shape .* must equal probs shape"),
        (
            lambda a: a.update(
                k=a["k"].repeat(1, 2, 1, 1)[:, :3], v=a["v"].repeat(1, 2, 1, 1)[:, :3]
            ),
            "must be a multiple of kv heads 3",
        ),
        (lambda a: a.update(v=a["v"][..., :4]), "key and value must have the same shape"),
        (
            lambda a: a["indices"].__setitem__((0, 0, 0, 0), 10),
            r"indices must lie in \[0, k_len=10\)",
        ),
        (lambda a: a["indices"].__setitem__((0, 0, 0, 0), -2), r"indices must lie in"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    a = _good()
    change(a)
    with pytest.raises(RuntimeError, match=message):
        ops.sparse_attention(a["q"], a["k"], a["v"], a["indices"], a["probs"], 1.0)


def test_bad_attention_mask_and_dense_probs():
    a = _good()
    with pytest.raises(RuntimeError, match="attention_mask must have at least k_len 10 columns"):
        ops.sparse_attention(*a.values(), 1.0, torch.zeros(1, 1, 1, 5))
    with pytest.raises(RuntimeError, match="attention_mask batch must be 1 or 1"):
        ops.sparse_attention(*a.values(), 1.0, torch.zeros(3, 1, 1, 10))
    with pytest.raises(RuntimeError, match="dense probs must have k_len 10 columns"):
        ops.masked_attention(a["q"], a["k"], a["v"], torch.ones(1, 4, 1, 9), 1.0)
    with pytest.raises(RuntimeError, match="attention_mask must be bool or floating"):
        ops.sparse_attention(*a.values(), 1.0, torch.zeros(1, 1, 1, 10, dtype=torch.int64))
