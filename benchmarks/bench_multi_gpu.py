"""Multi-GPU runs (issue 11): a model sharded with ``device_map="auto"``, and the evaluation
executor on a Ray instance spanning every GPU of the machine.

``shard``: an 8B-shaped Llama (random weights, bf16) is saved once, then run twice: whole on
the first device, and loaded back through ``ModelAdapterHF(..., model_kwargs={"device_map":
"auto"})`` (accelerate places its layers over every GPU). Each run prefills the context densely
and decodes ``--new-tokens`` greedy tokens with dense attention and with each masker family;
the script reports decode tokens/s of both placements and whether the sharded model produced
the same tokens as the single-device one.

``ray``: a benchmark matrix (a ~1B-shaped random-weights model x sparse configurations x
synthetic RULER lengths) runs once with the local runner on one GPU and once with the Ray
backend on a local Ray instance that holds every GPU (one stub per GPU at a time); the result
trees must be identical (micro-metric values to 1e-6) and the script reports the wall-clock
speedup.

    python benchmarks/bench_multi_gpu.py shard --context 131072 --out bench_out/shard.json
    python benchmarks/bench_multi_gpu.py ray --out bench_out/ray.json
    # CPU smoke (no sharding, tiny sizes):
    python benchmarks/bench_multi_gpu.py shard --device cpu --layers 2 --hidden 256 --context 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from common import device_name, generate_greedy as generate, git_commit, hat_config, write_json

import sparse_attention_hub  # noqa: F401
from sparse_attention_hub.adapters import AttentionRegistry, ModelAdapterHF
from sparse_attention_hub.adapters.huggingface import crop_cache_to
from sparse_attention_hub.configs import config_from_dict
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)

_SL = [
    {"type": "SinkMaskerConfig", "sink_size": 128},
    {"type": "LocalMaskerConfig", "window_size": 128},
]


def families(args, channel_file: str) -> Dict[str, ResearchAttentionConfig]:
    """One configuration per masker family: sink 128 + local 128, plus about 5% of the keys
    chosen by the family."""
    extra: Dict[str, List[Dict[str, Any]]] = {
        "sink_local": [],
        "oracle_topk": [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
        "oracle_topp": [{"type": "OracleTopPMaskerConfig", "top_p": 0.75}],
        "quest_topk": [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16}],
        "double_sparsity": [
            {
                "type": "DoubleSparsityTopKMaskerConfig",
                "heavy_size": 0.05,
                "sorted_channel_file": channel_file,
                "group_factor": 8,
            }
        ],
        "pq_cache": [{"type": "PQCacheConfig", "heavy_size": 0.05, "pq_sub_dim": 8, "pq_bits": 6}],
        "random_sampling": [
            {"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.05, "seed": 0}
        ],
        "magic_pig": [{"type": "MagicPigConfig", "lsh_l": 75, "lsh_k": 8, "seed": 0}],
        "adaptive_sampling": [
            {"type": "OracleTopKConfig", "heavy_size": 0.025},
            {
                "type": "AdaptiveSamplingMaskerConfig",
                "base_rate_sampling": 0.025,
                "epsilon": 0.25,
                "delta": 0.25,
                "init_offset": 128,
                "local_offset": 128,
                "seed": 0,
            },
        ],
    }
    out = {}
    for name, maskers in extra.items():
        out[name] = config_from_dict({"maskers": _SL + maskers})
    head_dim = args.hidden // args.heads
    out["hash_topk"] = ResearchAttentionConfig(
        config_from_dict({"maskers": _SL}).masker_configs
        + [hat_config(args.heads, head_dim, layers=args.layers)]
    )
    order = ["sink_local", "oracle_topk", "oracle_topp", "hash_topk", "quest_topk"]
    order += ["double_sparsity", "pq_cache", "random_sampling", "magic_pig", "adaptive_sampling"]
    return {name: out[name] for name in order if name in args.families or "all" in args.families}


def write_channel_file(path: str, layers: int, heads: int, head_dim: int) -> None:
    """A DoubleSparsity channel file with a random channel order per layer and head."""
    gen = torch.Generator().manual_seed(0)
    data = {
        f"model.layers.{layer}.self_attn.qk_proj": [
            torch.randperm(head_dim, generator=gen).tolist() for _ in range(heads)
        ]
        for layer in range(layers)
    }
    Path(path).write_text(json.dumps(data))


def llama_config(args, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.context) + 1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def save_random_model(args, folder: str, device: torch.device, dtype, vocab: int, tokenizer=None):
    """Builds the random-weights model on ``device`` (seed 0), saves it (and ``tokenizer``) to
    ``folder`` and returns it."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(args, vocab)).to(dtype).eval()
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


def simple_tokenizer():
    """A word-level tokenizer built here (the shard run needs one only to build the adapter)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i + 3 for i in range(61)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def sync_all() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def decode(model, cache, ids, n_new: int):
    """(new tokens, decode tokens/s) of ``n_new`` greedy steps after a 2-token warm-up (which
    also builds the maskers' per-layer state); the cache is cropped back afterwards."""
    start_len = int(cache.get_seq_length())
    with torch.no_grad():
        warm = generate(model, cache, ids, 2)
        sync_all()
        start = time.perf_counter()
        out = generate(model, cache, warm, n_new)
        sync_all()
        elapsed = time.perf_counter() - start
    crop_cache_to(cache, start_len)
    return out[0, -n_new:].tolist(), n_new / elapsed


def run_placement(model, args, configs, ids, label: str) -> Dict[str, Dict[str, Any]]:
    """Prefills ``ids[:, :-1]`` and decodes with dense attention and each configuration."""
    from transformers import DynamicCache

    registry = AttentionRegistry()
    cache = DynamicCache(config=model.config)
    sync_all()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    sync_all()
    prefill_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)  # flash SDPA: the faster dense baseline
    results: Dict[str, Dict[str, Any]] = {}
    tokens, rate = decode(model, cache, ids, args.new_tokens)
    results["dense"] = dict(tokens=tokens, tokens_per_s=rate)
    print(f"  {label:>8} {'dense':>18} {rate:8.2f} tok/s  (prefill {prefill_s:.1f} s)", flush=True)
    for name, config in configs.items():
        attention = ResearchAttention.create_from_config(config)
        attn_name = registry.register_sparse_attention(attention)
        previous = registry.configure_model_attention(model, attn_name)
        function = registry.get_attention_adapter(attn_name)
        function.state = {}
        try:
            t0 = time.perf_counter()
            tokens, rate = decode(model, cache, ids, args.new_tokens)
            wall = time.perf_counter() - t0
        except Exception as error:  # keep going: one family's failure is a result too
            results[name] = dict(error=f"{type(error).__name__}: {error}")
            print(f"  {label:>8} {name:>18} FAILED {type(error).__name__}: {error}", flush=True)
            continue
        finally:
            registry.restore_model_attention(model, previous)
            registry.unregister_attention_function(attn_name)
        results[name] = dict(tokens=tokens, tokens_per_s=rate, wall_s=wall)
        print(f"  {label:>8} {name:>18} {rate:8.2f} tok/s  ({wall:.1f} s)", flush=True)
    results["_prefill_s"] = dict(value=prefill_s)
    del cache
    return results


def shard_main(args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sah_shard_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = str(work / "model")
    channel_file = str(work / "channels.json")
    write_channel_file(channel_file, args.layers, args.heads, args.hidden // args.heads)
    configs = families(args, channel_file)
    tokenizer = simple_tokenizer()
    rows, meta_runs = [], {}
    for n in args.context:
        torch.manual_seed(1)
        ids = torch.randint(3, args.vocab, (1, n))
        print(f"context {n}: single device {device}", flush=True)
        t0 = time.perf_counter()
        del_model = save_random_model(args, folder, device, dtype, args.vocab, tokenizer)
        del del_model  # both placements load the saved files the same way
        print(f"  built + saved in {time.perf_counter() - t0:.1f} s", flush=True)
        adapter = ModelAdapterHF(folder, None, model_kwargs={"dtype": dtype}, device=args.device)
        single = run_placement(adapter.model, args, configs, ids.to(device), "1 device")
        adapter.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"context {n}: device_map='auto' over {gpus} GPU(s)", flush=True)
        kwargs: Dict[str, Any] = {"dtype": dtype}
        if device.type == "cuda":
            kwargs["device_map"] = "auto"
        t0 = time.perf_counter()
        adapter = ModelAdapterHF(folder, None, model_kwargs=kwargs, device=args.device)
        model = adapter.model
        placement = getattr(model, "hf_device_map", {"": str(device)})
        used = sorted({str(v) for v in placement.values()})
        print(f"  loaded in {time.perf_counter() - t0:.1f} s; devices {used}", flush=True)
        first = adapter._input_device()
        sharded = run_placement(model, args, configs, ids.to(first), "sharded")
        adapter.close()
        del model
        meta_runs[n] = dict(placement={k: str(v) for k, v in placement.items()}, devices=used)
        for name in ["dense", *configs]:
            a, b = single.get(name, {}), sharded.get(name, {})
            same = "tokens" in a and a.get("tokens") == b.get("tokens")
            prefix = 0
            for x, y in zip(a.get("tokens") or [], b.get("tokens") or []):
                if x != y:
                    break
                prefix += 1
            rows.append(
                dict(
                    context=n,
                    config=name,
                    single_tokens_per_s=a.get("tokens_per_s"),
                    sharded_tokens_per_s=b.get("tokens_per_s"),
                    same_tokens=same,
                    single_error=a.get("error"),
                    sharded_error=b.get("error"),
                    same_prefix=prefix,
                    tokens=a.get("tokens"),
                    sharded_tokens=b.get("tokens"),
                )
            )
        rows.append(
            dict(
                context=n,
                config="_prefill",
                single_s=single["_prefill_s"]["value"],
                sharded_s=sharded["_prefill_s"]["value"],
            )
        )
    print(f"\n{'context':>8} {'config':>18} {'1 GPU tok/s':>12} {'sharded':>9} {'same':>5}")
    for r in rows:
        if r["config"] == "_prefill":
            print(f"{r['context']:>8} {'(prefill s)':>18} {r['single_s']:>12.1f} {r['sharded_s']:>9.1f}")
            continue
        a = r["single_tokens_per_s"]
        b = r["sharded_tokens_per_s"]
        fmt = lambda x: f"{x:.2f}" if x is not None else "-"  # noqa: E731
        print(f"{r['context']:>8} {r['config']:>18} {fmt(a):>12} {fmt(b):>9} {str(r['same_tokens']):>5}")
    meta = dict(
        device=device_name(device),
        gpus=gpus,
        torch=torch.__version__,
        commit=git_commit(),
        layers=args.layers,
        hidden=args.hidden,
        new_tokens=args.new_tokens,
        runs=meta_runs,
    )
    write_json(args.out, meta, rows)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
def result_files(root: Path) -> Dict[str, Any]:
    """{relative path: content} of a result tree, micro-metric records without timestamps."""
    files: Dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content: Any = path.read_text()
        if path.name == "micro_metrics.jsonl":
            content = [json.loads(line) for line in content.splitlines()]
            for record in content:
                record.pop("timestamp", None)
        files[path.relative_to(root).as_posix()] = content
    return files


def _close(a: Any, b: Any, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= rel * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    return a == b


def ray_main(args) -> None:
    from sparse_attention_hub.benchmark import AdapterConfig, BenchmarkConfig, BenchmarkExecutor
    from sparse_attention_hub.benchmark.ray_runner import RayRunner
    from transformers import AutoTokenizer

    import ray

    device = torch.device(args.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sah_ray_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = str(work / "model")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = save_random_model(args, folder, torch.device("cpu"), dtype, len(tokenizer), tokenizer)
    del model
    names = ["dense", "sink_local", "oracle_topk", "quest", "pq_cache", "magic_pig"]
    fam = {
        "dense": None,
        "sink_local": [_SL[0], {"type": "LocalMaskerConfig", "window_size": 0.1}],
        "oracle_topk": _SL + [{"type": "OracleTopKConfig", "heavy_size": 0.05}],
        "quest": _SL + [{"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16}],
        "pq_cache": _SL
        + [{"type": "PQCacheConfig", "heavy_size": 0.05, "pq_sub_dim": 8, "pq_bits": 6}],
        "magic_pig": _SL + [{"type": "MagicPigConfig", "lsh_l": 16, "lsh_k": 8, "seed": 0}],
    }
    configs = [(n, None if fam[n] is None else config_from_dict({"maskers": fam[n]})) for n in names]
    benchmark = BenchmarkConfig(
        "synthetic_ruler",
        [str(n) for n in args.ruler_lengths],
        {"tasks": ["niah_single_2", "niah_multikey_1", "vt"], "num_samples": args.samples},
    )
    generation = {"max_new_tokens": args.new_tokens}

    def run(backend: str, base: Path, **kwargs: Any):
        executor = BenchmarkExecutor(
            base_result_dir=str(base), backend=backend, verbose=True, **kwargs
        )
        t0 = time.perf_counter()
        results = executor.run_benchmark_matrix(
            [folder], configs, [benchmark], AdapterConfig(model_kwargs={"dtype": dtype}), generation
        )
        return results, time.perf_counter() - t0

    local, local_s = run("local", work / "local", device=args.device)
    print(f"local runner on {args.device}: {local_s:.1f} s", flush=True)
    ray.init(
        num_gpus=gpus,
        num_cpus=max(2, gpus * 4),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=2 * 2**30,
    )
    resources = ray.cluster_resources()
    print(f"ray cluster: {resources.get('GPU', 0)} GPU, {resources.get('CPU', 0)} CPU", flush=True)
    remote, remote_s = run("ray", work / "ray")
    print(f"ray backend over {gpus} GPU(s): {remote_s:.1f} s", flush=True)
    assert isinstance(remote, object)
    ray.shutdown()
    local_files, ray_files = result_files(work / "local"), result_files(work / "ray")
    mismatched = sorted(
        k for k in set(local_files) | set(ray_files)
        if not _close(local_files.get(k), ray_files.get(k), 1e-6)
    )
    per_stub = [
        dict(stub=r.stub.label, seconds=getattr(r, "execution_time", None))
        for r in remote.individual_results
    ]
    rows = [
        dict(
            runner="local",
            device=args.device,
            seconds=local_s,
            completed=local.progress.completed_stubs,
            failed=local.progress.failed_stubs,
        ),
        dict(
            runner="ray",
            gpus=gpus,
            seconds=remote_s,
            completed=remote.progress.completed_stubs,
            failed=remote.progress.failed_stubs,
            speedup=local_s / remote_s,
        ),
    ]
    summary = dict(
        files=len(local_files),
        mismatched_files=mismatched,
        identical=not mismatched and len(local_files) > 0,
        stubs=local.progress.total_stubs,
    )
    print(json.dumps(summary, indent=1))
    for f in local.failed_executions + remote.failed_executions:
        print("FAILED", f.stub.label, f.error_type, f.error_message.splitlines()[0])
    metrics = {
        k: v for k, v in local_files.items() if k.endswith("metrics.json") and "micro" not in k
    }
    meta = dict(
        device=device_name(device),
        gpus=gpus,
        torch=torch.__version__,
        commit=git_commit(),
        layers=args.layers,
        hidden=args.hidden,
        summary=summary,
        per_stub=per_stub,
        metrics=metrics,
    )
    write_json(args.out, meta, rows)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["shard", "ray"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", type=int, nargs="+", default=[131072])
    parser.add_argument("--families", nargs="+", default=["all"])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokenizer", default=".mgpu/tokenizer", help="ray: tokenizer folder")
    parser.add_argument("--ruler-lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--out", default="bench_out/multi_gpu.json")
    args = parser.parse_args()
    # shard: 8B-shaped (32 layers, 4096, 14336, 32/8 heads); ray: ~1B-shaped.
    big = args.mode == "shard"
    defaults = dict(
        layers=32 if big else 16,
        hidden=4096 if big else 2048,
        intermediate=14336 if big else 8192,
        heads=32 if big else 16,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    (shard_main if big else ray_main)(args)


if __name__ == "__main__":
    main()
