"""Tests of the Mask class (sparse_attention_hub.sparse_attention.utils.mask) against plain
PyTorch/Python references: constructors, getters, state transitions, merge rules, errors."""

import math

import pytest
import torch

from sparse_attention_hub.sparse_attention.utils.mask import Mask

STATES = ["full", "empty", "dense", "index", "rows"]


# ----------------------------------------------------------------------------------------------
# References: plain Python/PyTorch, independent of the package.
def random_probs(shape, gen, density=0.5, device="cpu"):
    """Dense probabilities: about `density` of the entries in (0, 1], a third of those exactly 1."""
    keep = torch.rand(shape, generator=gen) < density
    p = torch.rand(shape, generator=gen) * 0.9 + 0.1
    p = torch.where(torch.rand(shape, generator=gen) < 0.33, torch.ones(shape), p)
    return torch.where(keep, p, torch.zeros(shape)).to(device)


def rows_of(dense, cap=None):
    """Row form (ascending columns, -1 padded) of a dense probability tensor, by a Python loop."""
    n = dense.shape[-1]
    lead = tuple(dense.shape[:-1])
    flat = dense.detach().cpu().reshape(-1, n)
    counts = [int((row != 0).sum()) for row in flat]
    cap = max(counts, default=0) if cap is None else cap
    idx = torch.full((flat.shape[0], cap), -1, dtype=torch.int32)
    probs = torch.zeros(flat.shape[0], cap)
    for r, row in enumerate(flat):
        cols = [c for c in range(n) if row[c] != 0]
        idx[r, : len(cols)] = torch.tensor(cols, dtype=torch.int32)
        probs[r, : len(cols)] = row[cols]
    return idx.reshape(*lead, cap).to(dense.device), probs.reshape(*lead, cap).to(dense.device)


def index_of(dense):
    """INDEX form (flat positions, ptr, values) of a dense tensor, by a Python loop."""
    n = dense.shape[-1]
    flat = dense.detach().cpu().reshape(-1, n)
    indices, values, ptr = [], [], [0]
    for r, row in enumerate(flat):
        for c in range(n):
            if row[c] != 0:
                indices.append(r * n + c)
                values.append(float(row[c]))
        ptr.append(len(indices))
    dev = dense.device
    return (
        torch.tensor(indices, dtype=torch.long, device=dev),
        torch.tensor(ptr, dtype=torch.long, device=dev),
        torch.tensor(values, dtype=dense.dtype, device=dev),
    )


def last_write(shape, row_wise_idx, data):
    """Dense tensor from per-row column lists; negative columns skipped, last occurrence wins."""
    n = shape[-1]
    out = torch.zeros(shape).reshape(-1, n)
    cols = row_wise_idx.cpu().reshape(out.shape[0], -1)
    vals = data.cpu().reshape(out.shape[0], -1)
    for r in range(out.shape[0]):
        for t in range(cols.shape[1]):
            if cols[r, t] >= 0:
                out[r, cols[r, t]] = vals[r, t]
    return out.reshape(shape)


def build(state, probs, dtype=torch.float32):
    """A mask of the given state whose values are `probs` (ones for full, zeros for empty)."""
    shape = tuple(probs.shape)
    if state == "full":
        return Mask.create_full_mask(shape, dtype=dtype, device=probs.device)
    if state == "empty":
        return Mask.create_empty_mask(shape, dtype=dtype, device=probs.device)
    if state == "dense":
        return Mask.create_mask_from_dense_mask(shape, probs, dtype=dtype)
    if state == "index":
        indices, ptr, data = index_of(probs)
        return Mask.create_mask_from_indices(shape, indices, ptr, data, dtype=dtype)
    return Mask.create_from_rows(shape, *rows_of(probs), dtype=dtype)


def values_of(state, probs):
    """The values a mask built by `build` holds."""
    if state == "full":
        return torch.ones_like(probs)
    if state == "empty":
        return torch.zeros_like(probs)
    return probs


def flags(mask):
    return {
        "full": mask.is_full,
        "empty": mask.is_empty,
        "dense": mask.from_dense_mask,
        "index": mask.from_index,
        "rows": mask.from_rows,
    }


def state_of(mask):
    (state,) = [name for name, on in flags(mask).items() if on]
    return state


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


SHAPES = [(7,), (3, 6), (2, 3, 5), (2, 2, 3, 8)]


# ----------------------------------------------------------------------------------------------
# Constructors and states
@pytest.mark.parametrize("state", STATES)
def test_exactly_one_state_flag_and_storage(state, gen, device):
    probs = random_probs((2, 3, 6), gen, device=device)
    mask = build(state, probs)
    assert state_of(mask) == state
    assert mask.shape == (2, 3, 6)
    assert mask.dtype == torch.float32
    assert mask.device.type == torch.device(device).type
    stored = {
        "full": [],
        "empty": [],
        "dense": ["mask"],
        "index": ["indices", "ptr", "data"],
        "rows": ["row_indices", "row_probs"],
    }[state]
    for attr in ["mask", "indices", "ptr", "data", "row_indices", "row_probs"]:
        assert (getattr(mask, attr) is not None) == (attr in stored), attr
    assert mask.is_full_mask() == (state == "full")
    assert mask.is_empty_mask() == (state == "empty")


def test_constructor_needs_a_valid_option():
    with pytest.raises(ValueError, match="Must specify either"):
        Mask((2, 3), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="Must specify either"):
        Mask((2, 3), torch.float32, torch.device("cpu"), from_dense_mask=True)
    with pytest.raises(ValueError, match="Must specify either"):
        Mask((2, 3), torch.float32, torch.device("cpu"), indices=torch.tensor([0]), from_index=True)
    with pytest.raises(ValueError, match="device must be specified for full masks"):
        Mask((2, 3), torch.float32, None, is_full=True)
    with pytest.raises(ValueError, match="device must be specified for empty masks"):
        Mask((2, 3), torch.float32, None, is_empty=True)


def test_constructor_builds_each_state_directly(gen):
    probs = random_probs((3, 5), gen)
    cpu = torch.device("cpu")
    dense = Mask((3, 5), torch.float32, cpu, mask=probs, from_dense_mask=True)
    indices, ptr, data = index_of(probs)
    index = Mask((3, 5), torch.float32, cpu, indices=indices, ptr=ptr, from_index=True, data=data)
    ridx, rprob = rows_of(probs)
    rows = Mask((3, 5), torch.float32, cpu, row_indices=ridx, row_probs=rprob, from_rows=True)
    for mask in (dense, index, rows):
        torch.testing.assert_close(mask.get_dense_mask(), probs, rtol=0, atol=0)


@pytest.mark.parametrize("state", ["full", "empty"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_full_and_empty_getters(state, dtype):
    shape = (2, 3, 4)
    mask = build(state, torch.zeros(shape), dtype=dtype)
    value = 1.0 if state == "full" else 0.0
    dense = mask.get_dense_mask()
    assert dense.dtype == dtype and dense.shape == shape
    assert torch.all(dense == value)
    indices, ptr, data = mask.get_index_mask()
    if state == "full":
        assert torch.equal(indices, torch.arange(24))
        assert torch.equal(ptr, torch.arange(0, 25, 4))
        assert torch.equal(data, torch.ones(24, dtype=dtype))
    else:
        assert indices.numel() == 0 and data.numel() == 0 and data.dtype == dtype
        assert torch.equal(ptr, torch.zeros(7, dtype=torch.long))
    row_idx, row_probs = mask.get_rows()
    assert row_idx.dtype == torch.int32 and row_probs.dtype == torch.float32
    if state == "full":
        assert torch.equal(row_idx, torch.arange(4, dtype=torch.int32).expand(2, 3, 4))
        assert torch.all(row_probs == 1.0) and row_probs.shape == shape
        assert mask.get_density() == 1.0
    else:
        assert row_idx.shape == (2, 3, 0) and row_probs.shape == (2, 3, 0)
        assert mask.get_density() == 0.0  # D4: EMPTY reports 0.0 although it means dense


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("state", ["dense", "index", "rows"])
def test_every_form_of_a_stored_mask(state, shape, gen, device):
    probs = random_probs(shape, gen, device=device)
    mask = build(state, probs)
    torch.testing.assert_close(mask.get_dense_mask(), probs, rtol=0, atol=0)
    exp_indices, exp_ptr, exp_data = index_of(probs)
    indices, ptr, data = mask.get_index_mask()
    assert torch.equal(indices.cpu(), exp_indices.cpu())
    assert torch.equal(ptr.cpu(), exp_ptr.cpu())
    torch.testing.assert_close(data, exp_data, rtol=0, atol=0)
    row_idx, row_probs = mask.get_rows()
    cap = row_idx.shape[-1]
    exp_idx, exp_probs = rows_of(probs, cap=cap)
    assert torch.equal(row_idx, exp_idx)
    torch.testing.assert_close(row_probs, exp_probs, rtol=0, atol=0)
    expected_density = float((probs > 0).sum()) / math.prod(shape)
    assert mask.get_density() == pytest.approx(expected_density)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state", ["dense", "index", "rows"])
def test_dtype_of_a_stored_mask(state, dtype, gen):
    probs = random_probs((3, 7), gen)
    mask = build(state, probs, dtype=dtype)
    assert mask.dtype == dtype
    dense = mask.get_dense_mask()
    assert dense.dtype == dtype
    torch.testing.assert_close(dense, probs.to(dtype), rtol=0, atol=0)
    assert mask.get_index_mask()[2].dtype == dtype
    assert mask.get_rows()[1].dtype == torch.float32


def test_rows_density_counts_only_positive_probabilities():
    idx = torch.tensor([[0, 2, 3, -1], [1, -1, -1, -1]], dtype=torch.int32)
    probs = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.25, 0.0, 0.0, 0.0]])
    mask = Mask.create_from_rows((2, 5), idx, probs)
    assert mask.get_density() == pytest.approx(3 / 10)
    indices, ptr, data = mask.get_index_mask()
    assert indices.tolist() == [0, 3, 6] and ptr.tolist() == [0, 2, 3]
    assert data.tolist() == [1.0, 0.5, 0.25]


def test_index_duplicates_resolve_to_last_occurrence():
    shape = (2, 4)
    indices = torch.tensor([1, 3, 1, 5, 5, 5])
    ptr = torch.tensor([0, 3, 6])
    data = torch.tensor([0.2, 0.4, 0.6, 0.1, 0.9, 0.3])
    mask = Mask.create_mask_from_indices(shape, indices, ptr, data, dtype=torch.float32)
    expected = torch.tensor([[0.0, 0.6, 0.0, 0.4], [0.0, 0.3, 0.0, 0.0]])
    torch.testing.assert_close(mask.get_dense_mask(), expected, rtol=0, atol=0)
    assert mask.get_density() == pytest.approx(3 / 8)  # repeated positions count once
    got_indices, got_ptr, got_data = mask.get_index_mask()  # stored arrays, repeats kept
    assert torch.equal(got_indices, indices) and torch.equal(got_ptr, ptr)
    assert torch.equal(got_data, data)


def test_index_without_data_means_ones():
    mask = Mask.create_mask_from_indices(
        (2, 3), torch.tensor([0, 4]), torch.tensor([0, 1, 2]), None, dtype=torch.float16
    )
    assert torch.equal(mask.get_index_mask()[2], torch.ones(2, dtype=torch.float16))
    expected = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float16)
    assert torch.equal(mask.get_dense_mask(), expected)


# ----------------------------------------------------------------------------------------------
# D5: no aliasing of a caller's tensor, no mutation through getters
@pytest.mark.parametrize("state", ["dense", "index", "rows"])
def test_constructors_copy_the_callers_tensors(state, gen):
    probs = random_probs((3, 6), gen)
    if state == "dense":
        given = [probs.clone()]
        mask = Mask.create_mask_from_dense_mask((3, 6), given[0], dtype=torch.float32)
    elif state == "index":
        given = list(index_of(probs))
        mask = Mask.create_mask_from_indices((3, 6), *given, dtype=torch.float32)
    else:
        given = list(rows_of(probs))
        mask = Mask.create_from_rows((3, 6), *given)
    for tensor in given:
        tensor.zero_()
    torch.testing.assert_close(mask.get_dense_mask(), probs, rtol=0, atol=0)


@pytest.mark.parametrize("state", ["dense", "index"])
def test_getters_return_copies(state, gen):
    probs = random_probs((3, 6), gen)
    mask = build(state, probs)
    mask.get_dense_mask().fill_(0.5)
    for tensor in mask.get_index_mask():
        tensor.zero_()
    torch.testing.assert_close(mask.get_dense_mask(), probs, rtol=0, atol=0)


def test_trusted_rows_are_taken_as_they_are(gen):
    idx, probs = rows_of(random_probs((2, 3, 9), gen))
    mask = Mask.create_from_rows((2, 3, 9), idx, probs, dtype=torch.bfloat16, trusted=True)
    got_idx, got_probs = mask.get_rows()
    assert got_idx is idx and got_probs is probs
    assert mask.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="trusted row masks need int32 indices and float32"):
        Mask.create_from_rows((2, 3, 9), idx.long(), probs, trusted=True)
    with pytest.raises(ValueError, match="row indices shape must be"):
        Mask.create_from_rows((3, 3, 9), idx, probs, trusted=True)


def test_untrusted_rows_accept_other_integer_and_float_dtypes():
    idx = torch.tensor([[0, 3, -1]])
    probs = torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64)
    mask = Mask.create_from_rows((1, 4), idx, probs)
    row_idx, row_probs = mask.get_rows()
    assert row_idx.dtype == torch.int32 and row_probs.dtype == torch.float32
    assert torch.equal(mask.get_dense_mask(), torch.tensor([[0.5, 0.0, 0.0, 1.0]]))


# ----------------------------------------------------------------------------------------------
# D2: values outside [0, 1] and malformed inputs are rejected when built from a caller's data
BAD_VALUES = [1.5, -0.25, float("nan")]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_dense_values_outside_unit_interval_are_rejected(bad):
    mask = torch.tensor([[0.5, bad], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"mask must hold probabilities in \[0, 1\], got values"):
        Mask.create_mask_from_dense_mask((2, 2), mask, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"mask must hold probabilities in \[0, 1\]"):
        Mask((2, 2), torch.float32, None, mask=mask, from_dense_mask=True)


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_index_data_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"data must hold probabilities in \[0, 1\]"):
        Mask.create_mask_from_indices(
            (2, 2),
            torch.tensor([0, 3]),
            torch.tensor([0, 1, 2]),
            torch.tensor([bad, 0.5]),
            dtype=torch.float32,
        )


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_row_probs_outside_unit_interval_are_rejected(bad):
    idx = torch.tensor([[0, 2]], dtype=torch.int32)
    probs = torch.tensor([[0.5, bad]])
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\]"):
        Mask.create_from_rows((1, 4), idx, probs)
    with pytest.raises(ValueError, match=r"row_probs must hold probabilities in \[0, 1\]"):
        Mask((1, 4), torch.float32, None, row_indices=idx, row_probs=probs, from_rows=True)


def test_range_error_message_names_the_range_found():
    with pytest.raises(ValueError, match=r"got values in \[0.0, 2.0\]"):
        Mask.create_mask_from_dense_mask((1, 3), torch.tensor([[0.0, 2.0, 1.0]]), torch.float32)


@pytest.mark.parametrize(
    "idx, message",
    [
        ([[0, 4, -1]], r"indices must lie in \[0, 4\) or be -1"),
        ([[0, -2, -1]], r"indices must lie in \[0, 4\) or be -1"),
        ([[2, 1, -1]], "ascending order"),
        ([[1, 1, -1]], "ascending order"),
        ([[1, -1, 2]], "padding at the end"),
    ],
)
def test_malformed_rows_are_rejected(idx, message):
    probs = torch.tensor([[0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match=message):
        Mask.create_from_rows((1, 4), torch.tensor(idx, dtype=torch.int32), probs)


def test_row_shape_errors():
    idx = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="row indices and probs must have one shape"):
        Mask.create_from_rows((2, 5), idx, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"row indices shape must be \(3, 'cap'\), got \(2, 3\)"):
        Mask.create_from_rows((3, 5), idx, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="probs must be a floating tensor"):
        Mask.create_from_rows((2, 5), idx, torch.zeros(2, 3, dtype=torch.int32))


def test_index_errors():
    cpu_long = dict(dtype=torch.float32)
    with pytest.raises(ValueError, match="ptr.numel\\(\\) must be 3, got 2"):
        Mask.create_mask_from_indices(
            (2, 3), torch.tensor([0]), torch.tensor([0, 1]), None, **cpu_long
        )
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        Mask.create_mask_from_indices(
            (2, 3), torch.tensor([0, 6]), torch.tensor([0, 1, 2]), None, **cpu_long
        )
    with pytest.raises(ValueError, match="data.numel\\(\\) must equal indices.numel\\(\\)"):
        Mask.create_mask_from_indices(
            (2, 3), torch.tensor([0, 4]), torch.tensor([0, 1, 2]), torch.ones(3), **cpu_long
        )
    with pytest.raises(ValueError, match="indices must be an integer tensor"):
        Mask.create_mask_from_indices(
            (2, 3), torch.tensor([0.0]), torch.tensor([0, 1, 1]), None, **cpu_long
        )


def test_dense_shape_error():
    with pytest.raises(ValueError, match=r"mask.shape must be \(2, 3\), got \(3, 2\)"):
        Mask.create_mask_from_dense_mask((2, 3), torch.zeros(3, 2), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# create_from_row_wise_idx
@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("mask_type", ["dense", "index"])
def test_row_wise_idx_basic(mode, mask_type):
    shape = (2, 5)
    idx = torch.tensor([[0, 2, 4], [1, 3, 4]])
    data = torch.tensor([[1.0, 0.5, 0.8], [0.6, 0.9, 0.3]])
    mask = Mask.create_from_row_wise_idx(shape, idx, data, mask_type, torch.float32, mode=mode)
    assert state_of(mask) == mask_type
    expected = torch.tensor([[1.0, 0.0, 0.5, 0.0, 0.8], [0.0, 0.6, 0.0, 0.9, 0.3]])
    torch.testing.assert_close(mask.get_dense_mask(), expected, rtol=0, atol=0)
    indices, ptr, values = mask.get_index_mask()
    assert indices.tolist() == [0, 2, 4, 6, 8, 9]
    assert ptr.tolist() == [0, 3, 6]
    torch.testing.assert_close(values, torch.tensor([1.0, 0.5, 0.8, 0.6, 0.9, 0.3]))


@pytest.mark.parametrize("shape", [(9,), (4, 9), (2, 3, 6)])
@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("mask_type", ["dense", "index"])
@pytest.mark.parametrize("use_padding", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_wise_idx_duplicates_and_padding(shape, mode, mask_type, use_padding, dtype, device):
    gen = torch.Generator().manual_seed(len(shape))
    k = 2 * shape[-1]  # many repeats per row
    idx = torch.randint(0, shape[-1], shape[:-1] + (k,), generator=gen)
    idx = torch.where(torch.rand(idx.shape, generator=gen) < 0.2, -1, idx)
    data = torch.rand(idx.shape, generator=gen)
    expected = last_write(shape, idx, data).to(dtype)
    mask = Mask.create_from_row_wise_idx(
        shape, idx.to(device), data.to(device), mask_type, dtype, use_padding=use_padding, mode=mode
    )
    assert state_of(mask) == mask_type and mask.dtype == dtype
    assert mask.device.type == torch.device(device).type
    torch.testing.assert_close(mask.get_dense_mask().cpu(), expected, rtol=0, atol=0)
    indices, ptr, _ = mask.get_index_mask()
    assert torch.all(indices[1:] > indices[:-1])  # sorted, no repeats left
    assert ptr[-1] == indices.numel()


def test_row_wise_idx_all_padding_gives_zeros():
    idx = torch.full((2, 3), -1)
    for mode in ("dense", "sparse"):
        mask = Mask.create_from_row_wise_idx(
            (2, 5), idx, torch.zeros(2, 3), "dense", torch.float32, use_padding=True, mode=mode
        )
        assert torch.equal(mask.get_dense_mask(), torch.zeros(2, 5))
        assert not mask.is_empty  # only the EMPTY constructor sets the flag


def test_row_wise_idx_errors_in_reference_order():
    idx = torch.tensor([[0, 1]])
    data = torch.tensor([[1.0, 0.5]])
    make = Mask.create_from_row_wise_idx
    with pytest.raises(ValueError, match="Invalid mode"):
        make((1, 5), idx, data, "dense", torch.float32, mode="other")
    with pytest.raises(ValueError, match="shape must have at least one dimension"):
        make((), idx, data, "dense", torch.float32)
    with pytest.raises(ValueError, match="row_wise_idx must have at least one column"):
        make((1, 5), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), "dense", torch.float32)
    with pytest.raises(ValueError, match=r"row_wise_idx.shape must be \(2, 2\)"):
        make((2, 5), idx, data, "dense", torch.float32)
    with pytest.raises(ValueError, match="data.shape must match row_wise_idx.shape"):
        make((1, 5), idx, torch.ones(1, 3), "dense", torch.float32)
    with pytest.raises(ValueError, match="type must be 'index' or 'dense', got invalid"):
        make((1, 5), idx, data, "invalid", torch.float32)
    with pytest.raises(ValueError, match=r"row_wise_idx must lie in \[0, 5\)"):
        make((1, 5), torch.tensor([[0, 5]]), data, "dense", torch.float32)
    with pytest.raises(ValueError, match=r"data must hold probabilities in \[0, 1\]"):
        make((1, 5), idx, torch.tensor([[1.0, 1.5]]), "index", torch.float32, mode="sparse")


def test_row_wise_idx_padding_value_outside_range_is_ignored():
    idx = torch.tensor([[0, -1]])
    data = torch.tensor([[0.5, 7.0]])  # the padded entry's value is never read
    mask = Mask.create_from_row_wise_idx((1, 3), idx, data, "dense", torch.float32)
    assert torch.equal(mask.get_dense_mask(), torch.tensor([[0.5, 0.0, 0.0]]))


# ----------------------------------------------------------------------------------------------
# apply_mask / apply_inv_mask
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_apply_mask_and_inverse(state, mode, gen, device):
    shape = (2, 3, 7)
    probs = random_probs(shape, gen, device=device)
    x = torch.randn(shape, generator=gen).to(device)
    mask = build(state, probs)
    applied = mask.apply_mask(x, mode=mode)
    inverse = mask.apply_inv_mask(x, mode=mode)
    if state in ("full", "empty"):
        assert applied is x and inverse is x
        return
    torch.testing.assert_close(applied, x * probs, rtol=0, atol=0)
    expected = torch.where(probs > 0, x / probs.clamp_min(1e-30), torch.zeros_like(x))
    torch.testing.assert_close(inverse, expected, rtol=1e-6, atol=0)
    ones = probs == 1.0
    assert torch.equal(inverse[ones], x[ones])  # D2: weight exactly 1/p, no +1e-6


def test_apply_inv_mask_dtype_promotion(gen):
    probs = random_probs((3, 5), gen)
    mask = build("dense", probs, dtype=torch.bfloat16)
    x = torch.randn(3, 5, generator=gen)
    out = mask.apply_inv_mask(x)
    assert out.dtype == torch.float32
    p = probs.to(torch.bfloat16).float()
    torch.testing.assert_close(out, torch.where(p > 0, x / p.clamp_min(1e-30), 0.0))


@pytest.mark.parametrize("method", ["apply_mask", "apply_inv_mask"])
def test_apply_errors(method):
    mask = Mask.create_full_mask((2, 3), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"input_tensor.shape must be \(2, 3\), got \(3, 2\)"):
        getattr(mask, method)(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="Invalid mode"):
        getattr(mask, method)(torch.zeros(2, 3), mode="other")


# ----------------------------------------------------------------------------------------------
# merge_mask
def expected_merge_state(a, b, mode):
    if "full" in (a, b):
        return "full"
    if a == b == "empty":
        return "empty"
    if {a, b} <= {"rows", "empty"}:
        return "rows"
    return "dense" if mode == "dense" else "index"


@pytest.mark.parametrize("a", STATES)
@pytest.mark.parametrize("b", STATES)
@pytest.mark.parametrize("mode", ["dense", "sparse"])
@pytest.mark.parametrize("inplace", [False, True])
def test_merge_rules(a, b, mode, inplace, gen, device):
    shape = (2, 3, 9)
    pa = random_probs(shape, gen, device=device)
    pb = random_probs(shape, gen, device=device)
    mask_a, mask_b = build(a, pa), build(b, pb)
    b_before = mask_b.get_dense_mask()
    merged = mask_a.merge_mask(mask_b, inplace=inplace, mode=mode)
    assert (merged is mask_a) == inplace
    assert state_of(merged) == expected_merge_state(a, b, mode)
    assert merged.dtype == torch.float32 and merged.shape == shape
    if merged.is_full:
        expected = torch.ones(shape)
    else:
        expected = torch.clamp(values_of(a, pa) + values_of(b, pb), 0.0, 1.0)  # D4
    torch.testing.assert_close(merged.get_dense_mask().cpu(), expected.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(mask_b.get_dense_mask(), b_before, rtol=0, atol=0)
    if not inplace:  # the receiver is untouched
        assert state_of(mask_a) == a
        torch.testing.assert_close(mask_a.get_dense_mask(), values_of(a, pa), rtol=0, atol=0)


def test_merge_of_rows_is_a_row_union(gen):
    shape = (2, 4, 11)
    pa = random_probs(shape, gen, density=0.3)
    pb = random_probs(shape, gen, density=0.3)
    mask_a = Mask.create_from_rows(shape, *rows_of(pa, cap=6))
    mask_b = Mask.create_from_rows(shape, *rows_of(pb, cap=8))
    merged = mask_a.merge_mask(mask_b, inplace=False)
    idx, probs = merged.get_rows()
    assert idx.shape == shape[:-1] + (11,)  # min(6 + 8, n)
    exp_idx, exp_probs = rows_of(torch.clamp(pa + pb, 0, 1), cap=11)
    assert torch.equal(idx, exp_idx)
    torch.testing.assert_close(probs, exp_probs, rtol=0, atol=0)
    merged_small = Mask.create_from_rows(shape, *rows_of(pa, cap=3 + 6)).merge_mask(
        Mask.create_from_rows(shape, *rows_of(torch.zeros(shape), cap=1)), inplace=False
    )
    assert merged_small.get_rows()[0].shape[-1] == 10


def test_merge_keeps_receiver_dtype(gen):
    probs = random_probs((3, 6), gen)
    a = build("dense", probs, dtype=torch.bfloat16)
    b = build("rows", probs, dtype=torch.float32)
    merged = a.merge_mask(b, inplace=False)
    assert merged.dtype == torch.bfloat16
    assert merged.get_dense_mask().dtype == torch.bfloat16


def test_merge_reference_examples():
    a = Mask.create_mask_from_dense_mask(
        (2, 5), torch.tensor([[1.0, 0.0, 0.5, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0, 0.3]]), torch.float32
    )
    b = Mask.create_mask_from_dense_mask(
        (2, 5), torch.tensor([[0.0, 0.2, 0.8, 0.0, 0.4], [0.1, 0.0, 0.0, 0.6, 0.0]]), torch.float32
    )
    expected = torch.tensor([[1.0, 0.2, 1.0, 0.0, 0.4], [0.1, 0.8, 0.0, 0.6, 0.3]])
    dense = a.merge_mask(b, inplace=False, mode="dense")
    assert dense.from_dense_mask and not dense.from_index
    sparse = a.merge_mask(b, inplace=False, mode="sparse")
    assert sparse.from_index and not sparse.from_dense_mask
    for merged in (dense, sparse):
        torch.testing.assert_close(merged.get_dense_mask(), expected)


def test_merge_errors():
    cpu = torch.device("cpu")
    a = Mask.create_empty_mask((2, 5), torch.float32, cpu)
    with pytest.raises(ValueError, match="Cannot merge masks with different shapes"):
        a.merge_mask(Mask.create_empty_mask((3, 5), torch.float32, cpu), inplace=False)
    with pytest.raises(ValueError, match="Invalid mode"):
        a.merge_mask(a, inplace=False, mode="other")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_merge_empty_receiver_takes_other_device(gen):
    probs = random_probs((2, 6), gen, device="cuda")
    empty = Mask.create_empty_mask((2, 6), torch.float32, torch.device("cpu"))
    for state in ("dense", "rows"):
        merged = empty.merge_mask(build(state, probs), inplace=False)
        assert merged.device.type == "cuda"
        assert merged.get_dense_mask().device.type == "cuda"


def test_repr_lists_the_flags():
    mask = Mask.create_full_mask((2, 3), torch.float32, torch.device("cpu"))
    text = repr(mask)
    assert "is_full=True" in text and "shape=(2, 3)" in text and "from_rows=False" in text


def test_public_import_paths_name_one_class():
    import sparse_attention_hub.sparse_attention as sa
    from sparse_attention_hub.sparse_attention import utils

    assert sa.Mask is Mask and utils.Mask is Mask and sa.utils is utils
