"""BenchmarkExecutor: runs a benchmark matrix, skipping stubs whose results are up to date.

Execution is split in two so that scale-out is a drop-in:

- :class:`StubWorker` runs ONE stub in the current process (builds or reuses the adapter,
  configures the micro-metric logger, runs the benchmark, writes the result directory);
- a runner (:class:`StubRunner`) decides where workers run. :class:`LocalRunner` runs every
  stub here, one after the other, on one device (``backend="local"``, the default);
  :class:`~.ray_runner.RayRunner` runs each stub as a Ray task, one per GPU of a Ray cluster
  (``backend="ray"``).
"""

from __future__ import annotations

import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from ..adapters.base import ModelAdapter
from ..metric_logging import MicroMetricLogger
from ..sparse_attention.base import SparseAttentionConfig
from .benchmark_registry import create_benchmark_instance
from .executor_config import (
    AdapterConfig,
    BenchmarkConfig,
    BenchmarkFailure,
    BenchmarkResult,
    BenchmarkStub,
    ExecutionProgress,
    ExecutionResults,
    filter_existing_results,
    generate_benchmark_stubs,
    validate_benchmark_config,
)
from .progress import progress
from .results import RESULT_FILES, config_hash

Outcome = Union[BenchmarkResult, BenchmarkFailure]
AdapterFactory = Callable[[BenchmarkStub, Optional[str]], ModelAdapter]
BACKENDS = ("local", "ray")


def huggingface_adapter(stub: BenchmarkStub, device: Optional[str]) -> ModelAdapter:
    """``ModelAdapterHF`` for ``stub`` (the default factory of adapter name "huggingface")."""
    from ..adapters import ModelAdapterHF

    config = stub.adapter_config
    return ModelAdapterHF(
        stub.model_name,
        stub.sparse_attention_config,
        model_kwargs=config.model_kwargs,
        tokenizer_kwargs=config.tokenizer_kwargs,
        device=device,
        **config.adapter_kwargs,
    )


ADAPTER_FACTORIES: Dict[str, AdapterFactory] = {"huggingface": huggingface_adapter}


class StubWorker:
    """Runs stubs in this process; consecutive stubs of one model and sparse configuration
    share the adapter (the model is loaded once)."""

    def __init__(self, device: Optional[str], micro_metrics: Dict[str, Any]) -> None:
        self.device = device
        self.micro_metrics = micro_metrics
        self._adapter: Optional[ModelAdapter] = None
        self._adapter_key: Optional[str] = None

    def _adapter_for(self, stub: BenchmarkStub) -> ModelAdapter:
        key = config_hash(
            {
                "model": stub.model_name,
                "sparse": stub.sparse_attention_config,
                "adapter": stub.adapter_config,
            }
        )
        if key != self._adapter_key:
            name = stub.adapter_config.adapter_name
            if name not in ADAPTER_FACTORIES:
                raise ValueError(
                    f"adapter_name must be one of {sorted(ADAPTER_FACTORIES)}, got {name!r}"
                )
            adapter = ADAPTER_FACTORIES[name](stub, self.device)
            self.close()  # after building the next one: a shared model stays loaded
            self._adapter, self._adapter_key = adapter, key
        return self._adapter

    def run(self, stub: BenchmarkStub) -> Outcome:
        """Runs ``stub`` into its result directory (stale result files removed first)."""
        start = time.perf_counter()
        logger = MicroMetricLogger()
        try:
            result_dir = Path(stub.result_dir)
            result_dir.mkdir(parents=True, exist_ok=True)
            for name in RESULT_FILES:
                (result_dir / name).unlink(missing_ok=True)
            adapter = self._adapter_for(stub)
            benchmark = create_benchmark_instance(
                stub.benchmark_name,
                [stub.subset] if stub.subset else None,
                **stub.benchmark_kwargs,
            )
            settings = self.micro_metrics
            if settings["enabled_metrics"]:
                logger.configure_logging(
                    result_dir,
                    settings["enabled_metrics"],
                    max_records=settings["max_records"],
                    sampling_factor=settings["sampling_factor"],
                    seed=settings["seed"],
                )
            with logger.attached(adapter):
                metrics = benchmark.run_benchmark(
                    adapter,
                    result_dir,
                    stub.generation_kwargs,
                    stub.request_kwargs,
                    run_config={
                        "config_hash": stub.config_hash({"micro_metrics": settings}),
                        "run": stub.run_config(),
                        "micro_metrics": settings,
                    },
                )
            return BenchmarkResult(stub, metrics, time.perf_counter() - start)
        except Exception as error:  # a failed stub must not stop the matrix
            return BenchmarkFailure(
                stub,
                f"{error}\n{traceback.format_exc()}",
                type(error).__name__,
                time.perf_counter() - start,
            )
        finally:
            logger.disable()

    def close(self) -> None:
        """Releases the current adapter."""
        if self._adapter is not None and hasattr(self._adapter, "close"):
            self._adapter.close()
        self._adapter, self._adapter_key = None, None


class StubRunner(Protocol):
    """Where stubs run: yields one outcome per stub, in any order."""

    def run(
        self, stubs: Sequence[BenchmarkStub], worker_args: Dict[str, Any]
    ) -> Iterator[Outcome]: ...


class LocalRunner:
    """Runs the stubs one after the other in this process, with one :class:`StubWorker`."""

    def run(self, stubs: Sequence[BenchmarkStub], worker_args: Dict[str, Any]) -> Iterator[Outcome]:
        worker = StubWorker(**worker_args)
        try:
            for stub in progress(stubs, desc="benchmark stubs", total=len(stubs)):
                yield worker.run(stub)
        finally:
            worker.close()


def _backend_runner(
    backend: str, ray_address: Optional[str], gpu_ids: Optional[List[int]], max_concurrent_runs: int
) -> StubRunner:
    """The runner of ``backend``; warns about the reference arguments it does not use."""
    if backend == "ray":
        from .ray_runner import RayRunner

        if gpu_ids or max_concurrent_runs > 1:
            warnings.warn(
                f"gpu_ids={gpu_ids}, max_concurrent_runs={max_concurrent_runs}: on Ray, the "
                "cluster's resources decide where and how many stubs run"
            )
        return RayRunner(address=ray_address)
    if (gpu_ids and len(gpu_ids) > 1) or max_concurrent_runs > 1:
        warnings.warn(
            f"gpu_ids={gpu_ids}, max_concurrent_runs={max_concurrent_runs}: the local runner "
            "runs one stub at a time on one device"
        )
    return LocalRunner()


class BenchmarkExecutor:
    """Runs model x sparse configuration x benchmark x subset, resumably.

    Args:
        gpu_ids: reference argument; the local runner uses ``cuda:<gpu_ids[0]>``.
        max_concurrent_runs: reference argument; the local runner runs one stub at a time.
        base_result_dir: root of the result directories.
        enable_resumability: skip stubs whose stored ``config_hash`` and files are current.
        result_file_validation / required_result_files: also require these files (default
            ``raw_results.csv`` and ``metrics.json``).
        timeout_per_benchmark: reference argument; not enforced by the local runner.
        verbose: print a summary.
        micro_metric_logger_max_records / micro_metric_logger_sampling_factor: the logger's
            ``max_records`` and ``sampling_factor``.
        micro_metrics: metrics to log ("all", a list, or None/[] for none).
        micro_metric_seed: seed of the sampling decisions.
        device: device of the models (overrides ``gpu_ids``; default: CUDA when available).
            On Ray each task uses its own GPU, or the CPU.
        runner: where stubs run (default: the one ``backend`` names).
        backend: ``"local"`` (:class:`LocalRunner`) or ``"ray"`` (:class:`RayRunner`: one task
            per GPU of a Ray cluster; needs ``pip install 'ray[tune]'``).
        ray_address: the cluster of the Ray backend: None (a new local instance, or
            ``$RAY_ADDRESS``), ``"auto"`` (the running cluster) or an address.
    """

    def __init__(
        self,
        gpu_ids: Optional[List[int]] = None,
        max_concurrent_runs: int = 1,
        base_result_dir: str = "./benchmark_results",
        enable_resumability: bool = True,
        result_file_validation: bool = True,
        required_result_files: Optional[List[str]] = None,
        timeout_per_benchmark: Optional[float] = None,
        verbose: bool = True,
        micro_metric_logger_max_records: Optional[int] = None,
        micro_metric_logger_sampling_factor: float = 1.0,
        micro_metrics: Union[str, List[str], None] = "all",
        micro_metric_seed: int = 0,
        device: Optional[str] = None,
        runner: Optional[StubRunner] = None,
        backend: str = "local",
        ray_address: Optional[str] = None,
    ) -> None:
        if not 0.0 <= micro_metric_logger_sampling_factor <= 1.0:
            raise ValueError(
                "micro_metric_logger_sampling_factor must be in [0, 1], got "
                f"{micro_metric_logger_sampling_factor}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if ray_address is not None and backend != "ray":
            raise ValueError(f"ray_address={ray_address!r} needs backend='ray'")
        if runner is not None and backend != "local":
            raise ValueError(f"give either runner or backend={backend!r}, not both")
        if runner is None:
            runner = _backend_runner(backend, ray_address, gpu_ids, max_concurrent_runs)
            if timeout_per_benchmark is not None:
                warnings.warn(f"timeout_per_benchmark is not enforced by the {backend} runner")
        if device is None and gpu_ids:
            device = f"cuda:{gpu_ids[0]}"
        self.base_result_dir = base_result_dir
        self.enable_resumability = enable_resumability
        self.result_file_validation = result_file_validation
        self.required_result_files = required_result_files
        self.verbose = verbose
        self.device = device
        self.runner: StubRunner = runner
        self.micro_metrics = {
            "enabled_metrics": micro_metrics or [],
            "max_records": micro_metric_logger_max_records,
            "sampling_factor": micro_metric_logger_sampling_factor,
            "seed": micro_metric_seed,
        }

    def run_benchmark_matrix(
        self,
        model_names: Sequence[str],
        sparse_attention_configs: Sequence[Tuple[str, Optional[SparseAttentionConfig]]],
        benchmark_configs: Sequence[BenchmarkConfig],
        adapter_config: AdapterConfig,
        generation_kwargs: Optional[Dict[str, Any]] = None,
        request_kwargs: Optional[Dict[str, Any]] = None,
    ) -> ExecutionResults:
        """Validates, expands the matrix, skips completed stubs, runs the rest."""
        if not model_names:
            raise ValueError("model_names must list at least one model")
        if not sparse_attention_configs:
            raise ValueError("sparse_attention_configs must list at least one (name, config)")
        for config in benchmark_configs:
            validate_benchmark_config(config)
        start = time.perf_counter()
        stubs = generate_benchmark_stubs(
            model_names,
            sparse_attention_configs,
            benchmark_configs,
            adapter_config,
            generation_kwargs,
            request_kwargs,
            self.base_result_dir,
        )
        pending, completed = list(stubs), []
        if self.enable_resumability:
            pending, completed = filter_existing_results(
                stubs,
                self.result_file_validation,
                self.required_result_files,
                {"micro_metrics": self.micro_metrics},
            )
        state = ExecutionProgress(total_stubs=len(stubs), skipped_stubs=len(completed))
        results: List[BenchmarkResult] = []
        failures: List[BenchmarkFailure] = []
        worker_args = {"device": self.device, "micro_metrics": self.micro_metrics}
        for outcome in self.runner.run(pending, worker_args):
            if isinstance(outcome, BenchmarkResult):
                results.append(outcome)
                state.completed_stubs += 1
            else:
                failures.append(outcome)
                state.failed_stubs += 1
                if self.verbose:
                    print(
                        f"FAILED {outcome.stub.label}: {outcome.error_type}: "
                        f"{outcome.error_message.splitlines()[0]}"
                    )
        elapsed = time.perf_counter() - start
        summary = {
            "total_stubs": state.total_stubs,
            "skipped_stubs": state.skipped_stubs,
            "completed_stubs": state.completed_stubs,
            "failed_stubs": state.failed_stubs,
            "base_result_dir": str(Path(self.base_result_dir).resolve()),
            "device": self.device,
            "runner": type(self.runner).__name__,
        }
        if self.verbose:
            print(
                f"benchmark matrix: {state.total_stubs} stubs, {state.skipped_stubs} up to date, "
                f"{state.completed_stubs} run, {state.failed_stubs} failed ({elapsed:.1f} s)"
            )
        return ExecutionResults(summary, results, failures, elapsed, state)
