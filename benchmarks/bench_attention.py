"""Benchmark of sah::sparse_attention against dense SDPA (target P1 of PERFORMANCE.md).

Decode step (one query per head), Llama-3.1-8B attention shapes: 32 query heads, 8 kv heads,
head dim 128, bf16. Each query head attends to its own random set of keys (1%, 5%, 10%) given as
row-form index lists. Prints a table and writes JSON. The "GB/s" column counts the bytes of the
selected K/V rows plus indices and probabilities; "% copy" relates it to the device's copy
bandwidth measured in the same run.

    python benchmarks/bench_attention.py                     # GPU defaults (32K, 128K; batch 1, 8)
    python benchmarks/bench_attention.py --device cpu --keys 8192 --batch 1 --heads 8 --kv-heads 2
"""

from __future__ import annotations

import argparse

import torch
from common import Timer, copy_bandwidth_gbs, device_name, git_commit, write_json

import sparse_attention_hub  # noqa: F401
from sparse_attention_hub import ops


def random_rows(b: int, h: int, sk: int, n: int, device: torch.device, gen: torch.Generator):
    """n distinct random keys per (batch, head) row, ascending, as row form."""
    scores = torch.rand(b * h, sk, generator=gen, device=device)
    idx = scores.topk(n, dim=-1).indices.sort(dim=-1).values.int().view(b, h, 1, n)
    return idx.contiguous(), torch.ones(b, h, 1, n, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keys", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--density", type=float, nargs="+", default=[0.01, 0.05, 0.10])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="bench_out/attention.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    timer = Timer(device, repeats=args.repeats)
    copy_gbs = copy_bandwidth_gbs(device, timer, 1024 if device.type == "cuda" else 256)
    gen = torch.Generator(device=device).manual_seed(0)
    h, hkv, d = args.heads, args.kv_heads, args.head_dim
    esize = torch.finfo(dtype).bits // 8
    print(f"device: {device_name(device)}  dtype: {dtype}  copy bandwidth: {copy_gbs:.0f} GB/s")
    print(
        f"{'batch':>5} {'keys':>7} {'config':>14} {'ms':>8} {'x dense':>8} {'GB/s':>8} "
        f"{'% copy':>7}"
    )
    rows = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for b in args.batch:
        for sk in args.keys:
            q = torch.randn(b, h, 1, d, device=device, dtype=dtype, generator=gen)
            k = torch.randn(b, hkv, sk, d, device=device, dtype=dtype, generator=gen)
            v = torch.randn(b, hkv, sk, d, device=device, dtype=dtype, generator=gen)
            dense_ms = timer(lambda: sdpa(q, k, v, enable_gqa=True))
            dense_bytes = 2 * b * hkv * sk * d * esize
            dense_gbs = dense_bytes / (dense_ms * 1e-3) / 1e9
            print(
                f"{b:>5} {sk:>7} {'dense SDPA':>14} {dense_ms:>8.4f} {1.0:>8.2f} "
                f"{dense_gbs:>8.0f} {100 * dense_gbs / copy_gbs:>6.0f}%"
            )
            rows.append(
                dict(
                    batch=b,
                    keys=sk,
                    config="dense_sdpa",
                    density=1.0,
                    ms=dense_ms,
                    ratio_vs_dense=1.0,
                    gbs=dense_gbs,
                    pct_copy=dense_gbs / copy_gbs,
                )
            )
            for density in args.density:
                n = max(1, int(density * sk))
                idx, pr = random_rows(b, h, sk, n, device, gen)
                ms = timer(lambda: ops.sparse_attention(q, k, v, idx, pr))
                nbytes = b * h * n * (2 * d * esize + 8)
                gbs = nbytes / (ms * 1e-3) / 1e9
                name = f"sparse {density:.0%}"
                print(
                    f"{b:>5} {sk:>7} {name:>14} {ms:>8.4f} {ms / dense_ms:>8.2f} "
                    f"{gbs:>8.0f} {100 * gbs / copy_gbs:>6.0f}%"
                )
                rows.append(
                    dict(
                        batch=b,
                        keys=sk,
                        config="sparse_attention",
                        density=density,
                        ms=ms,
                        ratio_vs_dense=ms / dense_ms,
                        gbs=gbs,
                        pct_copy=gbs / copy_gbs,
                    )
                )
    meta = dict(
        device=device_name(device),
        torch=torch.__version__,
        commit=git_commit(),
        dtype=str(dtype),
        heads=h,
        kv_heads=hkv,
        head_dim=d,
        copy_gbs=copy_gbs,
    )
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
