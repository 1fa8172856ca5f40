"""Main job: sparse vs dense attention on random tensors, printed as a table.

Later versions run a real model; for now this shows the operators end to end: a decode step
(one query per head) over a KV cache, dense SDPA against ``sah::sparse_attention`` with
sink + local + evenly spread keys at several densities.
"""

from __future__ import annotations

import argparse
import time

import torch

from sparse_attention_hub import ops


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _rows(b: int, h: int, sk: int, density: float, sink: int, local: int, device) -> tuple:
    """Row form of sink + local + evenly spread middle keys (about `density` of the keys)."""
    n_mid = max(0, int(density * sk) - sink - local)
    mid = torch.linspace(sink, sk - local - 1, n_mid).long() if n_mid else torch.empty(0).long()
    cols = torch.unique(torch.cat([torch.arange(sink), mid, torch.arange(sk - local, sk)]))
    idx = cols.int().expand(b, h, 1, -1).contiguous().to(device)
    return idx, torch.ones_like(idx, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    print(f"device={device} dtype={dtype} heads={args.heads}/{args.kv_heads} d={args.head_dim}")
    print("max err: |sparse_attention - SDPA with the same selection as a dense mask|")
    print(f"{'keys':>7} {'config':>22} {'density':>8} {'ms':>8} {'x dense':>8} {'max err':>8}")
    for sk in args.keys:
        q = torch.randn(1, args.heads, 1, args.head_dim, generator=gen).to(device, dtype)
        k = torch.randn(1, args.kv_heads, sk, args.head_dim, generator=gen).to(device, dtype)
        v = torch.randn(1, args.kv_heads, sk, args.head_dim, generator=gen).to(device, dtype)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        dense_ms = _time_ms(lambda: sdpa(q, k, v, enable_gqa=True), device, args.repeats)
        print(f"{sk:>7} {'dense SDPA':>22} {1.0:>8.3f} {dense_ms:>8.3f} {1.0:>8.2f} {0.0:>8.1e}")
        for density in (0.01, 0.05, 0.10):
            idx, pr = _rows(1, args.heads, sk, density, 128, 128, device)
            out, _ = ops.sparse_attention(q, k, v, idx, pr)
            ms = _time_ms(lambda: ops.sparse_attention(q, k, v, idx, pr), device, args.repeats)
            # The same selection computed the simulated way (dense boolean mask + SDPA).
            keep = torch.zeros(1, 1, 1, sk, dtype=torch.bool, device=device)
            keep[..., idx[0, 0, 0].long()] = True
            ref = sdpa(q, k, v, attn_mask=keep, enable_gqa=True)
            err = (out.float() - ref.float()).abs().max().item()
            real = idx.shape[-1] / sk
            name = f"sink+local+spread {density:.0%}"
            print(f"{sk:>7} {name:>22} {real:>8.3f} {ms:>8.3f} {ms / dense_ms:>8.2f} {err:>8.1e}")


if __name__ == "__main__":
    main()
