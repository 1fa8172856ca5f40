"""Reliability: the stale-state check of the per-layer masker states (CPU and CUDA), thread-safe
registration, and long decode runs of every masker family (state growth, process memory,
determinism).

Reference for the long runs: a masker's per-layer state holds a fixed number of bytes per cached
key (none for the stateless maskers), grown with at most 1/8 + 256 keys of headroom; nothing
else may grow with the number of decode steps; a fresh state and the same seed give bit-identical
outputs.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Dict, List

import pytest
import torch

from sparse_attention_hub.adapters.registry import AttentionRegistry
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    DoubleSparsityTopKMaskerConfig,
    HashAttentionTopKMaskerConfig,
    LocalMaskerConfig,
    OracleTopKConfig,
    OracleTopPMaskerConfig,
    PQCacheConfig,
    SinkMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations import (  # noqa: E501
    QuestTopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.key_rows_state import (  # noqa: E501
    StaleStateError,
    raise_if_stale,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling.implementations import (  # noqa: E501
    AdaptiveSamplingMaskerConfig,
    MagicPigConfig,
    RandomSamplingMaskerConfig,
)

HEADS, HEAD_DIM = 2, 16


def hash_weights(gen: torch.Generator, layer: int) -> Dict[int, Dict[str, List[torch.Tensor]]]:
    """HashAttention weights of one layer: a 2-layer MLP (16 -> 16 -> 32 bits) per head."""
    dims = [HEAD_DIM, 16, 32]
    return {
        layer: {
            f"{side}_{part}": [
                torch.randn(HEADS, a, b, generator=gen) / a**0.5
                if part == "matrix"
                else torch.randn(HEADS, b, generator=gen) * 0.1
                for a, b in zip(dims[:-1], dims[1:])
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }
    }


def family_maskers(family: str, layer: int, workdir: str) -> List[Any]:
    """The masker configs of one family after sink (4) + local (16), the usual chain
    (DoubleSparsity's channel file is written to ``workdir``)."""
    gen = torch.Generator().manual_seed(7)
    chain = [SinkMaskerConfig(4), LocalMaskerConfig(16)]
    if family == "double_sparsity":
        path = os.path.join(workdir, "channels.json")
        tables = [torch.randperm(HEAD_DIM, generator=gen).tolist() for _ in range(HEADS)]
        with open(path, "w") as f:
            json.dump({f"model.layers.{layer}.self_attn.qk_proj": tables}, f)
        return chain + [DoubleSparsityTopKMaskerConfig(8, path, group_factor=4)]
    if family == "hash_attention":
        weights = hash_weights(gen, layer)
        return chain + [HashAttentionTopKMaskerConfig(8, 32, 2, 16, "silu", hat_weights=weights)]
    return (
        chain
        + {
            "sink_local": [],
            "oracle_top_k": [OracleTopKConfig(8)],
            "oracle_top_p": [OracleTopPMaskerConfig(0.3)],
            "quest": [QuestTopKMaskerConfig(heavy_size=8, page_size=16)],
            "pq_cache": [PQCacheConfig(heavy_size=8, pq_sub_dim=4, pq_bits=4, kmeans_iters=3)],
            # seed=None: a fresh seed per call from torch's default generator (seeded per run).
            "random_sampling": [RandomSamplingMaskerConfig(0.01, seed=None)],
            "magic_pig": [MagicPigConfig(lsh_l=4, lsh_k=4)],
            "adaptive_sampling": [AdaptiveSamplingMaskerConfig(0.01, 0.3, 0.3, 4, 16, seed=5)],
        }[family]
    )


def attention_for(family: str, layer: int = 0, workdir: str = "") -> ResearchAttention:
    return ResearchAttention.create_from_config(
        ResearchAttentionConfig(family_maskers(family, layer, workdir))
    )


# ----------------------------------------------------------------------------------------------
# Stale per-layer state: CPU raises at once; CUDA flags it on the device (no sync, no device
# assertion) and raises at raise_if_stale.

STATEFUL = {  # family (also its sparse_meta_data key): the owner named in the error
    "hash_attention": "HashAttention",
    "quest": "Quest",
    "pq_cache": "PQCache",
    "magic_pig": "MagicPig",
}


def decode(attention, keys, values, query, smd, layer):
    """One call of the attention as transformers makes it (no attention mask at decode)."""
    return attention.custom_attention(
        None, query, keys, values, None, 0.25, 0.0, smd, layer_idx=layer
    )


def two_sequences(device: str):
    """Keys and values of one sequence, keys of another, and a query."""
    gen = torch.Generator().manual_seed(11)
    shape = (1, HEADS, 80, HEAD_DIM)
    keys, values, other = (torch.randn(shape, generator=gen).to(device) for _ in range(3))
    query = torch.randn(1, HEADS, 1, HEAD_DIM, generator=gen).to(device)
    return keys, values, other, query


@pytest.mark.parametrize("family", sorted(STATEFUL))
def test_stale_state_raises_on_cpu(family):
    layer = 3
    attention = attention_for(family, layer)
    keys, values, other, query = two_sequences("cpu")
    smd: Dict[Any, Any] = {}
    for n in (70, 71, 72):  # prefill, then two decode steps of one sequence
        decode(attention, keys[:, :, :n], values[:, :, :n], query, smd, layer)
    raise_if_stale(smd)  # nothing deferred on CPU
    message = f"{STATEFUL[family]} state of layer {layer} belongs to another sequence"
    with pytest.raises(StaleStateError, match=message) as error:
        decode(attention, other[:, :, :73], values[:, :, :73], query, smd, layer)
    assert isinstance(error.value, RuntimeError)
    assert "use a fresh sparse_meta_data" in str(error.value)
    decode(attention, keys[:, :, :73], values[:, :, :73], query, smd, layer)  # still usable
    raise_if_stale(smd)


def test_stale_state_raises_in_a_compiled_cpu_graph():
    """Inside a compiled graph the CPU check is a RuntimeError when the graph runs."""
    attention = attention_for("quest", 1)
    keys, values, other, query = two_sequences("cpu")
    smd: Dict[Any, Any] = {}
    decode(attention, keys[:, :, :70], values[:, :, :70], query, smd, 1)
    state = smd["quest"][1]
    torch._dynamo.reset()
    compiled = torch.compile(lambda k: state.check(k, 1), fullgraph=True, backend="aot_eager")
    compiled(keys[:, :, :71])
    with pytest.raises(RuntimeError, match="Quest state of layer 1 belongs to another sequence"):
        compiled(other[:, :, :71])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", sorted(STATEFUL))
def test_stale_state_on_cuda_is_deferred_and_not_fatal(family):
    """On CUDA the check never syncs and never asserts on the device: the stale call returns,
    the CUDA context stays usable, and raise_if_stale (after the request) names the layer."""
    layer = 2
    attention = attention_for(family, layer)
    keys, values, other, query = two_sequences("cuda")
    smd: Dict[Any, Any] = {}
    for n in (70, 71):
        decode(attention, keys[:, :, :n], values[:, :, :n], query, smd, layer)
    raise_if_stale(smd)
    (state,) = smd[family].values()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # the check itself must not sync
    try:
        state.check(other[:, :, :72], layer)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    out, _ = decode(attention, other[:, :, :73], values[:, :, :73], query, smd, layer)
    torch.cuda.synchronize()  # a device-side assertion would surface here
    assert torch.isfinite(out).all().item()
    message = f"{STATEFUL[family]} state of layer {layer} belongs to another sequence"
    with pytest.raises(StaleStateError, match=message):
        state.raise_if_stale()
    with pytest.raises(StaleStateError, match="use a fresh sparse_meta_data"):
        raise_if_stale(smd)
    assert torch.ones(4, device="cuda").sum().item() == 4.0  # the context is alive


# ----------------------------------------------------------------------------------------------
# Registration under concurrency: 8 threads register, look up, configure, list and unregister.


class _Config:
    _attn_implementation = "sdpa"


class _Model(torch.nn.Module):
    """Two modules sharing one config object, as a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.inner = torch.nn.Module()
        self.inner.config = self.config


@pytest.fixture
def attention_interface():
    """Names registered with transformers during the test, removed from its global maps after
    (transformers has no public way to remove a name)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    before = {m: set(m._global_mapping) for m in (AttentionInterface, AttentionMaskInterface)}
    yield AttentionInterface
    for interface, names in before.items():
        for name in set(interface._global_mapping) - names:
            del interface._global_mapping[name]


def test_registration_is_thread_safe(attention_interface):
    threads, rounds = 8, 150
    registries = [AttentionRegistry(), AttentionRegistry()]  # share transformers' interfaces
    attention = attention_for("sink_local")
    barrier = threading.Barrier(threads)
    generated: List[List[str]] = [[] for _ in range(threads)]
    kept: List[List[str]] = [[] for _ in range(threads)]
    contested: List[List[str]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []

    def work(t: int) -> None:
        registry, model = registries[t % 2], _Model()
        try:
            for i in range(rounds):
                barrier.wait()  # all threads run each round together
                try:  # every thread races for the same name: exactly one wins it
                    contested[t].append(registry.register_sparse_attention(attention, f"race_{i}"))
                except ValueError as error:
                    assert "already registered" in str(error)
                name = registry.register_sparse_attention(attention)
                generated[t].append(name)
                assert name in registry.list_registered_attention_functions()
                assert registry.get_attention_adapter(name).name == name
                previous = registry.configure_model_attention(model, name, layer_indices=[0])
                assert model.inner.config._attn_implementation == name
                registry.restore_model_attention(model, previous)
                assert model.config._attn_implementation == "sdpa"
                registry.unregister_attention_function(name)
                own = registry.register_sparse_attention(attention, f"reliability_{t}_{i}")
                if i % 3 == 0:
                    kept[t].append(own)
                else:
                    registry.unregister_attention_function(own)
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    names = [n for per_thread in generated for n in per_thread]
    assert len(names) == threads * rounds and len(set(names)) == len(names)  # never reused
    wins = Counter(n for per_thread in contested for n in per_thread)
    assert sorted(wins) == sorted(f"race_{i}" for i in range(rounds))
    assert set(wins.values()) == {1}
    interface = attention_interface()
    for r, registry in enumerate(registries):
        want = {n for t in range(r, threads, 2) for n in kept[t] + contested[t]}
        listed = registry.list_registered_attention_functions()
        assert set(listed) == want and set(listed.values()) == {"ResearchAttentionFunction"}
        for name in want:
            assert interface[name] is registry.get_attention_adapter(name)
    for name in names:  # unregistered names point at a function that raises
        with pytest.raises(RuntimeError, match="was unregistered"):
            interface[name](None, None, None, None, None)


# ----------------------------------------------------------------------------------------------
# Long decode runs: 10,000 steps per masker family (a growing KV cache from 64 keys; 1 batch,
# 2 heads, head dim 16, CPU), twice from a fresh state, in two worker processes.

STEPS, PREFILL, CHECKPOINT = 10_000, 64, 1_000
#: Bytes of per-layer state per cached key (b = 1, 2 kv heads; stateless families: none), the
#: families from the most to the least expensive to run.
STATE_BYTES_PER_KEY = {
    "oracle_top_p": 0,
    "magic_pig": 2 * 4,  # 4 tables x 4 bits in one int32 per head
    "double_sparsity": 0,
    "adaptive_sampling": 0,
    "pq_cache": 2 * (HEAD_DIM // 4),  # one uint8 code per 4-channel subspace
    "random_sampling": 0,
    "hash_attention": 2 * 4,  # 32 signature bits (one int32) per head
    "oracle_top_k": 0,
    "quest": 2 * 2 * HEAD_DIM * 4 / 16,  # float32 min and max per channel per 16-key page
    "sink_local": 0,
}
#: Process memory (RSS) may grow beyond the state by this much (allocator noise; measured: under
#: 0.3 MiB from step 1,000 to 10,000), far less than a leak of one small tensor per step.
RSS_SLACK = 8 << 20


def _state_bytes(obj: Any, seen: set) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (dicts, lists, objects)."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_state_bytes(v, seen) for v in vars(obj).values())
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _decode_run(family: str, workdir: str, seed: int = 0) -> Dict[str, Any]:
    """``STEPS`` decode steps of ``family`` from a fresh state: every output, and the state bytes
    and RSS after ``CHECKPOINT`` and after all steps."""
    gen = torch.Generator().manual_seed(1)
    total = PREFILL + STEPS
    keys = torch.randn(1, HEADS, total, HEAD_DIM, generator=gen)  # the KV cache, preallocated
    values = torch.randn(1, HEADS, total, HEAD_DIM, generator=gen)
    queries = torch.randn(STEPS, 1, HEADS, 1, HEAD_DIM, generator=gen)
    outputs = torch.zeros(STEPS, 1, 1, HEADS, HEAD_DIM)
    attention = attention_for(family, 0, workdir)
    smd: Dict[Any, Any] = {}
    torch.manual_seed(seed)
    marks: Dict[str, int] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for step in range(STEPS):
            n = PREFILL + step + 1
            out, _ = decode(attention, keys[:, :, :n], values[:, :, :n], queries[step], smd, 0)
            outputs[step].copy_(out)
            if step + 1 in (CHECKPOINT, STEPS):
                marks[f"state_{step + 1}"] = _state_bytes(smd, set())
                marks[f"rss_{step + 1}"] = _rss()
    return dict(outputs=outputs, seconds=time.perf_counter() - start, **marks)


def _long_run(family: str) -> Dict[str, Any]:
    """Two runs of ``family`` from a fresh state with the same seed (in a worker process)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        first, second = _decode_run(family, workdir), _decode_run(family, workdir)
    outputs = first.pop("outputs")
    differ = (outputs != second["outputs"]).flatten(1).any(1).nonzero()
    return dict(
        first,
        first_differing_step=int(differ[0]) if len(differ) else None,
        finite=bool(torch.isfinite(outputs).all()),
        seconds=first["seconds"] + second["seconds"],
    )


def test_long_decode_runs_every_masker_family():
    """10,000 decode steps per family: the state grows only with the KV cache, process memory
    does not grow beyond it, and a second run from a fresh state gives identical outputs."""
    families = list(STATE_BYTES_PER_KEY)  # the most expensive first: the pool balances
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        results = dict(zip(families, pool.map(_long_run, families)))
    n_mid, n_end = PREFILL + CHECKPOINT, PREFILL + STEPS
    problems = []
    for family, r in results.items():
        per_key = STATE_BYTES_PER_KEY[family]
        growth = r[f"state_{STEPS}"] - r[f"state_{CHECKPOINT}"]
        low = per_key * (n_end - n_mid - n_mid // 8 - 256)
        high = per_key * (n_end - n_mid + n_end // 8 + 256)
        if not low <= growth <= high:
            problems.append(
                f"{family}: state grew {growth} B from key {n_mid} to {n_end}, "
                f"expected {low:.0f} .. {high:.0f}"
            )
        rss_growth = r[f"rss_{STEPS}"] - r[f"rss_{CHECKPOINT}"]
        if rss_growth > high + RSS_SLACK:
            problems.append(f"{family}: RSS grew {rss_growth >> 10} KiB (state {growth >> 10} KiB)")
        if r["first_differing_step"] is not None:
            problems.append(f"{family}: the rerun differs from step {r['first_differing_step']}")
        if not r["finite"]:
            problems.append(f"{family}: non-finite outputs")
    seconds = ", ".join(f"{f} {r['seconds']:.1f} s" for f, r in results.items())
    assert not problems, "\n".join(problems) + f"\n(two runs each: {seconds})"
