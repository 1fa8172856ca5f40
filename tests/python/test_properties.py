"""Property-based tests (hypothesis): random valid inputs against plain PyTorch math, random
invalid inputs must raise a clear error (never crash, hang or return NaN)."""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparse_attention_hub import ops  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


def reference(q, k, v, dense, scale, mask=None):
    g = q.shape[1] // k.shape[1]
    kr, vr = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = scale * q.double() @ kr.transpose(-1, -2)
    keep = dense > 0
    if mask is not None:
        keep = keep & mask
    logits = torch.where(keep, s - torch.log(dense.double().clamp_min(1e-30)), float("-inf"))
    lse = torch.logsumexp(logits, -1)
    w = torch.exp(logits - lse.unsqueeze(-1)).nan_to_num(0.0)
    return w @ vr, lse


@st.composite
def problems(draw):
    b = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 3))
    g = draw(st.integers(1, 3))
    sq = draw(st.integers(1, 4))
    sk = draw(st.integers(1, 40))
    d = draw(st.sampled_from([1, 3, 8, 16]))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**16))
    with_mask = draw(st.booleans())
    return b, hkv * g, hkv, sq, sk, d, density, seed, with_mask


@SETTINGS
@given(problems(), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_sparse_attention_matches_reference_on_random_problems(problem, dtype):
    b, h, hkv, sq, sk, d, density, seed, with_mask = problem
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    keep = torch.rand(b, h, sq, sk, generator=gen) < density
    dense = torch.where(keep, torch.rand(b, h, sq, sk, generator=gen).clamp_min(0.05), 0.0)
    mask = (torch.rand(b, 1, sq, sk, generator=gen) < 0.8) if with_mask else None
    idx, pr = ops.dense_to_rows(dense)
    scale = 1 / math.sqrt(d)
    out, lse = ops.sparse_attention(q, k, v, idx, pr, scale, mask)
    want_out, want_lse = reference(q, k, v, dense, scale, mask)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), want_lse.float().double(), atol=tol, rtol=tol)


@SETTINGS
@given(st.integers(1, 50), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_union_equals_clamped_dense_sum(n, da, db, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.where(torch.rand(3, n, generator=gen) < da, torch.rand(3, n, generator=gen), 0.0)
    b = torch.where(torch.rand(3, n, generator=gen) < db, torch.rand(3, n, generator=gen), 0.0)
    ia, pa = ops.dense_to_rows(a)
    ib, pb = ops.dense_to_rows(b)
    io, po = ops.mask_union(ia, pa, ib, pb, n)
    assert torch.equal(ops.rows_to_dense(io, po, n), (a + b).clamp(0, 1))
    assert torch.equal(ops.row_counts(io, po), ((a + b) > 0).sum(-1).int())


BAD_SHAPES = st.lists(st.integers(0, 3), min_size=0, max_size=5)


@SETTINGS
@given(
    BAD_SHAPES, BAD_SHAPES, BAD_SHAPES, st.sampled_from([torch.int32, torch.int64, torch.float32])
)
def test_invalid_inputs_raise_clear_errors(q_shape, k_shape, idx_shape, idx_dtype):
    """Arbitrary (mostly wrong) shapes and dtypes: either a valid call or a RuntimeError that
    names the operator; never a crash."""
    q = torch.randn(q_shape)
    k = torch.randn(k_shape)
    idx = torch.zeros(idx_shape, dtype=idx_dtype)
    probs = torch.ones(idx_shape)
    try:
        out, lse = ops.sparse_attention(q, k, k, idx, probs, 1.0)
    except RuntimeError as error:
        assert "sah::sparse_attention" in str(error)
    else:
        assert not torch.isnan(out).any()


@SETTINGS
@given(st.integers(-5, 60), st.integers(1, 10))
def test_out_of_range_indices_are_rejected_on_cpu(bad, sk):
    q, k = torch.randn(1, 1, 1, 4), torch.randn(1, 1, sk, 4)
    idx = torch.tensor([[[[bad]]]], dtype=torch.int32)
    if -1 <= bad < sk:
        ops.sparse_attention(q, k, k, idx, torch.ones(1, 1, 1, 1), 1.0)
    else:
        with pytest.raises(RuntimeError, match="indices must lie in"):
            ops.sparse_attention(q, k, k, idx, torch.ones(1, 1, 1, 1), 1.0)


def test_nan_and_inf_inputs_give_defined_results():
    """An all-forbidden row gives 0 (not NaN) even when scores overflow in fp16."""
    q = torch.full((1, 1, 1, 8), 300.0, dtype=torch.float16)
    k = torch.full((1, 1, 4, 8), 300.0, dtype=torch.float16)  # q.k overflows fp16, fp32 is fine
    idx = torch.tensor([[[[0, 1, 2, 3]]]], dtype=torch.int32)
    out, lse = ops.sparse_attention(q, k, k, idx, torch.ones(1, 1, 1, 4), 1.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    mask = torch.zeros(1, 1, 1, 4, dtype=torch.bool)
    out, lse = ops.sparse_attention(q, k, k, idx, torch.ones(1, 1, 1, 4), 1.0, mask)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()
