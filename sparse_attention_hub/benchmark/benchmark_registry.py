"""Registry of benchmark classes by (lower-case) name, filled by ``@register_benchmark``."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Type

from .base import Benchmark

_BENCHMARK_REGISTRY: Dict[str, Type[Benchmark]] = {}


def register_benchmark(
    name: Optional[str] = None, aliases: Optional[List[str]] = None
) -> Callable[[Type[Benchmark]], Type[Benchmark]]:
    """Class decorator: registers a benchmark under ``name`` (default: its ``benchmark_name``)
    and ``aliases``, case-insensitively."""

    def decorator(benchmark_class: Type[Benchmark]) -> Type[Benchmark]:
        main = name or benchmark_class.benchmark_name or benchmark_class.__name__
        for key in [main, *(aliases or [])]:
            _BENCHMARK_REGISTRY[key.lower()] = benchmark_class
        return benchmark_class

    return decorator


def get_registered_benchmarks() -> Dict[str, Type[Benchmark]]:
    return dict(_BENCHMARK_REGISTRY)


def get_available_benchmark_names() -> List[str]:
    return sorted(_BENCHMARK_REGISTRY)


def _benchmark_class(benchmark_name: str) -> Type[Benchmark]:
    key = benchmark_name.strip().lower()
    if key not in _BENCHMARK_REGISTRY:
        raise ValueError(
            f"benchmark_name {benchmark_name!r} is not registered; "
            f"available: {get_available_benchmark_names()}"
        )
    return _BENCHMARK_REGISTRY[key]


def create_benchmark_instance(
    benchmark_name: str, subsets: Optional[List[str]] = None, **benchmark_kwargs: Any
) -> Benchmark:
    """The benchmark registered as ``benchmark_name``, running ``subsets`` (None: all);
    ``benchmark_kwargs`` go to its constructor (e.g. ``data_dir``)."""
    return _benchmark_class(benchmark_name)(subsets_to_run=subsets, **benchmark_kwargs)


def validate_benchmark_config(benchmark_name: str, subsets: Optional[List[str]] = None) -> None:
    """Raises ValueError if the benchmark is unknown or a subset is not one of its datasets."""
    _benchmark_class(benchmark_name).validate_subsets(subsets or [])


def get_benchmark_subsets(benchmark_name: str) -> List[str]:
    """The datasets (subsets) that ``benchmark_name`` offers."""
    return list(_benchmark_class(benchmark_name).all_datasets)
