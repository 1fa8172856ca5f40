"""PlotGenerator: the reference's entry point, drawing the figures of :mod:`.figures` into a
storage folder."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Tuple, Union

from .figures import Record, plot_error_vs_density, plot_layer_metrics
from .granularity import Granularity


class PlotGenerator:
    """Saves figures as PNG files under ``storage_path``."""

    def __init__(self, storage_path: Union[str, Path] = "./plots") -> None:
        self.set_storage_path(storage_path)

    def set_storage_path(self, path: Union[str, Path]) -> None:
        self.storage_path = Path(path)
        self.storage_path.mkdir(parents=True, exist_ok=True)

    def generate_plot(
        self,
        granularity: Granularity,
        data: Mapping[str, Sequence[Record]],
        name: str = "layer_metrics",
    ) -> str:
        """Density and output error per layer of each run in ``data`` (label -> micro-metric
        records). Only ``PER_LAYER`` exists: the logged records are per layer."""
        if granularity != Granularity.PER_LAYER:
            raise ValueError(
                f"granularity must be Granularity.PER_LAYER (micro metrics are logged per "
                f"layer), got {granularity}"
            )
        return str(plot_layer_metrics(data, self.storage_path / f"{name}.png"))

    def generate_comparison_plot(
        self, data_dict: Mapping[str, Tuple[float, float]], name: str = "error_vs_density"
    ) -> str:
        """Mean output error against mean density, one point per configuration."""
        return str(plot_error_vs_density(data_dict, self.storage_path / f"{name}.png"))
