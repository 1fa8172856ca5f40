"""Benchmark of masker chains + sparse attention through the public API (targets P2-P8 and
P11 of PERFORMANCE.md).

Each configuration runs ``ResearchAttention.custom_attention`` (selection + attention) on a
decode step and is compared with dense SDPA and, for the chains it can express, with the same
chain computed the reference way (dense scores, dense mask, masked softmax in PyTorch), all in
one process on the same tensors. Stateful maskers (HashAttention signatures, Quest page bounds,
MagicPig signatures) keep their per-layer state across calls, as in a decode loop: their state
for the 128K keys is built by the warm-up call, so the timed calls measure steady-state decode.
"transient MB" is the peak GPU memory a call allocates beyond its inputs (CUDA only).

Modes: ``eager`` (default; Python masker chain + kernel launches per call), ``graph`` (the same
call captured once in a CUDA graph and replayed: what a compiled / CUDA-graph decode step costs;
the ops never sync with the host, so the whole chain captures), ``compile``
(``torch.compile(mode="reduce-overhead", fullgraph=True)`` with K/V marked as static addresses,
as a static KV cache is).

    python benchmarks/bench_maskers.py                         # GPU: 32K and 128K keys, bf16
    python benchmarks/bench_maskers.py --mode graph --skip-reference
    python benchmarks/bench_maskers.py --device cpu --keys 8192 --heads 8 --kv-heads 2
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional, Tuple

import torch
from common import Timer, device_name, git_commit, hat_config, write_json

import sparse_attention_hub  # noqa: F401
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    OracleTopKConfig,
    SinkMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations import (
    QuestTopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling import (
    implementations as sampling,
)


def chains(heads: int, head_dim: int) -> Dict[str, Tuple[str, Callable[[], List]]]:
    """Name -> (PERFORMANCE.md target, masker configs)."""
    sl = lambda: [SinkMaskerConfig(128), LocalMaskerConfig(128)]  # noqa: E731
    return {
        "sink128+local128": ("P2", sl),
        "+oracle_topk5%": ("P3", lambda: sl() + [OracleTopKConfig(0.05)]),
        "+hash_topk5%": ("P4", lambda: sl() + [hat_config(heads, head_dim)]),
        "+quest_topk5%_page16": (
            "P5",
            lambda: sl() + [QuestTopKMaskerConfig(heavy_size=0.05, page_size=16)],
        ),
        "+oracle_topk5%+adaptive": (
            "P6",
            lambda: sl()
            + [
                OracleTopKConfig(0.05),
                sampling.AdaptiveSamplingMaskerConfig(
                    base_rate_sampling=0.05,
                    epsilon=0.25,
                    delta=0.25,
                    init_offset=128,
                    local_offset=128,
                    seed=0,
                ),
            ],
        ),
        "magicpig_L75K8+sink+local": (
            "P7",
            lambda: sl() + [sampling.MagicPigConfig(lsh_l=75, lsh_k=8, seed=0)],
        ),
    }


def reference_way(q, k, v, scale: float, sink: int, local: int, topk: Optional[float]):
    """The reference implementation's computation: dense scores, dense mask, masked softmax."""
    g = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = q @ kr.transpose(-1, -2)
    n = k.shape[2]
    mask = torch.zeros_like(scores)
    mask[..., :sink] = 1.0
    mask[..., n - local :] = 1.0
    if topk is not None:
        top = scores.masked_fill(mask != 0, torch.finfo(scores.dtype).min).topk(int(topk * n), -1)
        mask.scatter_(-1, top.indices, 1.0)
    s = scale * scores
    e = torch.exp(s - s.max(-1, keepdim=True).values) * mask
    return (e @ vr) / e.sum(-1, keepdim=True)


def transient_mb(fn: Callable[[], object], device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def capture_graph(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` captured once in a CUDA graph (after a warm-up on a side stream); returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def print_kernels(call: Callable[[], object], name: str, n: int, calls: int = 10) -> None:
    """The GPU kernels of ``calls`` calls, by total time (per call)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: -e.device_time_total)
    print(f"  kernels of {name} at {n} keys (us per call):")
    for e in kernels[:14]:
        print(f"    {e.device_time_total / calls:9.1f}  x{e.count // calls:<3} {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keys", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow baseline")
    parser.add_argument("--mode", choices=["eager", "graph", "compile"], default="eager")
    parser.add_argument("--compile", action="store_true", help="same as --mode compile")
    parser.add_argument("--configs", nargs="+", help="subset of the chains (default: all)")
    parser.add_argument(
        "--profile", action="store_true", help="print the CUDA kernels of each chain's call"
    )
    parser.add_argument("--out", default="bench_out/maskers.json")
    args = parser.parse_args()
    mode = "compile" if args.compile else args.mode
    device = torch.device(args.device)
    if mode != "eager" and device.type != "cuda":
        parser.error(f"--mode {mode} needs a CUDA device")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, repeats=args.repeats, warmup=3)
    gen = torch.Generator(device=device).manual_seed(0)
    b, h, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    scale = d**-0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention
    all_chains = chains(h, d)
    names = args.configs or list(all_chains)
    unknown = sorted(set(names) - set(all_chains))
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {list(all_chains)}")
    print(
        f"device: {device_name(device)}  dtype: {dtype}  batch {b}, heads {h}/{hkv}, d {d}, "
        f"mode {mode}"
    )
    print(
        f"{'keys':>7} {'config':>28} {'target':>6} {'ms':>9} {'x dense':>8} {'x reference':>11} "
        f"{'transient MB':>12}"
    )
    rows = []
    for n in args.keys:
        q = torch.randn(b, h, 1, d, device=device, dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, n, d, device=device, dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, n, d, device=device, dtype=dtype, generator=gen)
        mask = torch.zeros(b, 1, 1, n, device=device, dtype=dtype)
        dense_ms = timer(lambda: sdpa(q, k, v, enable_gqa=True))
        print(f"{n:>7} {'dense SDPA':>28} {'':>6} {dense_ms:>9.4f} {1.0:>8.2f}")
        rows.append(dict(keys=n, config="dense_sdpa", ms=dense_ms, ratio_vs_dense=1.0))
        for name in names:
            target, configs = all_chains[name]
            attention = ResearchAttention.create_from_config(ResearchAttentionConfig(configs()))
            state: Dict = {}

            def step(q, k, v, mask, attention=attention, state=state):
                return attention.custom_attention(
                    None, q, k, v, mask, scale, 0.0, state, layer_idx=0
                )[0]

            call = lambda: step(q, k, v, mask)  # noqa: E731
            if mode == "compile":
                torch._dynamo.reset()
                for t in (k, v, mask):
                    torch._dynamo.mark_static_address(t)
                compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
                call = lambda: compiled(q, k, v, mask)  # noqa: E731
            elif mode == "graph":
                call()  # builds the per-layer state outside the graph
                call = capture_graph(call)
            ms = timer(call)
            mem = transient_mb(call, device)
            if args.profile:
                print_kernels(call, name, n)
            ref_ms = float("nan")
            if not args.skip_reference and target in ("P2", "P3"):
                topk = 0.05 if "topk" in name else None
                ref_ms = timer(lambda: reference_way(q, k, v, scale, 128, 128, topk))
            print(
                f"{n:>7} {name:>28} {target:>6} {ms:>9.4f} {ms / dense_ms:>8.2f} "
                f"{ms / ref_ms:>11.3f} {mem:>12.1f}"
            )
            if ref_ms == ref_ms:
                label = f"{name} (ref way)"
                print(f"{n:>7} {label:>28} {'':>6} {ref_ms:>9.4f} {ref_ms / dense_ms:>8.2f}")
            rows.append(
                dict(
                    keys=n,
                    config=name,
                    target=target,
                    ms=ms,
                    ratio_vs_dense=ms / dense_ms,
                    reference_ms=ref_ms,
                    ratio_vs_reference=ms / ref_ms,
                    transient_mb=mem,
                )
            )
            del attention, state, call
    meta = dict(
        device=device_name(device),
        torch=torch.__version__,
        commit=git_commit(),
        dtype=str(dtype),
        batch=b,
        heads=h,
        kv_heads=hkv,
        head_dim=d,
        mode=mode,
    )
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
