"""Tests of the fixed masker ops (sink, local, oracle top-k, oracle top-p) against a plain
PyTorch transcription of the reference implementation's dense-mask algorithms.

The reference may mark keys the causal/attention mask forbids (they never reach the output);
this project never selects them (decision D6), so masks are compared on allowed positions, and
the forbidden positions must be empty in ours.
"""

import pytest
import torch
from reference import causal_additive, ref_local, ref_sink, ref_topk, ref_topp

from sparse_attention_hub import ops


def to_rows(dense):
    return ops.dense_to_rows(dense.float().contiguous())


def empty_rows(b, h, sq):
    return torch.empty(b, h, sq, 0, dtype=torch.int32), torch.empty(b, h, sq, 0)


def random_prev(b, h, sq, sk, gen, density=0.2):
    """A previous mask on causally allowed keys (what earlier maskers produce)."""
    _, allowed = causal_additive(b, sq, sk)
    keep = (torch.rand(b, h, sq, sk, generator=gen) < density) & allowed
    vals = torch.where(torch.rand(b, h, sq, sk, generator=gen) < 0.5, 1.0, 0.3)
    return torch.where(keep, vals, torch.zeros(()))


def check_on_allowed(got_idx, got_p, want, allowed, sk):
    got = ops.rows_to_dense(got_idx.cpu(), got_p.cpu(), sk)
    allowed = allowed.expand_as(got)
    torch.testing.assert_close(got[allowed], want.float()[allowed])
    assert (got[~allowed] == 0).all(), "a forbidden key was selected"


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sq,sk", [(1, 16), (3, 8), (6, 20)])
@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("with_prev", [False, True])
def test_sink_and_local_match_reference(device, sq, sk, size, with_prev):
    gen = torch.Generator().manual_seed(sq * 100 + sk + size)
    b, h = 2, 3
    prev = random_prev(b, h, sq, sk, gen) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    additive, allowed = causal_additive(b, sq, sk)
    for op, ref in ((ops_sink, ref_sink), (ops_local, ref_local)):
        idx, p = op(pi.to(device), pp.to(device), additive.to(device), sk, size)
        assert idx.shape[-1] == min(pi.shape[-1] + size, sk)
        check_on_allowed(idx, p, ref(prev, size), allowed, sk)
        # Without an attention mask the causal rule still holds.
        idx2, p2 = op(pi.to(device), pp.to(device), None, sk, size)
        assert torch.equal(idx2, idx) and torch.equal(p2, p)


def ops_sink(pi, pp, mask, sk, size):
    return torch.ops.sah.sink_mask(pi, pp, mask, sk, size)


def ops_local(pi, pp, mask, sk, size):
    return torch.ops.sah.local_mask(pi, pp, mask, sk, size)


def test_local_matches_documented_example(device):
    pi, pp = empty_rows(1, 1, 3)
    idx, p = torch.ops.sah.local_mask(pi.to(device), pp.to(device), None, 8, 2)
    assert idx.cpu().tolist() == [[[[4, 5], [5, 6], [6, 7]]]]
    assert (p == 1).all()


def test_padding_does_not_eat_into_sink_or_window(device):
    """Sink = the first s keys the query may see, local = the last w of them: a padded row
    (False = padding) selects the same real keys as the unpadded sequence."""
    pi, pp = empty_rows(2, 1, 1)
    pi, pp = pi.to(device), pp.to(device)
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :2] = False  # left padding in batch 0
    mask[1, ..., 6:8] = False  # padding between a context and a question in batch 1
    idx, _ = torch.ops.sah.sink_mask(pi, pp, mask.to(device), 10, 3)
    assert idx.cpu().tolist() == [[[[2, 3, 4]]], [[[0, 1, 2]]]]
    idx, _ = torch.ops.sah.local_mask(pi, pp, mask.to(device), 10, 3)
    assert idx.cpu().tolist() == [[[[7, 8, 9]]], [[[5, 8, 9]]]]


@pytest.mark.parametrize("h,hkv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("sq,sk", [(1, 40), (4, 33)])
@pytest.mark.parametrize("kk", [1, 5, 12])
@pytest.mark.parametrize("with_prev", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_oracle_topk_matches_reference(device, h, hkv, sq, sk, kk, with_prev, dtype):
    gen = torch.Generator().manual_seed(h * 1000 + sq * 100 + sk + kk)
    b, d = 2, 16
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(dtype)
    prev = random_prev(b, h, sq, sk, gen) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    additive, allowed = causal_additive(b, sq, sk)
    idx, p = torch.ops.sah.oracle_topk_mask(
        q.to(device), k.to(device), pi.to(device), pp.to(device), additive.to(device), kk
    )
    assert idx.shape[-1] == min(pi.shape[-1] + kk, sk)
    want = ref_topk(q.float(), k.float(), additive, prev, kk)
    check_on_allowed(idx, p, want, allowed, sk)
    new = (ops.rows_to_dense(idx.cpu(), p.cpu(), sk) > 0) & (prev == 0)
    n_avail = (allowed & (prev == 0)).sum(-1)
    assert torch.equal(new.sum(-1), n_avail.clamp(max=kk)), "exactly k new keys where possible"


def test_oracle_topk_ties_prefer_lower_index(device):
    q = torch.ones(1, 1, 1, 4)
    k = torch.ones(1, 1, 10, 4)  # every score ties
    pi, pp = empty_rows(1, 1, 1)
    idx, _ = torch.ops.sah.oracle_topk_mask(
        q.to(device), k.to(device), pi.to(device), pp.to(device), None, 3
    )
    assert idx.cpu().flatten().tolist() == [0, 1, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sk", [9000, 20000, 40000, 70001])
@pytest.mark.parametrize("kk", [1, 300, 5000, 10**6])
@pytest.mark.parametrize("ties", [False, True])
def test_oracle_topk_long_rows_cuda_equals_cpu(sk, kk, ties):
    """Long decode rows are selected by a cluster of blocks on the GPU (each owning a slice of
    the keys): the same keys as the CPU kernel, also with massive ties (integer-valued keys),
    previous rows, a padding mask and a budget above the available keys."""
    gen = torch.Generator().manual_seed(sk + kk + ties)
    b, h, hkv, sq, d = 1, 4, 2, 2, 32
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    if ties:
        q, k = q.round(), (k * 0.7).round()
    keep = torch.rand(b, h, sq, sk, generator=gen) < 0.002
    prev = torch.where(keep, torch.ones(()), torch.zeros(()))
    additive, _ = causal_additive(b, sq, sk)
    additive[..., : sk // 7] = float("-inf")  # left padding
    pi, pp = to_rows(prev)
    for dtype in (torch.float32, torch.bfloat16):
        args = (q.to(dtype), k.to(dtype), pi, pp, additive.to(dtype), kk)
        want = torch.ops.sah.oracle_topk_mask(*args)
        got = torch.ops.sah.oracle_topk_mask(*(a.cuda() if torch.is_tensor(a) else a for a in args))
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.8, 0.99])
@pytest.mark.parametrize("sq,sk", [(1, 50), (3, 24)])
@pytest.mark.parametrize("with_prev", [False, True])
def test_oracle_topp_matches_reference(device, top_p, sq, sk, with_prev):
    gen = torch.Generator().manual_seed(int(top_p * 100) + sq * 7 + sk)
    b, h, hkv, d = 1, 4, 2, 8
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    prev = random_prev(b, h, sq, sk, gen) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    additive, allowed = causal_additive(b, sq, sk)
    idx, p = torch.ops.sah.oracle_topp_mask(
        q.to(device), k.to(device), pi.to(device), pp.to(device), additive.to(device), top_p, 0.35
    )
    want = ref_topp(q, k, additive, prev, top_p, 0.35)
    check_on_allowed(idx, p, want, allowed, sk)


@pytest.mark.parametrize(
    "values,top_p,tau",
    [
        ([0.1, 0.3, 0.2, 0.4, 0.1], 0.8, 0.2),
        ([0.1, 0.3, 0.2], 0.6, 0.2),
        ([0.2, 0.1, 0.5], 0.6, 0.5),
    ],
)
def test_oracle_topp_documented_thresholds(device, values, top_p, tau):
    """Scores log(v) give exp-mass proportional to v: the reference's pinned thresholds."""
    n = len(values)
    q = torch.ones(1, 1, 1, 1)
    k = torch.log(torch.tensor(values)).view(1, 1, n, 1)
    pi, pp = empty_rows(1, 1, 1)
    idx, _ = torch.ops.sah.oracle_topp_mask(
        q.to(device), k.to(device), pi.to(device), pp.to(device), None, top_p, 1.0
    )
    chosen = sorted(i for i in idx.cpu().flatten().tolist() if i >= 0)
    assert chosen == [i for i, v in enumerate(values) if v >= tau - 1e-7]


def test_zero_budgets_select_nothing(device):
    pi, pp = empty_rows(1, 2, 1)
    pi, pp = pi.to(device), pp.to(device)
    q, k = torch.randn(1, 2, 1, 4).to(device), torch.randn(1, 2, 6, 4).to(device)
    assert torch.ops.sah.sink_mask(pi, pp, None, 6, 0)[0].shape[-1] == 0
    assert torch.ops.sah.local_mask(pi, pp, None, 6, 0)[0].shape[-1] == 0
    assert torch.ops.sah.oracle_topk_mask(q, k, pi, pp, None, 0)[0].shape[-1] == 0


def test_opcheck_and_compile_chain(device):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 2, 8, generator=gen).to(device)
    k = torch.randn(1, 2, 12, 8, generator=gen).to(device)
    additive, _ = causal_additive(1, 2, 12)
    additive = additive.to(device)
    pi, pp = (t.to(device) for t in empty_rows(1, 4, 2))
    si, sp = torch.ops.sah.sink_mask(pi, pp, additive, 12, 2)
    torch.library.opcheck(torch.ops.sah.sink_mask, (pi, pp, additive, 12, 2))
    torch.library.opcheck(torch.ops.sah.local_mask, (si, sp, None, 12, 3))
    torch.library.opcheck(torch.ops.sah.oracle_topk_mask, (q, k, si, sp, additive, 3))
    torch.library.opcheck(torch.ops.sah.oracle_topp_mask, (q, k, si, sp, additive, 0.5, 0.3))

    def chain(q, k, v, mask):
        n = k.shape[2]
        e = torch.empty(q.shape[0], q.shape[1], q.shape[2], 0, dtype=torch.int32, device=q.device)
        idx, p = torch.ops.sah.sink_mask(e, e.float(), mask, n, 2)
        idx, p = torch.ops.sah.local_mask(idx, p, mask, n, 2)
        idx, p = torch.ops.sah.oracle_topk_mask(q, k, idx, p, mask, n // 4)
        return ops.sparse_attention(q, k, v, idx, p, 0.3, mask)[0]

    torch._dynamo.reset()
    compiled = torch.compile(chain, fullgraph=True, dynamic=True)
    for sk in (16, 20, 27):
        q = torch.randn(1, 4, 1, 8, generator=gen).to(device)
        k = torch.randn(1, 2, sk, 8, generator=gen).to(device)
        v = torch.randn(1, 2, sk, 8, generator=gen).to(device)
        mask = torch.zeros(1, 1, 1, sk, device=device)
        torch.testing.assert_close(compiled(q, k, v, mask), chain(q, k, v, mask))


def test_bad_inputs():
    pi, pp = empty_rows(1, 2, 1)
    with pytest.raises(RuntimeError, match="prev_indices must be 4-D"):
        torch.ops.sah.sink_mask(pi[0], pp[0], None, 6, 2)
    with pytest.raises(RuntimeError, match="size must be >= 0"):
        torch.ops.sah.sink_mask(pi, pp, None, 6, -1)
    with pytest.raises(RuntimeError, match="attention_mask must have at least num_keys 6"):
        torch.ops.sah.local_mask(pi, pp, torch.zeros(1, 1, 1, 3), 6, 2)
    with pytest.raises(RuntimeError, match="top_p must be in"):
        torch.ops.sah.oracle_topp_mask(
            torch.randn(1, 2, 1, 4), torch.randn(1, 2, 6, 4), pi, pp, None, 1.5, 1.0
        )
    bad = torch.tensor([[[[3, 1]], [[0, 1]]]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="strictly ascending"):
        torch.ops.sah.sink_mask(bad, torch.ones(1, 2, 1, 2), None, 6, 2)
    with pytest.raises(RuntimeError, match=r"prev_indices must lie in \[0, num_keys=6\)"):
        torch.ops.sah.sink_mask(bad + 5, torch.ones(1, 2, 1, 2), None, 6, 2)
