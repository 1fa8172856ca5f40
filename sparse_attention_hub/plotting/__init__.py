"""Figures of sparse attention runs: per-layer density and error, error against density, speed
against context length."""

from .figures import (
    load_micro_metrics,
    mean_metric,
    per_layer_summary,
    plot_error_vs_density,
    plot_layer_metrics,
    plot_speed_vs_context,
)
from .generator import PlotGenerator
from .granularity import Granularity

__all__ = [
    "Granularity",
    "PlotGenerator",
    "load_micro_metrics",
    "mean_metric",
    "per_layer_summary",
    "plot_error_vs_density",
    "plot_layer_metrics",
    "plot_speed_vs_context",
]
