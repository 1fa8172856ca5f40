"""The reference's top-level ``benchmark`` import path, re-exporting
:mod:`sparse_attention_hub.benchmark`.

``from benchmark.executor import BenchmarkExecutor``, ``from benchmark.executor_config import
BenchmarkConfig``, ``from benchmark.longbench import LongBench`` and the like keep working: the
reference's module names are aliases of this package's modules.
"""

import sys

from sparse_attention_hub import benchmark as _impl
from sparse_attention_hub.benchmark import *  # noqa: F401,F403
from sparse_attention_hub.benchmark import (
    __all__,  # noqa: F401
    base,
    benchmark_registry,
    executor,
    executor_config,
)
from sparse_attention_hub.benchmark.tasks import (
    aime,
    infinite_bench,
    longbench,
    longbenchv2,
    loogle,
    mock,
    ruler,
    synthetic,
    zero_scrolls,
)

_ALIASES = {
    "base": base,
    "benchmark_registry": benchmark_registry,
    "executor": executor,
    "executor_config": executor_config,
    "tasks": _impl.tasks,
    "AIME2024": aime,
    "AIME2025": aime,
    "infinite_bench": infinite_bench,
    "longbench": longbench,
    "longbenchv2": longbenchv2,
    "loogle": loogle,
    "mock_benchmark": mock,
    "ruler": ruler,
    "ruler16k": ruler,
    "ruler32k": ruler,
    "synthetic": synthetic,
    "zero_scrolls": zero_scrolls,
}
for _name, _module in _ALIASES.items():
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
