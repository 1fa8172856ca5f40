"""Benchmark layer: registry, benchmark families, matrix executor with resumability.

    from sparse_attention_hub.benchmark import AdapterConfig, BenchmarkConfig, BenchmarkExecutor

    executor = BenchmarkExecutor(base_result_dir="results", device="cuda")
    executor.run_benchmark_matrix(
        ["HuggingFaceTB/SmolLM2-135M-Instruct"],
        [("dense", None), ("sink_local", load_config("sink_local"))],
        [BenchmarkConfig("synthetic_ruler", ["4096"], {"num_samples": 10})],
        AdapterConfig(model_kwargs={"dtype": torch.bfloat16}),
    )

Results: ``<base>/<model>/<config>/<benchmark>_<subset>/{raw_results.csv, metrics.json,
config.json, micro_metrics.jsonl}``. ``BenchmarkExecutor(..., backend="ray", ray_address=...)``
runs the same matrix as Ray tasks, one per GPU of a cluster; ``benchmark.raytune`` searches
masker hyperparameters with Ray Tune. The reference's top-level ``benchmark`` package path is
kept by a shim that re-exports this package.
"""

from . import tasks
from .base import Benchmark
from .benchmark_registry import (
    create_benchmark_instance,
    get_available_benchmark_names,
    get_benchmark_subsets,
    get_registered_benchmarks,
    register_benchmark,
)
from .executor import (
    ADAPTER_FACTORIES,
    BenchmarkExecutor,
    LocalRunner,
    StubRunner,
    StubWorker,
    huggingface_adapter,
)
from .executor_config import (
    AdapterConfig,
    BenchmarkConfig,
    BenchmarkFailure,
    BenchmarkResult,
    BenchmarkStub,
    ExecutionProgress,
    ExecutionResults,
    construct_result_directory,
    filter_existing_results,
    generate_benchmark_stubs,
    sanitize_model_name,
    validate_benchmark_config,
)
from .ray_runner import RayRunner
from .tasks import (
    AIME2024,
    AIME2025,
    InfiniteBench,
    LongBench,
    LongBenchv2,
    Loogle,
    MockBenchmark,
    Ruler,
    Ruler16K,
    Ruler32K,
    SyntheticRuler,
    ZeroScrolls,
)

__all__ = [
    "ADAPTER_FACTORIES",
    "AIME2024",
    "AIME2025",
    "AdapterConfig",
    "Benchmark",
    "BenchmarkConfig",
    "BenchmarkExecutor",
    "BenchmarkFailure",
    "BenchmarkResult",
    "BenchmarkStub",
    "ExecutionProgress",
    "ExecutionResults",
    "InfiniteBench",
    "LocalRunner",
    "LongBench",
    "LongBenchv2",
    "Loogle",
    "MockBenchmark",
    "RayRunner",
    "Ruler",
    "Ruler16K",
    "Ruler32K",
    "StubRunner",
    "StubWorker",
    "SyntheticRuler",
    "ZeroScrolls",
    "construct_result_directory",
    "create_benchmark_instance",
    "filter_existing_results",
    "generate_benchmark_stubs",
    "get_available_benchmark_names",
    "get_benchmark_subsets",
    "get_registered_benchmarks",
    "huggingface_adapter",
    "register_benchmark",
    "sanitize_model_name",
    "tasks",
    "validate_benchmark_config",
]
