"""Benchmark of masker chains + sparse attention through the public API (targets P2, P3, P8,
P11 of PERFORMANCE.md).

Each configuration runs ``ResearchAttention.custom_attention`` (selection + attention) on a
decode step and is compared with dense SDPA and with the same chain computed the reference way
(dense scores, dense mask, masked softmax in PyTorch), all in one process on the same tensors.
"transient MB" is the peak GPU memory a call allocates beyond its inputs (CUDA only).

    python benchmarks/bench_maskers.py                         # GPU: 32K and 128K keys, bf16
    python benchmarks/bench_maskers.py --device cpu --keys 8192 --heads 8 --kv-heads 2
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional

import torch
from common import Timer, device_name, git_commit, write_json

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

CONFIGS: Dict[str, List] = {
    "sink128+local128": [SinkMaskerConfig(128), LocalMaskerConfig(128)],
    "+oracle_topk5%": [SinkMaskerConfig(128), LocalMaskerConfig(128), OracleTopKConfig(0.05)],
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
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run each chain under torch.compile(mode='reduce-overhead', fullgraph=True): CUDA "
        "graphs on GPU remove the eager Python and launch overhead of a decode step",
    )
    parser.add_argument("--out", default="bench_out/maskers.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, repeats=args.repeats, warmup=3)
    gen = torch.Generator(device=device).manual_seed(0)
    b, h, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    scale = d**-0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention
    print(f"device: {device_name(device)}  dtype: {dtype}  batch {b}, heads {h}/{hkv}, d {d}")
    print(
        f"{'keys':>7} {'config':>28} {'ms':>9} {'x dense':>8} {'x reference':>11} "
        f"{'transient MB':>12}"
    )
    rows = []
    for n in args.keys:
        q = torch.randn(b, h, 1, d, device=device, dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, n, d, device=device, dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, n, d, device=device, dtype=dtype, generator=gen)
        mask = torch.zeros(b, 1, 1, n, device=device, dtype=dtype)
        dense_ms = timer(lambda: sdpa(q, k, v, enable_gqa=True))
        print(f"{n:>7} {'dense SDPA':>28} {dense_ms:>9.4f} {1.0:>8.2f} {'':>11} {'':>12}")
        rows.append(dict(keys=n, config="dense_sdpa", ms=dense_ms, ratio_vs_dense=1.0))
        for name, configs in CONFIGS.items():
            attention = ResearchAttention.create_from_config(ResearchAttentionConfig(configs))

            def step(q, k, v, mask):
                return attention.custom_attention(None, q, k, v, mask, scale, 0.0, {})[0]

            if args.compile:
                torch._dynamo.reset()
                step = torch.compile(step, mode="reduce-overhead", fullgraph=True)

            def call():
                return step(q, k, v, mask)

            ms = timer(call)
            mem = transient_mb(call, device)
            ref_ms = float("nan")
            if not args.skip_reference:
                topk = 0.05 if "topk" in name else None
                ref_ms = timer(lambda: reference_way(q, k, v, scale, 128, 128, topk))
            label = f"{name} (ref way)"
            print(
                f"{n:>7} {name:>28} {ms:>9.4f} {ms / dense_ms:>8.2f} {ms / ref_ms:>11.3f} "
                f"{mem:>12.1f}"
            )
            if ref_ms == ref_ms:
                print(f"{n:>7} {label:>28} {ref_ms:>9.4f} {ref_ms / dense_ms:>8.2f} {1.0:>11.3f}")
            rows.append(
                dict(
                    keys=n,
                    config=name,
                    ms=ms,
                    ratio_vs_dense=ms / dense_ms,
                    reference_ms=ref_ms,
                    ratio_vs_reference=ms / ref_ms,
                    transient_mb=mem,
                )
            )
    meta = dict(
        device=device_name(device),
        torch=torch.__version__,
        commit=git_commit(),
        dtype=str(dtype),
        batch=b,
        heads=h,
        kv_heads=hkv,
        head_dim=d,
        compiled=args.compile,
    )
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
