"""Benchmark layer: registry, matrix expansion, the Benchmark run loop, result layout,
resumability keyed by the configuration hash, micro metrics per stub, the reference import
path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_attention_hub.adapters.base import RequestResponse
from sparse_attention_hub.benchmark import (
    AdapterConfig,
    Benchmark,
    BenchmarkConfig,
    BenchmarkExecutor,
    BenchmarkStub,
    ExecutionProgress,
    generate_benchmark_stubs,
    get_available_benchmark_names,
    get_benchmark_subsets,
    register_benchmark,
    sanitize_model_name,
)
from sparse_attention_hub.benchmark.results import read_raw_results
from sparse_attention_hub.sparse_attention.research_attention import ResearchAttentionConfig
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    SinkMaskerConfig,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_NAMES = [
    "aime2024",
    "aime2025",
    "infinite_bench",
    "longbench",
    "longbenchv2",
    "loogle",
    "mock_benchmark",
    "ruler",
    "ruler16k",
    "ruler32k",
    "zero_scrolls",
]


def sink_local(window=8):
    return ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(window)])


# ----------------------------------------------------------------------------------------------
def test_registry_names_and_subsets():
    names = get_available_benchmark_names()
    assert set(REFERENCE_NAMES) <= set(names) and "synthetic_ruler" in names
    assert get_benchmark_subsets("RULER") == ["4096", "8192", "16384", "32768"]
    assert "qasper_e" in get_benchmark_subsets("longbench")


def test_matrix_expansion_and_layout(tmp_path):
    stubs = generate_benchmark_stubs(
        ["org/model:v1", "m2"],
        [("dense", None), ("sink_local", sink_local())],
        [BenchmarkConfig("mock_benchmark"), BenchmarkConfig(" ruler ", ["4096", " ", "8192"])],
        AdapterConfig(model_kwargs={"dtype": torch.bfloat16}),
        {"max_new_tokens": 8},
        {"max_context_length": 100},
        str(tmp_path),
    )
    assert len(stubs) == 2 * 2 * (1 + 2)
    assert [
        (s.model_name, s.sparse_config_name, s.benchmark_name, s.subset) for s in stubs[:3]
    ] == [
        ("org/model:v1", "dense", "mock_benchmark", None),
        ("org/model:v1", "dense", "ruler", "4096"),
        ("org/model:v1", "dense", "ruler", "8192"),
    ]
    assert stubs[1].result_dir == str(tmp_path.resolve() / "org_model_v1" / "dense" / "ruler_4096")
    assert stubs[0].result_dir.endswith("/dense/mock_benchmark")
    assert stubs[0].generation_kwargs is not stubs[1].generation_kwargs
    assert sanitize_model_name('a//b\\c:*?"<>|d') == "a_b_c_d"
    with pytest.raises(ValueError, match="names must be unique, got \\['x'\\]"):
        generate_benchmark_stubs(["m"], [("x", None), ("x", None)], [], AdapterConfig())
    with pytest.raises(ValueError, match="benchmark_name must be non-empty"):
        BenchmarkConfig("  ")
    with pytest.raises(ValueError, match="adapter_name must be non-empty"):
        AdapterConfig(adapter_name="")
    assert BenchmarkConfig("ruler", [" ", ""]).subsets is None


def test_config_hash_covers_the_whole_configuration():
    def stub(**changes):
        fields = dict(
            model_name="m",
            sparse_config_name="cfg",
            sparse_attention_config=sink_local(8),
            benchmark_name="ruler",
            subset="4096",
            adapter_config=AdapterConfig(model_kwargs={"dtype": torch.float16}),
            generation_kwargs={"max_new_tokens": 4},
            request_kwargs={},
            result_dir="/somewhere",
        )
        fields.update(changes)
        return BenchmarkStub(**fields)

    base = stub().config_hash()
    assert stub(result_dir="/elsewhere").config_hash() == base  # location is not configuration
    assert len(base) == 64
    for change in (
        dict(sparse_attention_config=sink_local(16)),
        dict(sparse_attention_config=None),
        dict(generation_kwargs={"max_new_tokens": 5}),
        dict(adapter_config=AdapterConfig(model_kwargs={"dtype": torch.float32})),
        dict(benchmark_kwargs={"data_dir": "/data"}),
        dict(subset="8192"),
    ):
        assert stub(**change).config_hash() != base, change
    assert stub().config_hash({"micro_metrics": {"sampling_factor": 0.5}}) != base


def test_reference_import_path_and_hash_stable_across_processes():
    code = (
        "import torch\n"
        "from benchmark.executor import BenchmarkExecutor\n"
        "from benchmark.executor_config import AdapterConfig, BenchmarkConfig, BenchmarkStub\n"
        "from benchmark.benchmark_registry import create_benchmark_instance\n"
        "from benchmark import Benchmark, LongBench, MockBenchmark\n"
        "from benchmark.ruler16k import Ruler16K\n"
        "import sparse_attention_hub.benchmark as b\n"
        "from sparse_attention_hub.sparse_attention.research_attention import *\n"
        "from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import *\n"
        "assert BenchmarkExecutor is b.BenchmarkExecutor and Ruler16K is b.Ruler16K\n"
        "print(type(create_benchmark_instance('ruler32k')).__name__)\n"
        "config = ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(8)])\n"
        "adapter = AdapterConfig(model_kwargs={'dtype': torch.float16})\n"
        "stub = BenchmarkStub('m', 'c', config, 'ruler', '4096', adapter, {}, {}, '/x')\n"
        "print(stub.config_hash())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    stub = BenchmarkStub(
        "m",
        "c",
        sink_local(8),
        "ruler",
        "4096",
        AdapterConfig(model_kwargs={"dtype": torch.float16}),
        {},
        {},
        "/elsewhere",
    )
    assert out.stdout.split() == ["Ruler32K", stub.config_hash()], out.stderr


def test_execution_progress():
    progress = ExecutionProgress(total_stubs=10, skipped_stubs=4, completed_stubs=3, failed_stubs=1)
    assert progress.pending_stubs == 2 and progress.completion_percentage == pytest.approx(
        66.67, 0.01
    )
    assert ExecutionProgress(total_stubs=2, skipped_stubs=2).completion_percentage == 100.0


# ----------------------------------------------------------------------------------------------
class FakeAdapter:
    """Records each request; answers with the question upper-cased."""

    model_name = "fake"
    sparse_attention_config = None

    def __init__(self):
        self.calls = []

    def process_request(self, request, generation_kwargs, request_kwargs):
        self.calls.append((request, dict(generation_kwargs), dict(request_kwargs)))
        return RequestResponse([q.upper() for q in request.questions])


@register_benchmark("unit_rows", aliases=["unit_rows_alias"])
class RowsBenchmark(Benchmark):
    all_datasets = ["only"]
    benchmark_name = "unit_rows"
    ROWS = [
        {"context": "B", "question": "q1", "answer_prefix": "P1", "max_new_tokens": 5, "gold": [1]},
        {"context": "A", "question": "q2", "max_new_tokens": 30},
        {"context": "B", "question": "q3", "answer_prefix": "ignored"},
        {"context": "C", "question": "q4", "max_new_tokens": 2},
    ]

    def _load_datasets(self, tokenizer=None):
        return [dict(r) for r in self.ROWS]

    def post_run_evaluate(self, results):
        return {"n": len(results), "answers": [r["predicted_answer"] for r in results]}


def test_run_loop_groups_contexts_caps_tokens_and_writes_results(tmp_path):
    adapter = FakeAdapter()
    generation = {"max_new_tokens": 20, "temperature": 0.0}
    metrics = RowsBenchmark().run_benchmark(
        adapter, tmp_path, generation, {"max_context_length": 64}, run_config={"extra": 1}
    )
    assert generation == {"max_new_tokens": 20, "temperature": 0.0}  # never written back
    requests = [
        (c[0].context, c[0].questions, c[0].answer_prefix, c[1]["max_new_tokens"])
        for c in adapter.calls
    ]
    assert requests == [("B", ["q1", "q3"], "P1", 5), ("A", ["q2"], "", 20), ("C", ["q4"], "", 2)]
    assert metrics == {"n": 4, "answers": ["Q1", "Q2", "Q3", "Q4"]}
    rows = read_raw_results(tmp_path / "raw_results.csv")
    assert rows[0]["gold"] == "[1]" and rows[2]["predicted_answer"] == "Q3"
    assert list(rows[0])[:3] == ["context", "question", "answer_prefix"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["benchmark_name"] == "unit_rows" and config["extra"] == 1
    assert config["request_kwargs"] == {"max_context_length": 64}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    adapter = FakeAdapter()
    RowsBenchmark(["only"]).run_benchmark(adapter, tmp_path, {}, {"max_requests": 2})
    assert [c[0].questions for c in adapter.calls] == [["q1"], ["q2"]]  # rows, not contexts


# ----------------------------------------------------------------------------------------------
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


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_executor_layout_micro_metrics_and_resumability(tiny_model, tmp_path):
    benchmarks = [
        BenchmarkConfig("mock_benchmark"),
        BenchmarkConfig("synthetic_ruler", ["160"], {"tasks": ["niah_single_1"], "num_samples": 1}),
    ]
    executor = BenchmarkExecutor(base_result_dir=str(tmp_path), device="cpu", verbose=False)

    def run(configs, extra=()):
        return executor.run_benchmark_matrix(
            [tiny_model], configs, benchmarks + list(extra), AdapterConfig(), {"max_new_tokens": 3}
        )

    first = run([("dense", None), ("sparse", sink_local(8))])
    assert first.progress.completed_stubs == 4 and not first.failed_executions
    root = tmp_path / sanitize_model_name(tiny_model)
    leaves = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*"))
    assert leaves == [
        "dense/mock_benchmark",
        "dense/synthetic_ruler_160",
        "sparse/mock_benchmark",
        "sparse/synthetic_ruler_160",
    ]
    for leaf in leaves:
        names = {p.name for p in (root / leaf).iterdir()}
        assert names == {"raw_results.csv", "metrics.json", "config.json", "micro_metrics.jsonl"}
    assert (root / "dense/mock_benchmark/micro_metrics.jsonl").read_text() == ""
    records = read_jsonl(root / "sparse/mock_benchmark/micro_metrics.jsonl")
    assert {r["metric"] for r in records} == {
        "research_attention_density",
        "research_attention_output_error",
    }
    meta = [r["metadata"] for r in records]
    assert {m["request_id"] for m in meta} == {0, 1, 2}  # three contexts
    assert {m["question_id"] for m in meta if m["request_id"] == 0} == {0, 1}  # shared context
    assert {m["layer_idx"] for m in meta} == {0, 1} and min(m["step"] for m in meta) == 0
    config = json.loads((root / "sparse/synthetic_ruler_160/config.json").read_text())
    stub = next(
        s
        for s in first.individual_results
        if s.stub.result_dir.endswith("sparse/synthetic_ruler_160")
    ).stub
    assert config["config_hash"] == stub.config_hash({"micro_metrics": executor.micro_metrics})
    assert config["run"]["sparse_attention_config"]["masker_configs"][1]["window_size"] == 8
    metrics = json.loads((root / "sparse/synthetic_ruler_160/metrics.json").read_text())
    assert set(metrics["task_scores"]) == {"niah_single_1"}
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.*")}

    empty = tmp_path / "no_data"
    empty.mkdir()
    failing = BenchmarkConfig("loogle", ["longdep_qa"], {"data_dir": str(empty)})
    second = run([("dense", None), ("sparse", sink_local(8))], [failing])
    assert second.progress.skipped_stubs == 4 and second.progress.completed_stubs == 0
    assert [f.error_type for f in second.failed_executions] == ["FileNotFoundError"] * 2
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing rewritten

    third = run([("dense", None), ("sparse", sink_local(16))])  # same name, new config
    assert third.progress.skipped_stubs == 2 and third.progress.completed_stubs == 2
    assert all(r.stub.sparse_config_name == "sparse" for r in third.individual_results)
    config = json.loads((root / "sparse/mock_benchmark/config.json").read_text())
    assert config["run"]["sparse_attention_config"]["masker_configs"][1]["window_size"] == 16
