"""Quality report: accuracy and attention-output error of each masker family on the synthetic
RULER-style tasks, against dense attention.

For every configuration (dense, then each masker family at about 10% density) the synthetic
tasks run at each context length through the benchmark executor (resumable: re-running skips
what is done). The report gives task accuracy per length, the measured mean density and the
mean relative attention-output error (sampled micro metrics), as a markdown table and figures.

    python benchmarks/quality_report.py                         # SmolLM2-135M-Instruct, 2K-8K
    python benchmarks/quality_report.py --lengths 2048 --samples 2 --configs dense oracle_topk
    python benchmarks/quality_report.py --model HuggingFaceTB/SmolLM2-360M-Instruct \\
        --configs dense my_config.json

Families whose masker classes are not available in this build are skipped with a note; a
configuration can also be a JSON/YAML file (``{"maskers": [...]}``) or a name from
``sparse_attention_hub.configs.NAMED``. HashAttention and DoubleSparsity need weight/channel
files, so they enter only as such files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sparse_attention_hub.__main__ import default_model
from sparse_attention_hub.benchmark import (
    AdapterConfig,
    BenchmarkConfig,
    BenchmarkExecutor,
    construct_result_directory,
)
from sparse_attention_hub.benchmark.tasks.synthetic import TASKS
from sparse_attention_hub.configs import NAMED, config_from_dict, load_config
from sparse_attention_hub.metric_logging import DENSITY, OUTPUT_ERROR
from sparse_attention_hub.plotting import (
    load_micro_metrics,
    mean_metric,
    plot_error_vs_density,
    plot_layer_metrics,
    plot_speed_vs_context,
)

_SINK = {"type": "SinkMaskerConfig", "sink_size": 4}
_LOCAL = {"type": "LocalMaskerConfig", "window_size": 0.05}
#: Masker families at about 10% of the keys (sink 4 + local 5% + 5% chosen by the family).
FAMILIES: Dict[str, List[Dict[str, Any]]] = {
    "sink_local": [_SINK, {"type": "LocalMaskerConfig", "window_size": 0.1}],
    "oracle_topk": [_SINK, _LOCAL, {"type": "OracleTopKConfig", "heavy_size": 0.05}],
    "oracle_topp": [_SINK, _LOCAL, {"type": "OracleTopPMaskerConfig", "top_p": 0.75}],
    "quest": [
        _SINK,
        _LOCAL,
        {"type": "QuestTopKMaskerConfig", "heavy_size": 0.05, "page_size": 16},
    ],
    "pqcache": [
        _SINK,
        _LOCAL,
        {"type": "PQCacheConfig", "heavy_size": 0.05, "pq_sub_dim": 8, "pq_bits": 6},
    ],
    "random_sampling": [
        _SINK,
        _LOCAL,
        {"type": "RandomSamplingMaskerConfig", "sampling_rate": 0.05, "seed": 0},
    ],
    "adaptive_sampling": [
        _SINK,
        _LOCAL,
        {"type": "OracleTopKConfig", "heavy_size": 0.025},
        {
            "type": "AdaptiveSamplingMaskerConfig",
            "base_rate_sampling": 0.025,
            "epsilon": 0.25,
            "delta": 0.25,
            "init_offset": 4,
            "local_offset": 0.05,
            "seed": 0,
        },
    ],
    "magic_pig": [_SINK, _LOCAL, {"type": "MagicPigConfig", "lsh_l": 16, "lsh_k": 8}],
}


def resolve_configs(names: Sequence[str]) -> Tuple[List[Tuple[str, Any]], List[str]]:
    """(name, config) pairs for ``names`` ("dense", families, named configs, files), and notes
    on the families this build does not have."""
    configs, notes = [], []
    for name in names:
        if name in FAMILIES:
            try:
                configs.append((name, config_from_dict({"maskers": FAMILIES[name]})))
            except (ValueError, TypeError) as error:
                notes.append(f"{name}: skipped ({str(error).split(';')[0]})")
        elif name in NAMED or Path(name).is_file():
            configs.append((Path(name).stem if Path(name).is_file() else name, load_config(name)))
        else:
            raise ValueError(
                f"--configs entry {name!r} is not 'dense', a family {sorted(FAMILIES)}, a named "
                f"configuration {sorted(NAMED)} or a file"
            )
    return configs, notes


def collect(
    results_dir: Path, model: str, configs: Sequence[Tuple[str, Any]], lengths: Sequence[int]
) -> Dict[str, Dict[str, Any]]:
    """Per configuration: accuracy per length, task scores, micro-metric records."""
    table: Dict[str, Dict[str, Any]] = {}
    for name, _ in configs:
        entry: Dict[str, Any] = {"accuracy": {}, "tasks": {}, "records": []}
        for length in lengths:
            leaf = Path(
                construct_result_directory(
                    str(results_dir), model, name, "synthetic_ruler", str(length)
                )
            )
            metrics_path = leaf / "metrics.json"
            if not metrics_path.is_file():
                continue
            metrics = json.loads(metrics_path.read_text())
            entry["accuracy"][length] = metrics["overall_score"]
            for task, score in metrics["task_scores"].items():
                entry["tasks"].setdefault(task, []).append(score["string_match"])
            if (leaf / "micro_metrics.jsonl").is_file():
                entry["records"].extend(load_micro_metrics(leaf))
        table[name] = entry
    return table


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_report(
    out: Path,
    model: str,
    table: Dict[str, Dict[str, Any]],
    lengths: Sequence[int],
    notes: Sequence[str],
    settings: Dict[str, Any],
) -> Path:
    """report.md with the summary and per-task tables, and the figures next to it."""
    lines = [
        "# Sparse attention quality report",
        "",
        f"Model: `{model}`  ",
        f"Synthetic tasks: {', '.join(settings['tasks'])}; {settings['samples']} sample(s) per "
        f"task and length; device {settings['device']}, {settings['dtype']}; micro metrics "
        f"sampled at {settings['sampling']}.",
        "",
        "Accuracy is the RULER string match (%), averaged over tasks. Density: fraction of the "
        "attention mask the maskers chose (question and generated tokens; the context prefill "
        "is dense). Error: ||o_sparse - o_dense|| / ||o_dense|| per attention call.",
        "",
    ]
    header = ["config", "density", "output error"] + [f"acc@{n}" for n in lengths] + ["mean acc"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    points, layer_runs, accuracy_series = {}, {}, {}
    for name, entry in table.items():
        records = entry["records"]
        density = mean_metric(records, DENSITY) if records else (1.0 if name == "dense" else None)
        error = (
            mean_metric(records, OUTPUT_ERROR) if records else (0.0 if name == "dense" else None)
        )
        accs = [entry["accuracy"].get(n) for n in lengths]
        known = [a for a in accs if a is not None]
        mean_acc = sum(known) / len(known) if known else None
        lines.append(
            "| "
            + " | ".join(
                [name, _fmt(density, 3), _fmt(error, 4)]
                + [_fmt(a, 1) for a in accs]
                + [_fmt(mean_acc, 1)]
            )
            + " |"
        )
        if density is not None and error is not None and not math.isnan(density + error):
            points[name] = (density, error)
        if records:
            layer_runs[name] = records
        if known:
            accuracy_series[name] = [(n, a) for n, a in zip(lengths, accs) if a is not None]
    tasks = sorted({t for entry in table.values() for t in entry["tasks"]})
    if tasks:
        lines += ["", "Accuracy per task (%, mean over lengths):", ""]
        lines += ["| config | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for name, entry in table.items():
            cells = [
                _fmt(sum(entry["tasks"][t]) / len(entry["tasks"][t]), 1)
                if t in entry["tasks"]
                else "-"
                for t in tasks
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not run:", ""] + [f"- {note}" for note in notes]
    figures = []
    if points:
        figures.append(plot_error_vs_density(points, out / "error_vs_density.png"))
    if layer_runs:
        figures.append(plot_layer_metrics(layer_runs, out / "layer_metrics.png"))
    if accuracy_series:
        figures.append(
            plot_speed_vs_context(accuracy_series, out / "accuracy_vs_length.png", "accuracy (%)")
        )
    lines += [""] + [f"![{f.stem}]({f.name})" for f in figures]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="hub name, local folder or .gguf (default SmolLM2-135M)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--samples", type=int, default=5, help="samples per task and length")
    parser.add_argument("--configs", nargs="+", default=["dense", *FAMILIES])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-new-tokens", type=int, help="cap below the per-task budgets")
    parser.add_argument("--sampling", type=float, default=0.25, help="micro-metric sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/bench_out/quality")
    args = parser.parse_args(argv)

    model = args.model or default_model()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    configs, notes = resolve_configs(args.configs)
    out = Path(args.out)
    executor = BenchmarkExecutor(
        base_result_dir=str(out / "results"),
        device=args.device,
        micro_metric_logger_sampling_factor=args.sampling,
        micro_metric_seed=args.seed,
    )
    generation = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    results = executor.run_benchmark_matrix(
        [model],
        configs,
        [
            BenchmarkConfig(
                "synthetic_ruler",
                [str(n) for n in args.lengths],
                {"tasks": args.tasks, "num_samples": args.samples, "seed": args.seed},
            )
        ],
        AdapterConfig(model_kwargs={"dtype": getattr(torch, dtype)}),
        generation_kwargs=generation,
    )
    for failure in results.failed_executions:
        first_line = failure.error_message.splitlines()[0] if failure.error_message else ""
        notes.append(
            f"{failure.stub.sparse_config_name} at {failure.stub.subset} tokens: failed "
            f"({failure.error_type}: {first_line})"
        )
    table = collect(out / "results", model, configs, args.lengths)
    settings = {
        "tasks": args.tasks,
        "samples": args.samples,
        "device": args.device,
        "dtype": dtype,
        "sampling": args.sampling,
    }
    report = write_report(out, model, table, args.lengths, notes, settings)
    print(report.read_text())
    print(f"report: {report}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
