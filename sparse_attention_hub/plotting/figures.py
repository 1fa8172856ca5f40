"""Figures of sparse attention runs (matplotlib, PNG), and the summaries they are drawn from.

- :func:`plot_layer_metrics`: mean density and mean output error per layer, one line per run;
- :func:`plot_error_vs_density`: one point per configuration (mean density, mean error);
- :func:`plot_speed_vs_context`: a speed measure against context length, one line per series.

Runs are read from ``micro_metrics.jsonl`` files (:func:`load_micro_metrics`). The figures are
built on ``matplotlib.figure.Figure`` directly, so no global pyplot state or GUI backend is used.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ..metric_logging import DENSITY, FILE_NAME, OUTPUT_ERROR

Record = Dict[str, Any]
PathLike = Union[str, Path]


def load_micro_metrics(path: PathLike) -> List[Record]:
    """The records of a ``micro_metrics.jsonl`` file, or of the one inside a directory."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def per_layer_summary(
    records: Sequence[Record], metric: str
) -> Dict[int, Tuple[float, float, int]]:
    """``{layer: (mean, standard deviation, count)}`` of ``metric``'s values."""
    values: Dict[int, List[float]] = defaultdict(list)
    for record in records:
        if record["metric"] == metric and record["metadata"].get("layer_idx") is not None:
            values[int(record["metadata"]["layer_idx"])].append(float(record["value"]))
    summary = {}
    for layer, xs in sorted(values.items()):
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        summary[layer] = (mean, std, len(xs))
    return summary


def mean_metric(records: Sequence[Record], metric: str) -> float:
    """Mean of ``metric`` over all records (NaN when there is none)."""
    xs = [float(r["value"]) for r in records if r["metric"] == metric]
    return sum(xs) / len(xs) if xs else math.nan


def _figure(ncols: int = 1, width: float = 6.4) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.2), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def plot_layer_metrics(runs: Mapping[str, Sequence[Record]], path: PathLike) -> Path:
    """Density (left) and output error (right) per layer: mean with a +-1 std band, one line
    per run label. Returns the PNG path."""
    if not runs:
        raise ValueError("runs must map at least one label to its records")
    fig, axes = _figure(2)
    for ax, metric, title in (
        (axes[0], DENSITY, "attention density"),
        (axes[1], OUTPUT_ERROR, "relative attention-output error"),
    ):
        for label, records in runs.items():
            summary = per_layer_summary(records, metric)
            if not summary:
                continue
            layers = list(summary)
            means = [summary[layer][0] for layer in layers]
            stds = [summary[layer][1] for layer in layers]
            ax.plot(layers, means, marker="o", markersize=3, label=label)
            ax.fill_between(
                layers,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                alpha=0.2,
            )
        ax.set_xlabel("layer")
        ax.set_ylabel(title)
        ax.set_title(f"{title} per layer")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return _save(fig, path)


def plot_error_vs_density(
    points: Mapping[str, Tuple[float, float]], path: PathLike, log_error: bool = False
) -> Path:
    """One labelled point per configuration at (mean density, mean output error)."""
    if not points:
        raise ValueError("points must map at least one label to (density, error)")
    fig, (ax,) = _figure()
    for label, (density, error) in points.items():
        ax.scatter([density], [error], s=36)
        ax.annotate(
            label, (density, error), textcoords="offset points", xytext=(4, 4), fontsize="small"
        )
    ax.set_xlabel("mean attention density")
    ax.set_ylabel("mean relative attention-output error")
    if log_error:
        ax.set_yscale("log")
    ax.set_title("output error against density")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_speed_vs_context(
    series: Mapping[str, Sequence[Tuple[float, float]]],
    path: PathLike,
    ylabel: str = "tokens / s",
    log_x: bool = True,
) -> Path:
    """A speed measure (``ylabel``) against context length, one line per series of
    ``(context length, value)`` pairs."""
    if not series:
        raise ValueError("series must map at least one label to (context length, value) pairs")
    fig, (ax,) = _figure()
    for label, pairs in series.items():
        pairs = sorted(pairs)
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=label)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} against context length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
