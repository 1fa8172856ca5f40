"""Tests of the row-form mask operators against plain PyTorch math."""

import pytest
import torch

from sparse_attention_hub import ops


# ----------------------------------------------------------------------------------------------
# Reference: row form <-> dense with plain tensor indexing.
def reference_to_dense(idx, probs, n):
    dense = torch.zeros(*idx.shape[:-1], n)
    rows, cap = dense[..., 0].numel(), idx.shape[-1]
    flat_d, flat_i, flat_p = dense.view(rows, n), idx.reshape(rows, cap), probs.reshape(rows, cap)
    for r in range(flat_i.shape[0]):
        keep = flat_i[r] >= 0
        flat_d[r, flat_i[r][keep].long()] = flat_p[r][keep]
    return dense


def reference_to_rows(dense, cap):
    n = dense.shape[-1]
    idx = torch.full((*dense.shape[:-1], cap), -1, dtype=torch.int32)
    pr = torch.zeros(*dense.shape[:-1], cap)
    rows = dense[..., 0].numel() if n else 0
    fd, fi, fp = dense.reshape(rows, n), idx.view(rows, cap), pr.view(rows, cap)
    for r in range(fd.shape[0]):
        cols = fd[r].nonzero().flatten()
        fi[r, : len(cols)] = cols.int()
        fp[r, : len(cols)] = fd[r, cols]
    return idx, pr


def random_dense(shape, n, density, gen):
    vals = torch.rand(*shape, n, generator=gen) * 0.9 + 0.1
    vals[torch.rand(*shape, n, generator=gen) < 0.3] = 1.0
    return torch.where(torch.rand(*shape, n, generator=gen) < density, vals, torch.zeros(()))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("da,db", [(0.0, 0.5), (0.3, 0.3), (1.0, 0.2), (0.05, 0.0)])
def test_union_is_clamped_sum(device, shape, n, da, db):
    gen = torch.Generator().manual_seed(n)
    A, B = random_dense(shape, n, da, gen), random_dense(shape, n, db, gen)
    ca = int((A != 0).sum(-1).max()) + 2
    cb = int((B != 0).sum(-1).max())
    ia, pa = reference_to_rows(A, ca)
    ib, pb = reference_to_rows(B, cb)
    io, po = ops.mask_union(ia.to(device), pa.to(device), ib.to(device), pb.to(device), n)
    assert io.shape == (*shape, min(ca + cb, n)) and io.dtype == torch.int32
    want_i, want_p = reference_to_rows((A + B).clamp(0, 1), min(ca + cb, n))
    assert torch.equal(io.cpu(), want_i)
    torch.testing.assert_close(po.cpu(), want_p)


@pytest.mark.parametrize("n", [1, 9, 257])
def test_dense_round_trip_and_counts(device, n):
    gen = torch.Generator().manual_seed(n)
    dense = random_dense((2, 3, 2), n, 0.4, gen)
    idx, pr = ops.dense_to_rows(dense.to(device))
    want_i, want_p = reference_to_rows(dense, n)
    assert torch.equal(idx.cpu(), want_i)
    assert torch.equal(pr.cpu(), want_p)
    assert torch.equal(ops.rows_to_dense(idx, pr, n).cpu(), dense)
    assert torch.equal(reference_to_dense(want_i, want_p, n), dense)
    counts = ops.row_counts(idx, pr)
    assert counts.dtype == torch.int32
    assert torch.equal(counts.cpu(), (dense > 0).sum(-1).int())


def test_rows_to_dense_pads_and_zero_probabilities(device):
    idx = torch.tensor([[3, 0, -1, -1], [-1, -1, -1, -1]], dtype=torch.int32)
    pr = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    dense = ops.rows_to_dense(idx.to(device), pr.to(device), 5).cpu()
    assert torch.equal(dense, torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.0], [0.0] * 5]))
    assert ops.row_counts(idx.to(device), pr.to(device)).cpu().tolist() == [1, 0]


def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    A, B = random_dense((2, 3), 12, 0.4, gen), random_dense((2, 3), 12, 0.3, gen)
    ia, pa = (t.to(device) for t in reference_to_rows(A, 8))
    ib, pb = (t.to(device) for t in reference_to_rows(B, 6))
    torch.library.opcheck(torch.ops.sah.mask_union, (ia, pa, ib, pb, 12))
    torch.library.opcheck(torch.ops.sah.rows_to_dense, (ia, pa, 12))
    torch.library.opcheck(torch.ops.sah.dense_to_rows, (A.to(device),))
    torch.library.opcheck(torch.ops.sah.row_counts, (ia, pa))


def test_compile_fullgraph_union_then_attention(device):
    """A mask union followed by attention compiles into one graph with dynamic key length."""
    torch._dynamo.reset()

    def step(q, k, v, ia, pa, ib, pb):
        idx, pr = ops.mask_union(ia, pa, ib, pb, k.shape[2])
        return ops.sparse_attention(q, k, v, idx, pr, 0.5)[0], ops.row_counts(idx, pr)

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(1)
    for sk in (10, 14, 31):
        q = torch.randn(1, 2, 1, 8, generator=gen).to(device)
        k = torch.randn(1, 1, sk, 8, generator=gen).to(device)
        v = torch.randn(1, 1, sk, 8, generator=gen).to(device)
        ia, pa = (
            t.to(device) for t in reference_to_rows(random_dense((1, 2, 1), sk, 0.3, gen), sk)
        )
        ib, pb = (
            t.to(device) for t in reference_to_rows(random_dense((1, 2, 1), sk, 0.3, gen), sk)
        )
        got, want = compiled(q, k, v, ia, pa, ib, pb), step(q, k, v, ia, pa, ib, pb)
        torch.testing.assert_close(got[0], want[0])
        assert torch.equal(got[1], want[1])


def test_outputs_carry_no_gradient():
    pr = torch.tensor([[0.5, 1.0]], requires_grad=True)
    idx = torch.tensor([[0, 2]], dtype=torch.int32)
    assert not ops.rows_to_dense(idx, pr, 3).requires_grad
    assert not ops.mask_union(idx, pr, idx, pr, 3)[1].requires_grad


def test_bad_inputs_raise_clear_errors():
    idx = torch.tensor([[0, 2]], dtype=torch.int32)
    pr = torch.tensor([[0.5, 1.0]])
    with pytest.raises(RuntimeError, match="indices must be int32"):
        ops.row_counts(idx.long(), pr)
    with pytest.raises(RuntimeError, match="probs must be float32"):
        ops.rows_to_dense(idx, pr.double(), 3)
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, num_keys=2\)"):
        ops.rows_to_dense(idx, pr, 2)
    with pytest.raises(RuntimeError, match="same leading dims"):
        ops.mask_union(idx, pr, idx.expand(2, 2), pr.expand(2, 2), 3)
    with pytest.raises(RuntimeError, match="repeated or unsorted"):
        ops.mask_union(torch.tensor([[2, 0]], dtype=torch.int32), pr, idx, pr, 3)
    with pytest.raises(RuntimeError, match="dense must be float32"):
        ops.dense_to_rows(torch.ones(2, 3, dtype=torch.float64))
