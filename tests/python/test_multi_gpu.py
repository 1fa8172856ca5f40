"""Several GPUs: a masker chain run on the second GPU (while the first is the current device, as
for the layers of a model sharded with device_map="auto") gives bit for bit what it gives on
the first GPU, for every masker family: prefill rows with a causal mask, then decode steps
that grow the per-layer state. Reference: the same chain on cuda:0 (the CUDA kernels are
checked against the plain-PyTorch reference in the per-family test files).

Needs 2 GPUs (python -m pytest -m gpu tests/python/test_multi_gpu.py on a multi-GPU machine).
"""

import json

import pytest
import torch

from sparse_attention_hub.configs import config_from_dict
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    HashAttentionTopKMaskerConfig,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
    ),
]

B, H, HKV, D = 1, 8, 2, 64
SL = [{"type": "SinkMaskerConfig", "sink_size": 16}, {"type": "LocalMaskerConfig", "window_size": 32}]
EXTRA = {
    "oracle_topk": [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "oracle_topp": [{"type": "OracleTopPMaskerConfig", "top_p": 0.75}],
    "quest": [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16}],
    "double_sparsity": ["DS"],
    "pq_cache": [{"type": "PQCacheConfig", "heavy_size": 0.05, "pq_sub_dim": 8, "pq_bits": 4}],
    "random_sampling": [{"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.05, "seed": 3}],
    "magic_pig": [{"type": "MagicPigConfig", "lsh_l": 16, "lsh_k": 4, "seed": 3}],
    "adaptive_sampling": [
        {"type": "OracleTopKConfig", "heavy_size": 0.025},
        {
            "type": "AdaptiveSamplingMaskerConfig",
            "base_rate_sampling": 0.025,
            "epsilon": 0.25,
            "delta": 0.25,
            "init_offset": 16,
            "local_offset": 32,
            "seed": 3,
        },
    ],
    "hash": ["HASH"],
}


def hash_weights(gen):
    dims = [D, 32, 32]
    return {
        0: {
            f"{side}_{part}": [
                torch.randn(H, a, b, generator=gen) / a**0.5
                if part == "matrix"
                else torch.randn(H, b, generator=gen) * 0.1
                for a, b in zip(dims[:-1], dims[1:])
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }
    }


def make_config(family, tmp_path, gen):
    maskers = []
    for entry in EXTRA[family]:
        if entry == "DS":
            path = tmp_path / "channels.json"
            table = [torch.randperm(D, generator=gen).tolist() for _ in range(H)]
            path.write_text(json.dumps({"model.layers.0.self_attn.qk_proj": table}))
            entry = {
                "type": "DoubleSparsityTopKMaskerConfig",
                "heavy_size": 0.05,
                "sorted_channel_file": str(path),
                "group_factor": 8,
            }
        if entry == "HASH":
            continue
        maskers.append(entry)
    config = config_from_dict({"maskers": SL + maskers})
    if family == "hash":
        hat = HashAttentionTopKMaskerConfig(
            heavy_size=0.05,
            hat_bits=32,
            hat_mlp_layers=2,
            hat_mlp_hidden_size=32,
            hat_mlp_activation="silu",
            hat_weights=hash_weights(gen),
        )
        config = ResearchAttentionConfig(list(config.masker_configs) + [hat])
    return config


def causal(sq, sk, device):
    """HF's boolean mask: query i (at position sk - sq + i) sees keys 0 .. sk - sq + i."""
    q_pos = torch.arange(sk - sq, sk, device=device)[:, None]
    return (torch.arange(sk, device=device)[None, :] <= q_pos)[None, None]


@pytest.mark.parametrize("family", sorted(EXTRA))
def test_second_gpu_equals_first(family, tmp_path):
    gen = torch.Generator().manual_seed(11)
    total, prefill = 3000, 2990
    k = torch.randn(B, HKV, total, D, generator=gen)
    v = torch.randn(B, HKV, total, D, generator=gen)
    steps = [(8, prefill)] + [(1, n) for n in range(prefill + 1, total + 1, 3)]
    queries = [torch.randn(B, H, sq, D, generator=gen) for sq, _ in steps]
    config = make_config(family, tmp_path, gen)
    results = []
    torch.cuda.set_device(0)  # the current device stays cuda:0 for both runs
    for device in ("cuda:0", "cuda:1"):
        attention = ResearchAttention.create_from_config(config)
        state = {}
        outs = []
        for (sq, sk), q in zip(steps, queries):
            args = (q.to(device), k[:, :, :sk].to(device), v[:, :, :sk].to(device))
            out, _ = attention.custom_attention(
                None, *args, causal(sq, sk, device), D**-0.5, 0.0,
                sparse_meta_data=state, layer_idx=0,
            )
            assert out.device == torch.device(device)
            outs.append(out.cpu())
        torch.cuda.synchronize(device)
        results.append(outs)
    for step, (a, b) in enumerate(zip(*results)):
        assert torch.isfinite(a).all(), step
        assert torch.equal(a, b), (family, step, (a - b).abs().max().item())
