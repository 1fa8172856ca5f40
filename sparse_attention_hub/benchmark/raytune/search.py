"""Ray Tune search over masker hyperparameters (phase 1 of the reference's ``benchmark/raytune``).

A trial is one short run of one configuration (few requests, few new tokens) with both micro
metrics on; its ``combined_score`` is an objective (see :mod:`.objectives`) of the mean
attention output error and the mean density read back from ``micro_metrics.jsonl``. Trials run
through the benchmark layer's :class:`StubWorker`, so a trial result directory is a normal
result directory, and a configuration that already ran (same configuration hash) is not run
again.

Outputs in ``optimal_configs_dir``, named ``<model>_<task>_<masker name>`` (``/`` and other
unsafe characters as ``_``): ``.json`` (the best configuration, its hyperparameters and score;
:func:`load_optimal_config` reads it), ``_trials.json`` (every trial) and ``_analysis.csv``
(Ray Tune's table). A search whose ``.json`` holds the same ``search_hash``
is not run again unless ``force_search``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ...configs import config_from_dict
from ...metric_logging import DENSITY, FILE_NAME, OUTPUT_ERROR
from ...sparse_attention.research_attention import ResearchAttentionConfig
from ..executor import StubWorker
from ..executor_config import (
    AdapterConfig,
    BenchmarkConfig,
    BenchmarkFailure,
    BenchmarkStub,
    construct_result_directory,
    filter_existing_results,
    sanitize_model_name,
    validate_benchmark_config,
)
from ..ray_runner import connect
from ..results import config_hash, make_serializable, write_json
from .objectives import DENSE_SCORE, FAILURE_SCORE, Objective, get_objective
from .search_space import CompositeConfigOptimizer

#: Micro-metric settings of a trial run: both metrics on every attention call.
SEARCH_MICRO_METRICS: Dict[str, Any] = {
    "enabled_metrics": "all",
    "max_records": None,
    "sampling_factor": 1.0,
    "seed": 0,
}
#: The metric Ray Tune minimises.
SCORE = "combined_score"


@dataclass
class OptimalConfig:
    """The best configuration of one (model, task, masker list) search."""

    model: str
    task: str
    masker_name: str
    sparse_config: Optional[ResearchAttentionConfig]
    hyperparams: Dict[str, Any]
    score: float
    density: float
    error: float
    objective: str
    search_time: float
    num_trials: int
    search_hash: str = ""


def masker_list_name(config: Optional[ResearchAttentionConfig]) -> str:
    """A name from the masker classes, e.g. ``sink_local_oracle_top_k`` ("dense" for None)."""
    if config is None:
        return "dense"
    parts = []
    for masker in config.masker_configs:
        name = type(masker).__name__.replace("MaskerConfig", "").replace("Config", "")
        parts.append("".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_"))
    return "_".join(parts)


def attention_summary(result_dir: Union[str, Path]) -> Tuple[float, float]:
    """(mean output error, mean density) over a run's ``micro_metrics.jsonl``. No file: the run
    was dense, (0, 1); a metric without a finite record counts as 1 (the reference's rule)."""
    path = Path(result_dir) / FILE_NAME
    if not path.is_file():
        return 0.0, 1.0
    values: Dict[str, List[float]] = {OUTPUT_ERROR: [], DENSITY: []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        value = record.get("value")
        if record.get("metric") in values and isinstance(value, (int, float)):
            if math.isfinite(value):
                values[record["metric"]].append(float(value))

    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else 1.0

    return mean(values[OUTPUT_ERROR]), mean(values[DENSITY])


@dataclass
class TrialRunner:
    """Scores one point of the search space (what each Ray Tune trial calls)."""

    optimizer: CompositeConfigOptimizer
    stub: BenchmarkStub  # the trial template: its result_dir is the root of the trial runs
    objective: Objective

    def trial_stub(self, params: Dict[str, Any]) -> BenchmarkStub:
        """The stub of ``params``: named and placed by its configuration hash."""
        config = self.optimizer.create_config_from_params(params)
        stub = dataclasses.replace(self.stub, sparse_attention_config=config)
        name = f"{stub.sparse_config_name}_{stub.config_hash()[:12]}"
        result_dir = construct_result_directory(
            self.stub.result_dir, stub.model_name, name, stub.benchmark_name, stub.subset
        )
        return dataclasses.replace(stub, sparse_config_name=name, result_dir=result_dir)

    def evaluate(self, params: Dict[str, Any], device: Optional[str]) -> Dict[str, float]:
        """``{combined_score, density, error}`` of ``params`` (a failure scores
        :data:`FAILURE_SCORE` with density and error 1)."""
        try:
            stub = self.trial_stub(params)
            extra = {"micro_metrics": SEARCH_MICRO_METRICS}
            pending, _ = filter_existing_results([stub], extra_config=extra)
            if pending:
                worker = StubWorker(device, SEARCH_MICRO_METRICS)
                try:
                    outcome = worker.run(stub)
                finally:
                    worker.close()
                if isinstance(outcome, BenchmarkFailure):
                    raise RuntimeError(outcome.error_message)
            error, density = attention_summary(stub.result_dir)
        except Exception as failure:  # a failed trial is scored, not fatal to the search
            print(f"trial {params} failed: {failure}", file=sys.stderr)
            return {SCORE: FAILURE_SCORE, "density": 1.0, "error": 1.0}
        dense = density == 1.0 and error == 0.0
        score = DENSE_SCORE if dense else self.objective(error, density)
        return {SCORE: score, "density": density, "error": error}


def _trial(params: Dict[str, Any], runner: TrialRunner) -> None:
    import ray
    from ray import tune

    tune.report(runner.evaluate(params, "cuda" if ray.get_gpu_ids() else "cpu"))


def _stable(value: Any) -> Any:
    """``make_serializable``, with Ray Tune domains (whose repr holds an address) described by
    their type, range and sampler."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return {
            "type": type(value).__qualname__,
            **{f.name: _stable(getattr(value, f.name)) for f in fields},
        }
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if hasattr(value, "domain_str") and hasattr(value, "get_sampler"):
        sampler = type(value.get_sampler()).__name__
        return f"{type(value).__name__}{value.domain_str}:{sampler}"
    return make_serializable(value)


def config_to_dict(config: ResearchAttentionConfig) -> Dict[str, Any]:
    """``{"maskers": [{"type": class name, **fields}]}`` as ``config_from_dict`` reads it.
    Fields whose values are not JSON (e.g. weight tensors) are left out, as are search spaces
    holding Ray Tune domains."""
    maskers = []
    for masker in config.masker_configs:
        entry: Dict[str, Any] = {"type": type(masker).__name__}
        for field in dataclasses.fields(masker):
            value = getattr(masker, field.name)
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            entry[field.name] = value
        maskers.append(entry)
    return {"maskers": maskers}


def load_optimal_config(path: Union[str, Path]) -> OptimalConfig:
    """An :class:`OptimalConfig` written by :func:`search_optimal_config`."""
    data = json.loads(Path(path).read_text())
    sparse = data.pop("sparse_config")
    return OptimalConfig(sparse_config=config_from_dict(sparse) if sparse else None, **data)


def _save(optimal: OptimalConfig, path: Path) -> None:
    data = dataclasses.asdict(optimal)
    sparse = optimal.sparse_config
    data["sparse_config"] = config_to_dict(sparse) if sparse is not None else None
    write_json(path, data)


def search_optimal_config(
    model_name: str,
    task: str,
    sparse_config: Optional[ResearchAttentionConfig],
    *,
    masker_name: Optional[str] = None,
    objective: str = "default",
    num_samples: int = 1,
    adapter_config: Optional[AdapterConfig] = None,
    benchmark_kwargs: Optional[Dict[str, Any]] = None,
    generation_kwargs: Optional[Dict[str, Any]] = None,
    request_kwargs: Optional[Dict[str, Any]] = None,
    actors_per_gpu: int = 1,
    optimal_configs_dir: str = "./optimal_configs",
    ray_results_dir: str = "./ray_results",
    search_result_dir: Optional[str] = None,
    search_alg: Any = None,
    max_concurrent_trials: Optional[int] = None,
    force_search: bool = False,
    ray_address: Optional[str] = None,
    verbose: int = 1,
) -> OptimalConfig:
    """Searches the maskers' ``search_space`` of ``sparse_config`` with Ray Tune.

    Args:
        model_name: the model (hub name or local folder), loaded inside each trial.
        task: ``"<benchmark>/<subset>"`` or ``"<benchmark>"`` (e.g. ``"ruler32k/vt"``).
        sparse_config: the template; its maskers' ``search_space`` dicts are searched, the
            other values kept. None (dense) is recorded without a search.
        masker_name: the configuration's name (default: from the masker classes).
        objective: a name of ``OBJECTIVE_FUNCTIONS`` (``"default"``, ``"sparsity_5"``...).
        num_samples: Ray Tune's ``num_samples`` (each grid point is run that many times;
            random domains are sampled that many times).
        adapter_config / benchmark_kwargs: how to build the adapter and the benchmark.
        generation_kwargs / request_kwargs: of the short trial runs (the reference passes
            ``max_new_tokens``, ``max_context_length`` and ``max_requests``).
        actors_per_gpu: trials sharing one GPU (each trial takes 1/actors_per_gpu of a GPU
            when the cluster has GPUs; one CPU otherwise).
        optimal_configs_dir / ray_results_dir: outputs, and Ray Tune's storage.
        search_result_dir: result directories of the trials (default
            ``<ray_results_dir>/search_runs``).
        search_alg / max_concurrent_trials: passed to ``tune.TuneConfig``.
        force_search: search again even if an up-to-date result exists.
        ray_address: the cluster, when Ray is not initialised yet (see ``ray_runner.connect``).
        verbose: Ray Tune's verbosity (0 silent).
    """
    if actors_per_gpu < 1:
        raise ValueError(f"actors_per_gpu must be >= 1, got {actors_per_gpu}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    objective_fn = get_objective(objective)
    benchmark_name, _, subset = task.partition("/")
    validate_benchmark_config(BenchmarkConfig(benchmark_name, [subset] if subset else None))
    masker_name = masker_name or masker_list_name(sparse_config)
    stem = sanitize_model_name(f"{model_name}_{task}_{masker_name}")
    out_dir = Path(optimal_configs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = BenchmarkStub(
        model_name=model_name,
        sparse_config_name=masker_name,
        sparse_attention_config=sparse_config,
        benchmark_name=benchmark_name,
        subset=subset or None,
        adapter_config=adapter_config or AdapterConfig(),
        generation_kwargs=dict(generation_kwargs or {}),
        request_kwargs=dict(request_kwargs or {}),
        result_dir=str(Path(search_result_dir or Path(ray_results_dir) / "search_runs").resolve()),
        benchmark_kwargs=dict(benchmark_kwargs or {}),
    )
    search_hash = config_hash(
        {
            "run": _stable(template.run_config()),
            "objective": objective,
            "num_samples": num_samples,
            "micro_metrics": SEARCH_MICRO_METRICS,
        }
    )
    path = out_dir / f"{stem}.json"
    if path.is_file() and not force_search:
        previous = load_optimal_config(path)
        if previous.search_hash == search_hash:
            return previous
    if sparse_config is None:
        optimal = OptimalConfig(
            model_name, task, masker_name, None, {}, 0.0, 1.0, 0.0, objective, 0.0, 0, search_hash
        )
        _save(optimal, path)
        return optimal

    optimizer = CompositeConfigOptimizer(sparse_config)
    runner = TrialRunner(optimizer, template, objective_fn)
    start = time.perf_counter()
    ray = connect(ray_address)
    from ray import tune

    resources: Dict[str, float] = {"cpu": 1}
    if ray.cluster_resources().get("GPU", 0) > 0:
        resources["gpu"] = 1.0 / actors_per_gpu
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, runner=runner), resources),
        param_space=optimizer.create_search_space(),
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode="min",
            num_samples=num_samples,
            search_alg=search_alg,
            max_concurrent_trials=max_concurrent_trials,
            reuse_actors=True,  # a trial process keeps its imports (torch, transformers)
        ),
        run_config=tune.RunConfig(
            name=stem, storage_path=str(Path(ray_results_dir).resolve()), verbose=verbose
        ),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric=SCORE, mode="min")
    optimal = OptimalConfig(
        model=model_name,
        task=task,
        masker_name=masker_name,
        sparse_config=optimizer.create_config_from_params(best.config),
        hyperparams=dict(best.config),
        score=float(best.metrics[SCORE]),
        density=float(best.metrics["density"]),
        error=float(best.metrics["error"]),
        objective=objective,
        search_time=time.perf_counter() - start,
        num_trials=len(grid),
        search_hash=search_hash,
    )
    trials = [
        {
            "trial_id": (result.metrics or {}).get("trial_id"),
            "config": result.config,
            **{k: (result.metrics or {}).get(k) for k in (SCORE, "density", "error")},
            "exception": None if result.error is None else str(result.error),
        }
        for result in grid
    ]
    write_json(
        out_dir / f"{stem}_trials.json",
        {
            "model": model_name,
            "task": task,
            "masker_name": masker_name,
            "objective_function": objective,
            "best_trial_id": best.metrics.get("trial_id"),
            "trials": trials,
        },
    )
    grid.get_dataframe().to_csv(out_dir / f"{stem}_analysis.csv", index=False)
    _save(optimal, path)
    return optimal
