"""The command-line main job and the configuration loader, on a tiny model saved locally."""

import json
import sys

import pytest
import torch

pytest.importorskip("transformers")
from test_adapter_hf import WORDS, make_tokenizer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from sparse_attention_hub import __main__ as main_job  # noqa: E402
from sparse_attention_hub.configs import NAMED, config_from_dict, load_config  # noqa: E402
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (  # noqa: E402
    LocalMaskerConfig,
    SinkMaskerConfig,
)


def test_config_files_and_names(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps(
            {
                "maskers": [
                    {"type": "SinkMaskerConfig", "sink_size": 8},
                    {"type": "LocalMaskerConfig", "window_size": 0.1},
                ]
            }
        )
    )
    cfg = load_config(str(path))
    assert cfg.masker_configs == [SinkMaskerConfig(8), LocalMaskerConfig(0.1)]
    assert load_config("dense") is None
    assert all(name in NAMED for name in ("sink_local", "oracle_topk", "oracle_topp"))
    with pytest.raises(ValueError, match="unknown masker config type 'Nope'"):
        config_from_dict({"maskers": [{"type": "Nope"}]})
    with pytest.raises(ValueError, match='"maskers" list'):
        config_from_dict({"masker": []})
    with pytest.raises(ValueError, match="neither a named configuration"):
        load_config("no_such_config")
    with pytest.raises(ValueError, match="window_size must be > 0"):
        config_from_dict({"maskers": [{"type": "LocalMaskerConfig", "window_size": 0}]})


def test_passkey_document_states_the_passkey_once():
    text = main_job.passkey_document(30, 4242)
    assert text.count("4242") == 1 and text.count("Note") == 30


def tiny_folder(tmp_path):
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
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def run_main(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["sah", *argv])
    main_job.main()
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in argv and len(line.split()) >= 4
    }
    return out, rows


def test_main_runs_dense_and_sparse_on_a_local_model(tmp_path, monkeypatch, capsys):
    argv = ["--model", tiny_folder(tmp_path), "--device", "cpu", "--configs", "dense",
            "sink_local", "--sentences", "40", "--max-new-tokens", "4"]
    out, rows = run_main(monkeypatch, capsys, argv)
    assert set(rows) == {"dense", "sink_local"}
    assert float(rows["dense"][2]) == 1.0
    assert 0.0 < float(rows["sink_local"][2]) < 0.5  # real sparsity was measured
    assert "density per layer [sink_local]: 0:" in out


def test_named_configurations_build():
    """Every named configuration builds a ResearchAttention (none needs files)."""
    from sparse_attention_hub.sparse_attention.research_attention import ResearchAttention

    for name in NAMED:
        config = load_config(name)
        if config is not None:
            maskers = ResearchAttention.create_from_config(config).maskers
            assert len(maskers) == len(config.masker_configs) >= 2


def test_main_with_static_cache_device_map_and_key_state_maskers(tmp_path, monkeypatch, capsys):
    """--cache static and --device-map auto, with the named maskers that keep per-key state:
    each runs at real sparsity, and the dense answer equals that of a default run (dynamic
    cache, --device cpu). (Sparse answers are not compared: with a static cache the fractional
    sizes of the named configurations refer to the buffer length.)"""
    folder = tiny_folder(tmp_path)
    configs = ["dense", "quest", "pq_cache", "magic_pig"]
    common = ["--model", folder, "--configs", *configs, "--sentences", "40",
              "--max-new-tokens", "4"]
    out, rows = run_main(monkeypatch, capsys, [*common, "--cache", "static", "--device-map",
                                               "auto"])
    assert "cache: static" in out and "device_map: auto" in out
    assert set(rows) == set(configs)
    for name in configs[1:]:
        assert 0.0 < float(rows[name][2]) < 0.6, (name, rows[name])
    _, dynamic = run_main(monkeypatch, capsys, [*common[:3], "dense", *common[7:],
                                                "--device", "cpu"])
    assert dynamic["dense"][4:] == rows["dense"][4:]  # the same dense answer
