"""Configuration of a benchmark matrix, its expansion into stubs, and resumability.

The matrix is models x sparse configurations x benchmarks x subsets; each cell is one
:class:`BenchmarkStub` with its own result directory
``<base>/<sanitized model>/<sparse config name>/<benchmark>[_<subset>]``. A stub counts as done
when that directory holds the required files and a ``config.json`` whose ``config_hash`` is the
hash of the stub's whole configuration (so a changed configuration under the same name runs
again).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..sparse_attention.base import SparseAttentionConfig
from .benchmark_registry import validate_benchmark_config as _validate_registry
from .results import CONFIG, METRICS, RAW_RESULTS, config_hash

#: Version of the hashed configuration layout (bump to invalidate every stored result).
CONFIG_FORMAT = 1
DEFAULT_REQUIRED_FILES = [RAW_RESULTS, METRICS]


@dataclass
class BenchmarkConfig:
    """A benchmark and its subsets (None: all); ``benchmark_kwargs`` go to its constructor
    (e.g. ``data_dir``, or ``num_samples`` for the synthetic tasks)."""

    benchmark_name: str
    subsets: Optional[List[str]] = None
    benchmark_kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.benchmark_name or not self.benchmark_name.strip():
            raise ValueError(f"benchmark_name must be non-empty, got {self.benchmark_name!r}")
        self.benchmark_name = self.benchmark_name.strip()
        if self.subsets is not None:
            self.subsets = [s.strip() for s in self.subsets if s.strip()] or None


@dataclass
class AdapterConfig:
    """How to build the model adapter (the sparse configuration is a matrix axis, not here).

    ``adapter_kwargs`` go to the adapter's constructor (e.g. ``setup``, ``dense_layers``).
    """

    adapter_name: str = "huggingface"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    tokenizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    adapter_kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.adapter_name or not self.adapter_name.strip():
            raise ValueError(f"adapter_name must be non-empty, got {self.adapter_name!r}")
        self.adapter_name = self.adapter_name.strip()
        self.model_kwargs = dict(self.model_kwargs or {})
        self.tokenizer_kwargs = dict(self.tokenizer_kwargs or {})
        self.adapter_kwargs = dict(self.adapter_kwargs or {})


@dataclass
class BenchmarkStub:
    """One cell of the matrix: model x sparse configuration x benchmark x subset."""

    model_name: str
    sparse_config_name: str
    sparse_attention_config: Optional[SparseAttentionConfig]
    benchmark_name: str
    subset: Optional[str]
    adapter_config: AdapterConfig
    generation_kwargs: Dict[str, Any]
    request_kwargs: Dict[str, Any]
    result_dir: str
    benchmark_kwargs: Dict[str, Any] = field(default_factory=dict)

    def run_config(self) -> Dict[str, Any]:
        """Everything that determines this stub's results (its result directory excluded)."""
        return {
            "format": CONFIG_FORMAT,
            "model_name": self.model_name,
            "sparse_config_name": self.sparse_config_name,
            "sparse_attention_config": self.sparse_attention_config,
            "benchmark_name": self.benchmark_name,
            "subset": self.subset,
            "benchmark_kwargs": self.benchmark_kwargs,
            "adapter_config": self.adapter_config,
            "generation_kwargs": self.generation_kwargs,
            "request_kwargs": self.request_kwargs,
        }

    def config_hash(self, extra: Optional[Dict[str, Any]] = None) -> str:
        """Hash of :meth:`run_config` plus ``extra`` (e.g. the micro-metric settings)."""
        return config_hash({**self.run_config(), **(extra or {})})

    @property
    def label(self) -> str:
        subset = f"/{self.subset}" if self.subset else ""
        return f"{self.model_name} | {self.sparse_config_name} | {self.benchmark_name}{subset}"


@dataclass
class BenchmarkResult:
    """A stub that ran to completion."""

    stub: BenchmarkStub
    metrics: Dict[str, Any]
    execution_time: float
    success: bool = True
    error_message: Optional[str] = None


@dataclass
class BenchmarkFailure:
    """A stub that raised; ``error_type`` is the exception class name."""

    stub: BenchmarkStub
    error_message: str
    error_type: str
    execution_time: float


@dataclass
class ExecutionProgress:
    """Counts over the matrix."""

    total_stubs: int
    skipped_stubs: int = 0
    completed_stubs: int = 0
    failed_stubs: int = 0

    @property
    def pending_stubs(self) -> int:
        return self.total_stubs - self.skipped_stubs - self.completed_stubs - self.failed_stubs

    @property
    def completion_percentage(self) -> float:
        to_run = self.total_stubs - self.skipped_stubs
        if to_run == 0:
            return 100.0
        return 100.0 * (self.completed_stubs + self.failed_stubs) / to_run


@dataclass
class ExecutionResults:
    """What :meth:`BenchmarkExecutor.run_benchmark_matrix` returns."""

    execution_summary: Dict[str, Any]
    individual_results: List[BenchmarkResult]
    failed_executions: List[BenchmarkFailure]
    execution_time: float
    progress: ExecutionProgress


def validate_benchmark_config(config: BenchmarkConfig) -> None:
    """Raises ValueError if the benchmark is not registered or a subset is not one of its."""
    _validate_registry(config.benchmark_name, config.subsets)


def sanitize_model_name(model_name: str) -> str:
    """A directory name for ``model_name``: ``/\\:*?"<>|`` become ``_``, runs of ``_`` one."""
    return re.sub(r"_+", "_", re.sub(r'[/\\:*?"<>|]', "_", model_name))


def construct_result_directory(
    base_result_dir: str,
    model_name: str,
    sparse_config_name: str,
    benchmark_name: str,
    subset: Optional[str] = None,
) -> str:
    """``<base>/<sanitized model>/<sparse config name>/<benchmark>[_<subset>]`` (absolute)."""
    leaf = f"{benchmark_name}_{subset}" if subset else benchmark_name
    return str(
        Path(base_result_dir).resolve()
        / sanitize_model_name(model_name)
        / sparse_config_name
        / leaf
    )


def generate_benchmark_stubs(
    model_names: Sequence[str],
    sparse_attention_configs: Sequence[Tuple[str, Optional[SparseAttentionConfig]]],
    benchmark_configs: Sequence[BenchmarkConfig],
    adapter_config: AdapterConfig,
    generation_kwargs: Optional[Dict[str, Any]] = None,
    request_kwargs: Optional[Dict[str, Any]] = None,
    base_result_dir: str = "./benchmark_results",
) -> List[BenchmarkStub]:
    """The stubs of model x (name, config) x benchmark x subset, in that nesting order; a
    benchmark without subsets is one stub."""
    names = [name for name, _ in sparse_attention_configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"sparse_attention_configs names must be unique, got {duplicates} twice")
    stubs = []
    for model_name in model_names:
        for config_name, sparse_config in sparse_attention_configs:
            for benchmark in benchmark_configs:
                for subset in benchmark.subsets or [None]:
                    stubs.append(
                        BenchmarkStub(
                            model_name=model_name,
                            sparse_config_name=config_name,
                            sparse_attention_config=sparse_config,
                            benchmark_name=benchmark.benchmark_name,
                            subset=subset,
                            adapter_config=adapter_config,
                            generation_kwargs=dict(generation_kwargs or {}),
                            request_kwargs=dict(request_kwargs or {}),
                            result_dir=construct_result_directory(
                                base_result_dir,
                                model_name,
                                config_name,
                                benchmark.benchmark_name,
                                subset,
                            ),
                            benchmark_kwargs=dict(benchmark.benchmark_kwargs),
                        )
                    )
    return stubs


def stored_config_hash(result_dir: str) -> Optional[str]:
    """The ``config_hash`` in ``<result_dir>/config.json``, or None."""
    path = Path(result_dir) / CONFIG
    try:
        return json.loads(path.read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None


def filter_existing_results(
    stubs: Sequence[BenchmarkStub],
    check_result_files: bool = True,
    required_files: Optional[List[str]] = None,
    extra_config: Optional[Dict[str, Any]] = None,
) -> Tuple[List[BenchmarkStub], List[BenchmarkStub]]:
    """Splits ``stubs`` into (pending, completed). Completed: ``config.json`` records the
    stub's configuration hash (with ``extra_config``) and, when ``check_result_files``, every
    file of ``required_files`` (default ``raw_results.csv``, ``metrics.json``) exists."""
    files = DEFAULT_REQUIRED_FILES if required_files is None else required_files
    pending, completed = [], []
    for stub in stubs:
        done = stored_config_hash(stub.result_dir) == stub.config_hash(extra_config)
        if done and check_result_files:
            done = all((Path(stub.result_dir) / name).is_file() for name in files)
        (completed if done else pending).append(stub)
    return pending, completed
