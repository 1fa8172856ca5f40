"""AttentionManager.benchmark_attention_types on the PERFORMANCE.md decode shapes.

Decode step (one query per head), Llama-3.1-8B attention: 32 query heads, 8 kv heads, head dim
128, bf16 on CUDA (float32 on CPU), each query head attending to its own random 5% of the keys
given as row-form index lists. Every backend runs on the same tensors; "speedup" is dense SDPA
(no sparse mask, timed in the same run) over the backend's time, "theory" the cost model's
memory-bound speedup (dense bytes / bytes read). "peak MiB" is measured on CUDA
(max_memory_allocated) and the cost model's estimate on CPU. "auto" marks the manager's choice.
Prints a table and writes JSON.

    python benchmarks/bench_attention_manager.py                    # GPU: 32K and 128K keys
    python benchmarks/bench_attention_manager.py --device cpu --keys 4096
"""

from __future__ import annotations

import argparse

import torch
from common import device_name, git_commit, write_json

import sparse_attention_hub  # noqa: F401
from sparse_attention_hub.attention_manager import AttentionInputs, AttentionManager

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def random_rows(b: int, h: int, sk: int, n: int, device: torch.device, gen: torch.Generator):
    """n distinct random keys per (batch, head) row, ascending, as row form (p = 1)."""
    scores = torch.rand(b * h, sk, generator=gen, device=device)
    idx = scores.topk(n, dim=-1).indices.sort(dim=-1).values.int().view(b, h, 1, n)
    return idx.contiguous(), torch.ones(b, h, 1, n, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keys", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="bench_out/attention_manager.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = (
        DTYPES[args.dtype]
        if args.dtype
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    manager = AttentionManager(device)
    gen = torch.Generator(device=device).manual_seed(0)
    h, hkv, d = args.heads, args.kv_heads, args.head_dim
    print(f"device: {device_name(device)}  dtype: {dtype}  density: {args.density:.0%}")
    print(f"backends here: {manager.available_attention_types()}")
    header = (
        f"{'batch':>5} {'keys':>7} {'backend':>8} {'ms':>9} {'speedup':>8} {'theory':>7} "
        f"{'peak MiB':>9} {'auto':>4}"
    )
    print(header)
    rows = []
    for b in args.batch:
        for sk in args.keys:
            q = torch.randn(b, h, 1, d, device=device, dtype=dtype, generator=gen)
            k = torch.randn(b, hkv, sk, d, device=device, dtype=dtype, generator=gen)
            v = torch.randn(b, hkv, sk, d, device=device, dtype=dtype, generator=gen)
            n = max(1, int(args.density * sk))
            idx, probs = random_rows(b, h, sk, n, device, gen)
            dense_in = AttentionInputs(q, k, v)
            sparse_in = AttentionInputs(q, k, v, sparse_mask=(idx, probs))
            timing = dict(repeats=args.repeats, warmup=args.warmup)
            dense_ms = manager.benchmark_attention_types(dense_in, ["sdpa"], **timing)["sdpa"]["ms"]
            shape = sparse_in.describe(with_density=True)
            choice = manager.choose(shape)
            results = manager.benchmark_attention_types(sparse_in, **timing)
            print(
                f"{b:>5} {sk:>7} {'SDPA':>8} {dense_ms:>9.4f} {1.0:>8.2f} {1.0:>7.2f} "
                f"{'':>9} {'':>4}   (dense baseline, no sparse mask)"
            )
            for name, result in results.items():
                usage = manager.get_memory_usage(shape, name)
                flops = manager.get_compute_complexity(shape, name)
                speedup = dense_ms / result["ms"]
                auto = "*" if name == choice.attention_type else ""
                print(
                    f"{b:>5} {sk:>7} {name:>8} {result['ms']:>9.4f} {speedup:>8.2f} "
                    f"{usage.speedup_vs_dense:>7.2f} {result['peak_mb']:>9.2f} {auto:>4}"
                )
                rows.append(
                    dict(
                        batch=b,
                        keys=sk,
                        backend=name,
                        density=shape.density,
                        ms=result["ms"],
                        dense_ms=dense_ms,
                        ratio_vs_dense=result["ms"] / dense_ms,
                        measured_speedup=speedup,
                        theoretical_speedup=usage.speedup_vs_dense,
                        theoretical_flop_speedup=flops.speedup_vs_dense,
                        bytes_read=usage.bytes_read,
                        peak_mb=result["peak_mb"],
                        peak_measured=device.type == "cuda",
                        estimated_transient_mb=usage.transient_bytes / 2**20,
                        selected=name == choice.attention_type,
                    )
                )
            print(f"{'':>14}auto: {choice.attention_type} ({choice.reason})")
    meta = dict(
        device=device_name(device),
        torch=torch.__version__,
        commit=git_commit(),
        dtype=str(dtype),
        heads=h,
        kv_heads=hkv,
        head_dim=d,
        density=args.density,
        repeats=args.repeats,
        baseline="torch SDPA (enable_gqa=True), no sparse mask, same run",
    )
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
