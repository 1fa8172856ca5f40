"""End-to-end decode speed with HF generate (target P9 of PERFORMANCE.md) and question prefill
(target P10).

An 8B-shaped Llama (random weights, bf16; 32 heads, 8 kv heads, d=128, 32 layers by default)
is prefilled densely with a long context, then decodes a fixed number of tokens with each
attention configuration; decode tokens/s (prefill excluded) are compared with dense SDPA in the
same process. Per context and configuration it also times a question prefill: one forward of
``--question-tokens`` (64) new tokens over the prefilled cache (median of ``--question-reps``
synced runs, the cache cropped back after each; an untimed first run builds the maskers'
per-layer state for the context, as the warm-up does for decode), reported in ms and as the
time ratio sparse / dense next to the decode time ratio dense tok/s / sparse tok/s (P10: the
first at most 1.5x the second).

    python benchmarks/bench_e2e.py --context 32768 131072 --new-tokens 64
    python benchmarks/bench_e2e.py --device cpu --layers 2 --hidden 256 --context 2048   # smoke
    (the smoke run also with --cache static: a StaticCache, every configuration)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import device_name, generate_greedy as generate, git_commit, hat_config, write_json

import sparse_attention_hub  # noqa: F401
from sparse_attention_hub.adapters import AttentionRegistry
from sparse_attention_hub.adapters.huggingface import crop_cache_to
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


def make_config(name: str, args) -> ResearchAttentionConfig:
    """The P9 configurations: sink 128 + local 128, plus a 5% top-k of each kind."""
    base = [SinkMaskerConfig(128), LocalMaskerConfig(128)]
    extra = {
        "sink_local": [],
        "oracle_topk": [OracleTopKConfig(0.05)],
        "hash_topk": [hat_config(args.heads, args.hidden // args.heads, layers=args.layers)],
        "quest_topk": [QuestTopKMaskerConfig(heavy_size=0.05, page_size=16)],
    }
    return ResearchAttentionConfig(base + extra[name])


CONFIG_NAMES = ["sink_local", "oracle_topk", "hash_topk", "quest_topk"]


def build_model(args, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.context) + 1024,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def decode_tokens_per_s(model, cache, last_ids, n_new: int, device, profile: int = 0):
    """Tokens/s of `n_new` greedy steps from `cache` (the prompt's last token not yet seen),
    after a 2-token warm-up (which also builds the maskers' per-layer state for the context, as
    the question prefill would). Each run continues the previous one (the masker state follows
    the cache); the cache is cropped back to its start at the end. With ``profile`` > 0, also
    returns a profiler table of that many decode steps."""
    start_len = int(cache.get_seq_length())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    table = None
    with torch.no_grad():
        ids = generate(model, cache, last_ids, 2)
        sync()
        start = time.perf_counter()
        ids = generate(model, cache, ids, n_new)
        sync()
        elapsed = time.perf_counter() - start
        if profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile

            activities = [ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            with torch_profile(activities=activities) as prof:
                generate(model, cache, ids, profile)
                sync()
            sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=25)
    crop_cache_to(cache, start_len)
    return n_new / elapsed, table


def question_prefill_ms(model, cache, question_ids, device, reps: int, fresh_state=None) -> float:
    """Median ms of one forward of ``question_ids`` (1, q) over ``cache`` (synced), after one
    untimed run; the cache is cropped back to its start after every run. ``fresh_state`` (a
    callable) gives the sparse attention a new masker state before the untimed run, which then
    builds the per-layer state for the context; the timed runs rewrite the question's rows."""
    start_len = int(cache.get_seq_length())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if fresh_state is not None:
        fresh_state()
    times = []
    with torch.no_grad():
        for rep in range(reps + 1):
            sync()
            start = time.perf_counter()
            model(input_ids=question_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            sync()
            if rep:
                times.append((time.perf_counter() - start) * 1e3)
            crop_cache_to(cache, start_len)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--configs", nargs="+", default=CONFIG_NAMES, choices=CONFIG_NAMES)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--profile", type=int, default=0, help="profile this many decode steps")
    parser.add_argument(
        "--question-tokens", type=int, default=64, help="tokens of the timed question prefill"
    )
    parser.add_argument(
        "--question-reps", type=int, default=5, help="timed question prefills (median)"
    )
    parser.add_argument(
        "--cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="static: a StaticCache, whose decode step generate() compiles on CUDA (CUDA "
        "graphs); every configuration runs, the maskers with per-key state (hash_topk, "
        "quest_topk) refresh it for the buffer positions each step writes",
    )
    parser.add_argument(
        "--dense-baselines",
        nargs="+",
        choices=["default", "flash"],
        default=["default", "flash"],
        help="dense SDPA baselines to run: torch's default backend and/or cuDNN off",
    )
    parser.add_argument("--out", default="bench_out/e2e.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(args, device, dtype)
    registry = AttentionRegistry()
    print(f"device: {device_name(device)}  layers {args.layers}  hidden {args.hidden}  {dtype}")
    print(
        f"{'context':>8} {'config':>22} {'decode tok/s':>13} {'x dense':>8} "
        f"{f'q{args.question_tokens} ms':>10} {'time x dense':>12} {'decode time x':>13}"
    )
    rows = []
    profiles = []
    from transformers import DynamicCache, StaticCache

    configs = args.configs
    for n in args.context:
        ids = torch.randint(0, args.vocab, (1, n), device=device)
        question = torch.randint(0, args.vocab, (1, args.question_tokens), device=device)
        if args.cache == "static":
            decode_room = 2 + args.new_tokens + args.profile
            room = n + max(decode_room, args.question_tokens) + 8
            cache = StaticCache(config=model.config, max_cache_len=room)
        else:
            cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
        # Dense baselines: torch's default SDPA backend (cuDNN on Hopper, which rebuilds its
        # execution plan on the host for every new key length: ~7 ms per layer call in a
        # DynamicCache decode loop) and the flash / memory-efficient kernels (cuDNN off). The
        # sparse configurations are compared with the faster of the two.
        dense_rates, dense_question_ms = {}, {}
        for label, cudnn in (("dense SDPA (default)", True), ("dense SDPA (flash)", False)):
            if (device.type != "cuda" and not cudnn) or label.split("(")[1][:-1] not in (
                args.dense_baselines
            ):
                continue
            if device.type == "cuda":
                torch.backends.cuda.enable_cudnn_sdp(cudnn)
            dense_question_ms[label] = question_prefill_ms(
                model, cache, question, device, args.question_reps
            )
            rate, table = decode_tokens_per_s(
                model, cache, ids, args.new_tokens, device, args.profile
            )
            dense_rates[label] = rate
            profiles.append((n, label, table))
        if device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(False)
        dense = max(dense_rates.values())
        dense_ms = min(dense_question_ms.values())

        def report(config: str, tps: float, question_ms: float) -> None:
            """Prints and records one row: decode tok/s and question prefill ms, with the
            ratios to the faster dense baseline (P10 compares the two time ratios)."""
            decode_time_ratio = dense / tps
            print(
                f"{n:>8} {config:>22} {tps:>13.2f} {tps / dense:>8.2f} {question_ms:>10.2f} "
                f"{question_ms / dense_ms:>12.2f} {decode_time_ratio:>13.2f}"
            )
            rows.append(
                dict(
                    context=n,
                    config=config,
                    tokens_per_s=tps,
                    ratio=tps / dense,
                    question_tokens=args.question_tokens,
                    question_prefill_ms=question_ms,
                    question_prefill_ratio=question_ms / dense_ms,
                    decode_time_ratio=decode_time_ratio,
                    p10_met=question_ms / dense_ms <= 1.5 * decode_time_ratio,
                )
            )

        for label, rate in dense_rates.items():
            key = "dense_sdpa_" + ("default" if "default" in label else "flash")
            report(key, rate, dense_question_ms[label])
        for name in configs:
            attention = ResearchAttention.create_from_config(make_config(name, args))
            attn_name = registry.register_sparse_attention(attention)
            function = registry.get_attention_adapter(attn_name)
            previous = registry.configure_model_attention(model, attn_name)

            def fresh_state(function=function) -> None:
                function.state = {}

            try:
                question_ms = question_prefill_ms(
                    model, cache, question, device, args.question_reps, fresh_state
                )
                fresh_state()  # the decode warm-up builds its own state for the context
                tps, table = decode_tokens_per_s(
                    model, cache, ids, args.new_tokens, device, args.profile
                )
            finally:
                registry.restore_model_attention(model, previous)
                registry.unregister_attention_function(attn_name)
            profiles.append((n, name, table))
            report(name, tps, question_ms)
        del cache
    if args.profile:
        path = Path(args.out).with_suffix(".profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "\n\n".join(f"=== context {n}, {name}\n{table}" for n, name, table in profiles)
        )
        print(f"wrote {path}")
    meta = dict(
        device=device_name(device),
        torch=torch.__version__,
        commit=git_commit(),
        layers=args.layers,
        hidden=args.hidden,
        new_tokens=args.new_tokens,
        question_tokens=args.question_tokens,
        question_reps=args.question_reps,
        cache=args.cache,
    )
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
