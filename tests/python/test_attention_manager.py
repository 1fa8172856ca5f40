"""AttentionManager: backends against plain PyTorch math, selection on simulated devices,
switching, benchmarking and the cost formulas."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparse_attention_hub.attention_manager import (
    ATTENTION_TYPES,
    AttentionInputs,
    AttentionManager,
    AttentionManagerMixin,
    AttentionShape,
    ChunkedAttention,
    DeviceProperties,
    SelectionPolicy,
    get_compute_complexity,
    get_memory_usage,
    model_attention_shape,
    select_attention_type,
)
from sparse_attention_hub.attention_manager.backends import BACKENDS
from sparse_attention_hub.attention_manager.backends.chunked import chunk_sizes
from sparse_attention_hub.sparse_attention.utils.mask import Mask

NEG_INF = float("-inf")
GIB = 2**30


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (waking the pool costs more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Reference: dense weighted softmax in float64 (weight 1/p on kept keys, additive mask), K/V
# repeated per query head; a row with no usable key gives 0.
def reference_attention(q, k, v, attention_mask=None, scale=None, dense_probs=None):
    g = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    if attention_mask is not None:
        m = attention_mask[..., : k.shape[2]]
        if m.dtype == torch.bool:
            s = s.masked_fill(~m, NEG_INF)
        else:
            forbidden = (m == torch.finfo(m.dtype).min) | (m == NEG_INF)
            s = (s + m.double().masked_fill(forbidden, 0.0)).masked_fill(forbidden, NEG_INF)
    if dense_probs is not None:
        p = dense_probs.double()
        s = torch.where(p > 0, s - torch.log(p.clamp_min(1e-30)), NEG_INF)
    w = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return w @ v


def random_rows(b, h, sq, sk, n, gen, empty_row=True):
    """Row form with n random keys per row (p in (0.1, 1], half exactly 1), padded to n + 3,
    plus its dense probabilities; with ``empty_row`` row (0, 0, 0) keeps no key."""
    cap = n + 3
    idx = torch.full((b, h, sq, cap), -1, dtype=torch.int32)
    probs = torch.zeros(b, h, sq, cap)
    keys = torch.rand(b * h * sq, sk, generator=gen).topk(n, dim=-1).indices.sort(-1).values
    idx.view(-1, cap)[:, :n] = keys.int()
    p = torch.rand(b * h * sq, n, generator=gen) * 0.9 + 0.1
    p[torch.rand(b * h * sq, n, generator=gen) < 0.5] = 1.0
    probs.view(-1, cap)[:, :n] = p
    if empty_row:
        idx[0, 0, 0] = -1
        probs[0, 0, 0] = 0.0
    dense = torch.zeros(b * h * sq, sk + 1)  # padding goes to the spare last column
    cols = idx.view(-1, cap).long()
    dense.scatter_(1, torch.where(cols >= 0, cols, sk), probs.view(-1, cap))
    return idx, probs, dense[:, :sk].reshape(b, h, sq, sk)


def hf_mask(b, sq, sk, kind, dtype):
    """Causal mask with left padding of batch row 0 (3 keys) and one fully masked query row
    (batch 1, query 0), as 4-D bool or additive (finfo.min) of width sk + 2."""
    pos = sk - sq + torch.arange(sq)[:, None]
    allowed = (torch.arange(sk + 2)[None, :] <= pos).expand(b, sq, sk + 2).clone()
    allowed[0, :, :3] = False
    allowed[1, 0, :] = False
    allowed = allowed[:, None]
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def tolerance(name, dtype):
    """By dtype; the sah kernels accumulate float64 inputs in float32."""
    if name == "sparse" and dtype == torch.float64:
        return TOLERANCES[torch.float32]
    return TOLERANCES[dtype]


def backend(name):
    if name == "chunked":  # several query blocks and key chunks on these small shapes
        return ChunkedAttention(query_block=2, chunk_bytes=4 * 2 * 4 * 2 * 64)
    return BACKENDS[name]()


# ----------------------------------------------------------------------------------------------
# Every backend gives the reference output.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "heads, mask_kind", [((4, 2), None), ((4, 2), "bool"), ((2, 2), "additive"), ((4, 1), "bool")]
)
@pytest.mark.parametrize("sparse_kind", [None, "rows", "mask", "dense"])
def test_backends_match_reference(dtype, heads, mask_kind, sparse_kind):
    gen = torch.Generator().manual_seed(0)
    b, (h, kv_h), sq, sk, d = 2, heads, 5, 150, 16
    q = torch.randn(b, h, sq, d, generator=gen).to(dtype)
    k = torch.randn(b, kv_h, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, kv_h, sk, d, generator=gen).to(dtype)
    mask = None if mask_kind is None else hf_mask(b, sq, sk, mask_kind, dtype)
    idx, probs, dense = random_rows(b, h, sq, sk, 40, gen)
    sparse = {
        None: None,
        "rows": (idx, probs),
        "mask": Mask.create_from_rows((b, h, sq, sk), idx, probs),
        "dense": dense,
    }[sparse_kind]
    expected = reference_attention(q, k, v, mask, 0.3, None if sparse is None else dense)
    for name in ATTENTION_TYPES:
        out = backend(name)(q, k, v, mask, 0.3, sparse)
        assert out.shape == (b, h, sq, d) and out.dtype == dtype, name
        tol = tolerance(name, dtype)
        torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol, msg=name)


def test_empty_rows_give_zero():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 10, 8), torch.randn(1, 1, 10, 8)
    idx = torch.full((1, 2, 3, 4), -1, dtype=torch.int32)
    probs = torch.zeros(1, 2, 3, 4)
    for name in ATTENTION_TYPES:
        out = backend(name)(q, k, v, sparse_mask=(idx, probs))
        assert torch.equal(out, torch.zeros_like(out)), name


def test_full_and_empty_masks_mean_dense():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 2, 8, generator=gen) for _ in range(3))
    expected = reference_attention(q, k, v)
    for m in (
        Mask.create_full_mask((1, 2, 2, 2), torch.float32, "cpu"),
        Mask.create_empty_mask((1, 2, 2, 2), torch.float32, "cpu"),
    ):
        for name in ATTENTION_TYPES:
            torch.testing.assert_close(backend(name)(q, k, v, sparse_mask=m).double(), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=torch.randn(1, 3, 6, 8), v=torch.randn(1, 3, 6, 8)), "multiple of the kv heads"),
        (dict(v=torch.randn(1, 2, 5, 8)), "same shape"),
        (dict(q=torch.randn(2, 4, 8)), "queries must be 4-D"),
        (dict(attention_mask=torch.ones(1, 1, 2, 5, dtype=torch.bool)), "attention_mask"),
        (
            dict(sparse_mask=(torch.zeros(1, 4, 3, 2, dtype=torch.int32), torch.zeros(1, 4, 2, 2))),
            "sparse_mask indices",
        ),
        (dict(sparse_mask=torch.ones(1, 4, 2, 5)), "dense probabilities"),
    ],
)
def test_backends_reject_bad_inputs(kwargs, match):
    args = dict(q=torch.randn(1, 4, 2, 8), k=torch.randn(1, 2, 6, 8), v=torch.randn(1, 2, 6, 8))
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=match):
        BACKENDS["dense"]()(q, k, v, **args)


# ----------------------------------------------------------------------------------------------
# Selection on simulated devices.
CPU = DeviceProperties("cpu", "cpu", free_memory=16 * GIB)
H100 = DeviceProperties("cuda", "H100", compute_capability=(9, 0), free_memory=60 * GIB)
A100 = DeviceProperties("cuda", "A100", compute_capability=(8, 0), free_memory=60 * GIB)
V100 = DeviceProperties("cuda", "V100", compute_capability=(7, 0), free_memory=30 * GIB)
LOW = 2 * GIB  # free bytes of a nearly full device


def llama(q_len, k_len, dtype=torch.bfloat16, sparse=None, attention_mask=False, batch=1):
    return AttentionShape(
        batch, 32, 8, q_len, k_len, 128, dtype, attention_mask, sparse, 1.0 if not sparse else 0.05
    )


def low(device):
    return DeviceProperties(
        device.type, device.name, device.compute_capability, LOW, device.sah_kernels
    )


@pytest.mark.parametrize(
    "device, shape, expected, reason",
    [
        # CPU: the sah kernel for decode (dense or sparse), torch's flash kernel for prefill.
        (CPU, llama(1, 8192, torch.float32), "sparse", "masked_attention"),
        (CPU, llama(512, 8192, torch.float32), "sdpa", "CPU flash"),
        (CPU, llama(512, 8192, torch.float32, "rows"), "sparse", "kept keys"),
        (CPU, llama(512, 8192, torch.bfloat16, "dense"), "sparse", "kept keys"),
        (DeviceProperties("cpu", sah_kernels=False), llama(1, 8192), "sdpa", "CPU flash"),
        # sm_90 runs the sah kernels; sm_80 does not (the build targets sm_90a).
        (H100, llama(1, 131072, sparse="rows"), "sparse", "sm_90"),
        (H100, llama(1, 131072, torch.float32, sparse="rows"), "sparse", "kept keys"),
        (A100, llama(1, 131072, sparse="rows"), "sdpa", "log(1/p) bias"),
        (A100, llama(64, 131072, sparse="rows"), "sdpa", "log(1/p) bias"),
        (low(A100), llama(1, 131072, sparse="rows"), "sdpa", "log(1/p) bias"),
        (low(A100), llama(4096, 131072, sparse="rows"), "chunked", "bounded"),
        (
            DeviceProperties("cuda", "H100", (9, 0), 60 * GIB, sah_kernels=False),
            llama(1, 4096, sparse="rows"),
            "sdpa",
            "not built",
        ),
        # dense attention on CUDA: SDPA's fused kernels, or chunked when its math kernel
        # would not fit.
        (H100, llama(1, 131072), "sdpa", "FlashAttention"),
        (H100, llama(8192, 8192), "sdpa", "FlashAttention"),
        (low(H100), llama(8192, 131072, attention_mask=True), "sdpa", "memory-efficient"),
        (H100, llama(8192, 8192, torch.float32), "sdpa", "memory-efficient kernel (float32)"),
        (V100, llama(1, 131072), "sdpa", "math kernel"),
        (low(V100), llama(8192, 131072), "chunked", "sm_80"),
        (low(V100), llama(8192, 131072, torch.float16), "sdpa", "FlashAttention needs sm_80"),
        (low(H100), llama(8192, 131072, torch.float64), "chunked", "float64"),
        (H100, llama(1024, 1024, torch.float64), "sdpa", "math kernel"),
        (
            DeviceProperties("cuda", "?", (8, 0), None),
            llama(8192, 131072, torch.float64),
            "sdpa",
            "no memory limit",
        ),
    ],
)
def test_selection_rules(device, shape, expected, reason):
    selection = select_attention_type(shape, device)
    assert selection.attention_type == expected, selection.reason
    assert reason in selection.reason
    assert not selection.explicit


def test_selection_policy_thresholds():
    shape = llama(32, 131072, sparse="rows")  # a 1.25 GiB bias; 2 GiB free
    assert select_attention_type(shape, low(A100)).attention_type == "chunked"
    roomy = select_attention_type(shape, low(A100), SelectionPolicy(memory_fraction=1.0))
    assert roomy.attention_type == "sdpa"
    four = select_attention_type(
        llama(4, 8192, torch.float32), CPU, SelectionPolicy(cpu_kernel_max_queries=4)
    )
    assert four.attention_type == "sparse"
    with pytest.raises(ValueError, match="memory_fraction"):
        SelectionPolicy(memory_fraction=0.0)


def test_manager_selects_logs_and_activates(caplog):
    manager = AttentionManager("cpu", device_properties=A100)
    assert manager.attention_type is None and manager.module is None
    with caplog.at_level(logging.INFO, logger="sparse_attention_hub.attention_manager"):
        selection = manager.select_attention_module(shape=llama(1, 4096, sparse="rows"))
    assert selection.attention_type == "sdpa" == manager.attention_type
    assert manager.module is manager.backends["sdpa"]
    assert any("'sdpa'" in r.getMessage() and "bias" in r.getMessage() for r in caplog.records)
    explicit = manager.select_attention_module("chunked")
    assert explicit.explicit and manager.attention_type == "chunked"
    with pytest.raises(ValueError, match="needs a shape"):
        manager.select_attention_module()


def test_manager_chooses_from_tensors_on_first_call():
    manager = AttentionManager("cpu", device_properties=CPU)
    gen = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 4, 1, 8, generator=gen), *torch.randn(2, 1, 2, 20, 8, generator=gen)
    out = manager(q, k, v)
    assert manager.attention_type == "sparse"
    torch.testing.assert_close(out.double(), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)
    hf_out, weights = manager.attention_forward(None, q, k, v, None, scaling=None)
    assert weights is None and hf_out.shape == (1, 1, 4, 8)
    torch.testing.assert_close(hf_out, out.transpose(1, 2))


# ----------------------------------------------------------------------------------------------
# Switching.
def test_switch_attention_module():
    manager = AttentionManager("cpu", device_properties=CPU)
    for name in ATTENTION_TYPES:
        assert manager.switch_attention_module(name) is True
        assert manager.attention_type == name and manager.selection.explicit
    assert manager.switch_attention_module("chunked") is True  # already active


def test_switch_to_unavailable_keeps_current(caplog):
    manager = AttentionManager("cpu", device_properties=A100, attention_type="sdpa")
    assert "sparse" not in manager.available_attention_types()
    with caplog.at_level(logging.WARNING, logger="sparse_attention_hub.attention_manager"):
        assert manager.switch_attention_module("sparse") is False
    assert manager.attention_type == "sdpa"
    assert "does not run" in caplog.text
    with pytest.raises(ValueError, match="does not run"):
        manager.select_attention_module("sparse")


@pytest.mark.parametrize("name", ["flash", "", "SDPA", "dense "])
def test_invalid_names_raise(name):
    manager = AttentionManager("cpu", device_properties=CPU)
    expected = r"attention_type must be one of \['dense', 'sdpa', 'sparse', 'chunked'\]"
    with pytest.raises(ValueError, match=expected):
        manager.switch_attention_module(name)
    with pytest.raises(ValueError, match=expected):
        manager.select_attention_module(name)
    with pytest.raises(ValueError, match=expected):
        AttentionManager("cpu", device_properties=CPU, attention_type=name)
    with pytest.raises(ValueError, match=expected):
        manager.get_memory_usage(llama(1, 64), name)
    assert manager.attention_type is None


# ----------------------------------------------------------------------------------------------
# Benchmark.
def small_inputs(sparse=True):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 1, 16, generator=gen)
    k, v = torch.randn(2, 1, 2, 256, 16, generator=gen)
    idx, probs, _ = random_rows(1, 4, 1, 256, 32, gen, empty_row=False)
    return AttentionInputs(q, k, v, sparse_mask=(idx, probs) if sparse else None)


def test_benchmark_attention_types_on_cpu():
    manager = AttentionManager("cpu", device_properties=CPU)
    inputs = small_inputs()
    result = manager.benchmark_attention_types(inputs, repeats=2, warmup=1)
    assert list(result) == list(ATTENTION_TYPES)
    for name, row in result.items():
        assert set(row) == {"ms", "peak_mb"}
        assert row["ms"] > 0 and row["peak_mb"] > 0
        estimate = manager.get_memory_usage(inputs, name).transient_bytes / 2**20
        assert row["peak_mb"] == pytest.approx(estimate)
    assert manager.attention_type is None  # benchmarking activates nothing


def test_benchmark_subset_and_dict_input():
    manager = AttentionManager("cpu", device_properties=A100)  # no sah kernels "here"
    sample = dict(queries=torch.randn(1, 2, 3, 8), keys=torch.randn(1, 1, 9, 8))
    sample["values"] = torch.randn(1, 1, 9, 8)
    assert set(manager.benchmark_attention_types(sample, repeats=1, warmup=0)) == {
        "dense",
        "sdpa",
        "chunked",
    }
    only = manager.benchmark_attention_types(sample, ["dense"], repeats=1, warmup=0)
    assert list(only) == ["dense"]
    with pytest.raises(ValueError, match="attention_type must be one of"):
        manager.benchmark_attention_types(sample, ["fast"])
    with pytest.raises(ValueError, match="unknown keys"):
        manager.benchmark_attention_types({**sample, "mask": None})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_benchmark_and_backends_on_cuda():
    manager = AttentionManager("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, h, kv_h, sk, d = 1, 32, 8, 8192, 128
    q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b, kv_h, sk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b, kv_h, sk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    n = sk // 20
    idx = torch.rand(b * h, sk, device="cuda", generator=gen).topk(n, -1).indices
    idx = idx.sort(-1).values.int().view(b, h, 1, n)
    probs = torch.ones(b, h, 1, n, device="cuda")
    inputs = AttentionInputs(q, k, v, sparse_mask=(idx, probs))
    result = manager.benchmark_attention_types(inputs, repeats=5, warmup=2)
    assert set(result) == set(manager.available_attention_types())
    assert {"dense", "sdpa", "chunked"} <= set(result)
    for row in result.values():
        assert row["ms"] > 0 and row["peak_mb"] >= 0
    expected = manager.backends["dense"](q, k, v, sparse_mask=(idx, probs)).float()
    for name in result:
        out = manager.backends[name](q, k, v, sparse_mask=(idx, probs)).float()
        torch.testing.assert_close(out, expected, atol=3e-2, rtol=3e-2, msg=name)


# ----------------------------------------------------------------------------------------------
# Cost formulas, by hand: b=1, h=4, g=2, q=1, k=1024, d=64, bf16 (e=2), rows at density 1/4
# (n=256 keys per row, 4 rows).
SHAPE = AttentionShape(1, 4, 2, 1, 1024, 64, torch.bfloat16, False, "rows", 0.25)
Q_BYTES = 4 * 64 * 2  # 512
KV_BYTES = 2 * 2 * 1024 * 64 * 2  # 524288
ROW_MASK_BYTES = 8 * 4 * 256  # 8192
S = 4 * 1024  # score elements


def test_bytes_read_formulas():
    dense = Q_BYTES + KV_BYTES
    sparse = get_memory_usage(SHAPE, "sparse")
    assert sparse.dense_bytes_read == dense
    assert sparse.bytes_read == Q_BYTES + 4 * 256 * 2 * 64 * 2 + ROW_MASK_BYTES  # 270848
    assert sparse.speedup_vs_dense == pytest.approx(524800 / 270848)
    for name in ("dense", "sdpa", "chunked"):  # read all of K and V, plus the mask
        usage = get_memory_usage(SHAPE, name)
        assert usage.bytes_read == dense + ROW_MASK_BYTES
        assert usage.speedup_vs_dense < 1
    # Query heads gather separately: at density 3/4 the gathers would exceed K+V, so capped.
    heavy = get_memory_usage(
        AttentionShape(1, 4, 2, 1, 1024, 64, density=0.75, mask_format="rows"), "sparse"
    )
    assert heavy.bytes_read == Q_BYTES + KV_BYTES + 8 * 4 * 768
    as_dense = AttentionShape(1, 4, 2, 1, 1024, 64, torch.bfloat16, False, "dense", 0.25)
    assert get_memory_usage(as_dense, "sparse").bytes_read == dense + 4 * S


def test_flop_formulas():
    sparse = get_compute_complexity(SHAPE, "sparse")
    assert sparse.dense_flops == 4 * S * 64 == 1048576
    assert sparse.flops == 4 * 4 * 256 * 64
    assert sparse.speedup_vs_dense == pytest.approx(4.0)
    assert get_compute_complexity(SHAPE, "sdpa").flops == 4 * S * 64


def test_transient_formulas():
    # sparse: ceil(256 / 64) = 4 splits of (d + 2) floats per row, plus the lse.
    assert get_memory_usage(SHAPE, "sparse").transient_bytes == 4 * (4 * 66 + 1) * 4
    # sdpa: lse, float32 probabilities and bias, the bias in bf16.
    assert get_memory_usage(SHAPE, "sdpa").transient_bytes == 4 * 4 + S * (4 + 4 + 2)
    # ... plus scores, weights and repeated K/V when SDPA runs its math kernel (bf16, sm_70).
    math_kernel = get_memory_usage(SHAPE, "sdpa", V100).transient_bytes
    assert math_kernel == 4 * 4 + S * 10 + 2 * S * 4 + 2 * 4 * 1024 * 64 * 2
    # dense: scores, output, probabilities and bias, Q/K/V in float32.
    dense = S * 4 + 2 * 4 * 64 * 4 + S * 4 + S * 4 + (4 + 2 * 2 * 1024) * 64 * 4
    assert get_memory_usage(SHAPE, "dense").transient_bytes == dense
    # chunked: one chunk covers all 1024 keys of the single query: scores, weights, bias,
    # accumulators, and the chunk's scattered row probabilities.
    chunk = 4 * 1024
    chunked = 3 * chunk * 4 + 2 * 4 * 66 * 4 + 4 * 1025 * 4
    assert get_memory_usage(SHAPE, "chunked").transient_bytes == chunked


def test_chunk_sizes_bound_memory():
    assert chunk_sizes(1, 32, 1, 131072, 128, 16 * 2**20) == (1, 131072)
    q_block, k_chunk = chunk_sizes(1, 32, 8192, 131072, 128, 16 * 2**20)
    assert (q_block, k_chunk) == (128, 1024)
    assert 4 * 32 * q_block * k_chunk <= 16 * 2**20
    assert chunk_sizes(2, 8, 3, 1000, 128, 1) == (3, 64)  # at least 64 keys


def test_chunked_memory_does_not_grow_with_queries():
    short = get_memory_usage(llama(256, 131072, torch.float32), "chunked").transient_bytes
    long = get_memory_usage(llama(65536, 131072, torch.float32), "chunked").transient_bytes
    assert short == long < 64 * 2**20
    assert get_memory_usage(llama(65536, 131072, torch.float32), "dense").transient_bytes > 2**40


def test_manager_cost_accepts_density_mask_or_inputs():
    manager = AttentionManager("cpu", device_properties=CPU)
    dense_shape = AttentionShape(1, 4, 2, 1, 1024, 64)
    by_float = manager.get_memory_usage(dense_shape, "sparse", density=0.25)
    assert by_float == get_memory_usage(SHAPE, "sparse")
    gen = torch.Generator().manual_seed(4)
    idx, probs, dense = random_rows(1, 4, 1, 1024, 256, gen, empty_row=False)
    mask = Mask.create_from_rows((1, 4, 1, 1024), idx, probs)
    assert manager.get_memory_usage(dense_shape, "sparse", density=mask) == by_float
    assert manager.get_memory_usage(dense_shape, "sparse", density=(idx, probs)) == by_float
    by_dense = manager.get_compute_complexity(dense_shape, "sdpa", density=dense)
    assert by_dense.flops == by_dense.dense_flops
    q = torch.randn(1, 4, 1, 64, dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 1024, 64, dtype=torch.bfloat16)
    inputs = AttentionInputs(q, kv, kv, sparse_mask=mask)
    assert manager.get_compute_complexity(inputs, "sparse").speedup_vs_dense == pytest.approx(4)
    # Default type: the rules' choice for the shape (CPU decode with a mask: sparse).
    assert manager.get_memory_usage(inputs).attention_type == "sparse"
    full = manager.get_memory_usage(
        dense_shape, "sparse", density=Mask.create_full_mask((1, 4, 1, 1024), torch.float32, "cpu")
    )
    assert full.bytes_read == full.dense_bytes_read and math.isclose(full.speedup_vs_dense, 1)


def test_shape_validation():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        AttentionShape(1, 6, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="mask_format"):
        AttentionShape(1, 4, 2, 1, 8, 8, mask_format="csr")
    with pytest.raises(ValueError, match="density"):
        AttentionShape(1, 4, 2, 1, 8, 8, mask_format="rows", density=1.5)


# ----------------------------------------------------------------------------------------------
# Adapter integration (a stand-in for ModelAdapterHF: a model with a transformers-like config).
class _Config:
    num_attention_heads, num_key_value_heads, hidden_size = 8, 2, 256
    max_position_embeddings = 2048

    def get_text_config(self):
        return self


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _Config()
        self.proj = nn.Linear(4, 4, dtype=torch.bfloat16)


class _Adapter(AttentionManagerMixin):
    def __init__(self, sparse_attention, attention_type=None):
        self.model = _Model()
        self.sparse_attention = sparse_attention
        self.init_attention_manager(attention_type)


def test_model_attention_shape():
    shape = model_attention_shape(_Model(), 1, 4096, sparse=True)
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.dtype) == (8, 2, 32, torch.bfloat16)
    assert shape.mask_format == "rows" and shape.has_attention_mask


def test_adapter_mixin_choice_and_override():
    adapter = _Adapter(sparse_attention=object())
    assert (
        adapter.select_attention().attention_type
        in adapter.attention_manager.available_attention_types()
    )
    sparse_choice = adapter.select_attention(query_length=1, key_length=4096)
    assert not sparse_choice.explicit
    pinned = _Adapter(sparse_attention=None, attention_type="chunked")
    choice = pinned.select_attention(query_length=4096, key_length=4096)
    assert choice.explicit and choice.attention_type == "chunked"
    with pytest.raises(ValueError, match="attention_type must be one of"):
        _Adapter(sparse_attention=None, attention_type="flash")


def test_mixin_on_model_adapter_hf():
    """ModelAdapterHF carries the manager: its choice, and the attention_type override."""
    transformers = pytest.importorskip("transformers")
    from sparse_attention_hub.adapters import ModelAdapterHF as Adapter

    assert issubclass(Adapter, AttentionManagerMixin)

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(config)
    tokenizer = SimpleNamespace(pad_token="<pad>")
    dense = Adapter.from_model(model, tokenizer, None)
    choice = dense.select_attention(query_length=1)
    assert choice.attention_type == dense.attention_manager.attention_type and not choice.explicit
    assert dense.attention_manager.module is not None
    pinned = Adapter.from_model(model, tokenizer, None, attention_type="chunked")
    assert pinned.select_attention(query_length=64).attention_type == "chunked"
