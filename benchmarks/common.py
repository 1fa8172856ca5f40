"""Shared timing helpers for the benchmarks: CUDA events, L2 flush, medians, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Timer:
    """Median wall time of a callable; on CUDA with events and an L2 flush before each run."""

    def __init__(
        self, device: torch.device, repeats: int = 30, warmup: int = 5, flush_l2: bool = True
    ):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.flush = (
            torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
            if flush_l2 and device.type == "cuda"
            else None
        )

    def __call__(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times: List[float] = []
        for _ in range(self.repeats):
            if self.flush is not None:
                self.flush.zero_()
            if self.device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def hat_weights(
    heads: int, head_dim: int, bits: int = 32, hidden: int = 128, layers: int = 1, seed: int = 0
) -> Dict[int, Dict[str, List[torch.Tensor]]]:
    """Random HashAttention weights for ``layers`` layers: a 3-layer MLP per head (head_dim ->
    hidden -> hidden -> bits) on the query and key sides (speed does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    dims = [head_dim, hidden, hidden, bits]

    def entry() -> Dict[str, List[torch.Tensor]]:
        return {
            f"{side}_{part}": [
                torch.randn(heads, a, b, generator=gen) / a**0.5
                if part == "matrix"
                else torch.randn(heads, b, generator=gen) * 0.1
                for a, b in zip(dims[:-1], dims[1:])
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }

    return {layer: entry() for layer in range(layers)}


def hat_config(heads: int, head_dim: int, layers: int = 1, heavy_size: float = 0.05):
    """The PERFORMANCE.md HashAttention masker (32 bits, 3-layer MLP of width 128, SiLU) with
    random weights for ``layers`` layers."""
    from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
        HashAttentionTopKMaskerConfig,
    )

    return HashAttentionTopKMaskerConfig(
        heavy_size=heavy_size,
        hat_bits=32,
        hat_mlp_layers=3,
        hat_mlp_hidden_size=128,
        hat_mlp_activation="silu",
        hat_weights=hat_weights(heads, head_dim, layers=layers),
    )


def copy_bandwidth_gbs(device: torch.device, timer: Timer, mbytes: int = 1024) -> float:
    """Device copy bandwidth (bytes read + written per second) measured in this process."""
    n = mbytes * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def generate_greedy(model, cache, ids, n_new: int):
    """``n_new`` greedy tokens after ``ids`` (batch 1, no padding) continuing ``cache``."""
    return model.generate(
        input_ids=ids,
        past_key_values=cache,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        attention_mask=torch.ones_like(ids),
    )


def write_json(path: str, meta: Dict, rows: List[Dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {path}")
