"""Scale-out with Ray: the executor's Ray backend (one task per stub) writes what a local run
writes and resumes the same way; the Ray Tune search of masker hyperparameters finds the best
point of a grid. A local Ray instance with 2 CPUs (started once for the module) and a tiny
random-weights model built here."""

import json
import math
import sys

import pytest
import torch

from sparse_attention_hub.benchmark import (
    AdapterConfig,
    BenchmarkConfig,
    BenchmarkExecutor,
    sanitize_model_name,
)
from sparse_attention_hub.benchmark.raytune import (
    DENSE_SCORE,
    OBJECTIVE_FUNCTIONS,
    CompositeConfigOptimizer,
    attention_summary,
    config_to_dict,
    search_optimal_config,
)
from sparse_attention_hub.configs import config_from_dict
from sparse_attention_hub.sparse_attention.research_attention import ResearchAttentionConfig
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    OracleTopKConfig,
    SinkMaskerConfig,
)

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")

TASK = BenchmarkConfig("synthetic_ruler", ["160"], {"tasks": ["niah_single_1"], "num_samples": 1})


def sink_local(window):
    return ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(window)])


# ----------------------------------------------------------------------------------------------
# Without a Ray session: objectives, search space, summaries, errors.
def test_objectives_match_the_reference_formulas():
    assert set(OBJECTIVE_FUNCTIONS) == {f"sparsity_{p}" for p in (5, 10, 15, 20, 25)} | {"default"}
    error, density = 0.2, 0.3
    expected = 0.99 * error + 0.01 * density + 10 * (density - 0.10)
    assert OBJECTIVE_FUNCTIONS["sparsity_10"](error, density) == pytest.approx(expected)
    assert OBJECTIVE_FUNCTIONS["sparsity_25"](0.2, 0.2) == pytest.approx(0.99 * 0.2 + 0.01 * 0.2)
    assert OBJECTIVE_FUNCTIONS["default"](0.2, 0.3) == pytest.approx(0.23)
    assert OBJECTIVE_FUNCTIONS["default"](0.2, 0.6) == pytest.approx(0.2 + 0.06 + 5.0)


def test_search_space_names_and_rebuilt_configs():
    template = ResearchAttentionConfig(
        [
            SinkMaskerConfig(4),
            LocalMaskerConfig(8, search_space={"window_size": tune.grid_search([8, 16])}),
            OracleTopKConfig(0.1),  # class default: a grid over heavy_size
        ]
    )
    optimizer = CompositeConfigOptimizer(template)
    space = optimizer.create_search_space()
    assert space == {
        "LocalMaskerConfig_window_size": {"grid_search": [8, 16]},
        "OracleTopKConfig_heavy_size": {"grid_search": [0.01, 0.02, 0.05, 0.1]},
    }
    config = optimizer.create_config_from_params(
        {"LocalMaskerConfig_window_size": 16, "OracleTopKConfig_heavy_size": 0.05}
    )
    sink, local, topk = config.masker_configs
    assert (sink.sink_size, local.window_size, topk.heavy_size) == (4, 16, 0.05)
    assert local.search_space == {} and topk.search_space == {}  # a point, not a space
    assert template.masker_configs[1].window_size == 8  # the template is untouched
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ValueError, match="window_size must be > 0"):
        optimizer.create_config_from_params({"LocalMaskerConfig_window_size": 0})
    with pytest.raises(ValueError, match="must be unique"):
        CompositeConfigOptimizer(
            ResearchAttentionConfig([OracleTopKConfig(1), OracleTopKConfig(2)])
        )
    with pytest.raises(ValueError, match=r"names \['width'\], not fields"):
        CompositeConfigOptimizer(
            ResearchAttentionConfig([LocalMaskerConfig(8, search_space={"width": [1]})])
        )
    with pytest.raises(ValueError, match="no masker"):
        CompositeConfigOptimizer(sink_local(8))


def test_attention_summary(tmp_path):
    assert attention_summary(tmp_path) == (0.0, 1.0)  # no file: the run was dense
    records = [
        ("research_attention_density", 0.25),
        ("research_attention_output_error", 0.1),
        ("research_attention_density", 0.75),
        ("research_attention_output_error", float("nan")),
    ]
    lines = [json.dumps({"metric": m, "value": v, "metadata": {}}) for m, v in records]
    (tmp_path / "micro_metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert attention_summary(tmp_path) == (pytest.approx(0.1), pytest.approx(0.5))


def test_backend_arguments_and_missing_ray(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        BenchmarkExecutor(backend="slurm")
    with pytest.raises(ValueError, match="needs backend='ray'"):
        BenchmarkExecutor(ray_address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(ImportError, match=r"pip install 'ray\[tune\]'"):
        BenchmarkExecutor(backend="ray")


# ----------------------------------------------------------------------------------------------
# On a local Ray instance.
@pytest.fixture(scope="module")
def ray_session():
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_adapter_hf import WORDS, make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    path = tmp_path_factory.mktemp("models") / "tiny"
    LlamaForCausalLM(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


class Recording:
    """A runner that records the stubs handed to it, then lets ``runner`` run them."""

    def __init__(self, runner):
        self.runner, self.stubs = runner, []

    def run(self, stubs, worker_args):
        self.stubs.extend(stubs)
        yield from self.runner.run(stubs, worker_args)


def result_files(root, tolerance=None):
    """{relative path: content} of a result tree; micro-metric records without their timestamp,
    their values wrapped in ``pytest.approx(rel=tolerance)`` when one is given."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_text()
        if path.name == "micro_metrics.jsonl":
            content = [json.loads(line) for line in content.splitlines()]
            for record in content:
                del record["timestamp"]
                if tolerance is not None:
                    record["value"] = pytest.approx(record["value"], rel=tolerance)
        files[path.relative_to(root).as_posix()] = content
    return files


def test_ray_backend_matches_local_run_and_resumes(ray_session, tiny_model, tmp_path):
    configs = [("dense", None), ("sparse", sink_local(8))]

    def run(backend, base, configs=configs, extra=()):
        executor = BenchmarkExecutor(base_result_dir=str(base), backend=backend, verbose=False)
        executor.runner = Recording(executor.runner)
        results = executor.run_benchmark_matrix(
            [tiny_model], configs, [TASK, *extra], AdapterConfig(), {"max_new_tokens": 3}
        )
        return results, executor.runner.stubs

    local, _ = run("local", tmp_path / "local")
    remote, scheduled = run("ray", tmp_path / "ray")
    assert local.progress.completed_stubs == remote.progress.completed_stubs == 2
    assert not remote.failed_executions and len(scheduled) == 2
    # Identical files; micro-metric values to 1e-6, as a Ray task runs torch with one thread
    # per CPU it holds, which may round a float32 sum differently.
    local_files = result_files(tmp_path / "local", tolerance=1e-6)
    assert len(local_files) == 2 * 4  # raw_results.csv, metrics.json, config.json, micro metrics
    assert result_files(tmp_path / "ray") == local_files
    assert {r.stub.result_dir for r in remote.individual_results} == {
        s.result_dir for s in scheduled
    }
    assert sorted(r.metrics["overall_score"] for r in remote.individual_results) == sorted(
        r.metrics["overall_score"] for r in local.individual_results
    )

    root = tmp_path / "ray" / sanitize_model_name(tiny_model)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    empty = tmp_path / "no_data"
    empty.mkdir()
    failing = BenchmarkConfig("loogle", ["longdep_qa"], {"data_dir": str(empty)})
    again, scheduled = run("ray", tmp_path / "ray", extra=[failing])
    assert again.progress.skipped_stubs == 2 and again.progress.completed_stubs == 0
    assert [s.benchmark_name for s in scheduled] == ["loogle", "loogle"]  # done cells not sent
    assert [f.error_type for f in again.failed_executions] == ["FileNotFoundError"] * 2
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing rewritten

    changed, scheduled = run("ray", tmp_path / "ray", [("dense", None), ("sparse", sink_local(16))])
    assert changed.progress.skipped_stubs == 1 and changed.progress.completed_stubs == 1
    assert [s.sparse_config_name for s in scheduled] == ["sparse"]
    config = json.loads((root / "sparse/synthetic_ruler_160/config.json").read_text())
    assert config["run"]["sparse_attention_config"]["masker_configs"][1]["window_size"] == 16


def test_ray_tune_search_reports_the_best_config(ray_session, tiny_model, tmp_path):
    windows = [4, 16, 64]
    template = ResearchAttentionConfig(
        [
            SinkMaskerConfig(2),
            LocalMaskerConfig(4, search_space={"window_size": tune.grid_search(windows)}),
        ]
    )
    kwargs = dict(
        masker_name="sink_local",
        objective="sparsity_25",
        benchmark_kwargs=TASK.benchmark_kwargs,
        generation_kwargs={"max_new_tokens": 2, "do_sample": False},
        optimal_configs_dir=str(tmp_path / "optimal"),
        ray_results_dir=str(tmp_path / "ray_results"),
        verbose=0,
    )
    best = search_optimal_config(tiny_model, "synthetic_ruler/160", template, **kwargs)

    stem = sanitize_model_name(f"{tiny_model}_synthetic_ruler/160_sink_local")
    trials = json.loads((tmp_path / "optimal" / f"{stem}_trials.json").read_text())["trials"]
    assert len(trials) == best.num_trials == 3
    assert sorted(t["config"]["LocalMaskerConfig_window_size"] for t in trials) == windows
    assert best.score == min(t["combined_score"] for t in trials)
    assert all(0.0 < t["density"] < 1.0 and t["exception"] is None for t in trials)
    assert best.score == pytest.approx(OBJECTIVE_FUNCTIONS["sparsity_25"](best.error, best.density))
    assert best.score != DENSE_SCORE and not math.isnan(best.score)
    window = best.hyperparams["LocalMaskerConfig_window_size"]
    assert window == 16  # 4 loses too much (error ~0.67), 64 attends ~40% of keys (> 25%)
    assert best.sparse_config == ResearchAttentionConfig(
        [SinkMaskerConfig(2, search_space={}), LocalMaskerConfig(window, search_space={})]
    )
    stored = json.loads((tmp_path / "optimal" / f"{stem}.json").read_text())
    assert config_from_dict(stored["sparse_config"]) == best.sparse_config
    assert (tmp_path / "optimal" / f"{stem}_analysis.csv").read_text().count("\n") == 4

    again = search_optimal_config(tiny_model, "synthetic_ruler/160", template, **kwargs)
    assert again == best  # up to date: read back, not searched again


def test_config_hash_of_tune_domains_is_stable():
    """Ray Tune domains in a masker's search_space hash by type and state, not by address, so a
    finished cell is recognised again in another process."""
    tune = pytest.importorskip("ray.tune")
    from sparse_attention_hub.benchmark.results import config_hash

    def space(values):
        return {"window": tune.choice(values), "rate": tune.uniform(0.0, 1.0)}

    assert config_hash(space([1, 2])) == config_hash(space([1, 2]))
    assert config_hash(space([1, 2])) != config_hash(space([1, 3]))
