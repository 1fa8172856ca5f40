"""Figures: per-layer summaries against a plain-Python reference, PNG files from every plot,
and the quality report script end to end on a tiny local model."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch

from sparse_attention_hub.metric_logging import DENSITY, OUTPUT_ERROR
from sparse_attention_hub.plotting import (
    Granularity,
    PlotGenerator,
    load_micro_metrics,
    mean_metric,
    per_layer_summary,
    plot_error_vs_density,
    plot_layer_metrics,
    plot_speed_vs_context,
)

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def records(seed, layers=3, steps=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        for layer in range(layers):
            for metric, scale in ((DENSITY, 0.2), (OUTPUT_ERROR, 0.05)):
                value = float(torch.rand(1, generator=g)) * scale
                out.append(
                    {
                        "metric": metric,
                        "value": value,
                        "metadata": {"layer_idx": layer, "step": step},
                    }
                )
    return out


def is_png(path):
    return Path(path).read_bytes()[:8] == PNG and Path(path).stat().st_size > 1000


# ----------------------------------------------------------------------------------------------
def test_summaries_match_a_plain_python_reference(tmp_path):
    runs = records(0)
    summary = per_layer_summary(runs, DENSITY)
    for layer in range(3):
        values = [
            r["value"]
            for r in runs
            if r["metric"] == DENSITY and r["metadata"]["layer_idx"] == layer
        ]
        mean, std, n = summary[layer]
        assert mean == pytest.approx(statistics.fmean(values))
        assert std == pytest.approx(statistics.pstdev(values)) and n == 4
    errors = [r["value"] for r in runs if r["metric"] == OUTPUT_ERROR]
    assert mean_metric(runs, OUTPUT_ERROR) == pytest.approx(statistics.fmean(errors))
    assert mean_metric([], DENSITY) != mean_metric([], DENSITY)  # NaN
    (tmp_path / "micro_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    assert (
        load_micro_metrics(tmp_path) == runs == load_micro_metrics(tmp_path / "micro_metrics.jsonl")
    )


def test_every_figure_is_a_png(tmp_path):
    runs = {"sink_local": records(1), "oracle_topk": records(2)}
    assert is_png(plot_layer_metrics(runs, tmp_path / "a" / "layers.png"))
    points = {
        name: (mean_metric(r, DENSITY), mean_metric(r, OUTPUT_ERROR)) for name, r in runs.items()
    }
    assert is_png(plot_error_vs_density(points, tmp_path / "err.png", log_error=True))
    speed = {"dense": [(2048, 900.0), (8192, 400.0)], "sparse": [(8192, 700.0), (2048, 950.0)]}
    assert is_png(plot_speed_vs_context(speed, tmp_path / "speed.png"))
    generator = PlotGenerator(tmp_path / "gen")
    assert is_png(generator.generate_plot(Granularity.PER_LAYER, runs))
    assert is_png(generator.generate_comparison_plot(points))
    with pytest.raises(ValueError, match="granularity must be Granularity.PER_LAYER"):
        generator.generate_plot(Granularity.PER_HEAD, runs)
    with pytest.raises(ValueError, match="runs must map at least one label"):
        plot_layer_metrics({}, tmp_path / "x.png")


def test_quality_report_on_a_tiny_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_adapter_hf import WORDS, make_tokenizer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
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
    model_dir = tmp_path / "tiny"
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    spec = importlib.util.spec_from_file_location(
        "quality_report", REPO / "benchmarks" / "quality_report.py"
    )
    report_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_module)
    out = tmp_path / "report"
    argv = ["--model", str(model_dir), "--lengths", "160", "200", "--tasks", "niah_single_1", "vt"]
    argv += ["--samples", "1", "--configs", "dense", "sink_local", "--device", "cpu"]
    argv += ["--max-new-tokens", "2", "--sampling", "1.0", "--out", str(out)]
    report = report_module.main(argv)
    text = report.read_text()
    assert "| config | density | output error | acc@160 | acc@200 | mean acc |" in text
    summary = text.split("| config | density")[1].split("\n\n")[0].splitlines()[2:]
    rows = {line.split("|")[1].strip(): line for line in summary}
    assert set(rows) == {"dense", "sink_local"}
    assert rows["dense"].split("|")[2].strip() == "1.000"
    density = float(rows["sink_local"].split("|")[2])
    assert 0.0 < density < 1.0
    for name in ("error_vs_density.png", "layer_metrics.png", "accuracy_vs_length.png"):
        assert is_png(out / name) and f"({name})" in text
    assert "niah_single_1" in text and "vt" in text
    with pytest.raises(ValueError, match="--configs entry 'nope'"):
        report_module.resolve_configs(["nope"])
