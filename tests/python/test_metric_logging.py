"""MicroMetricLogger: JSONL format, sampling decided before computing, record cap, identifiers,
and the two attention metrics against a plain-PyTorch reference."""

import json
import random
from datetime import datetime

import pytest
import torch

from sparse_attention_hub.metric_logging import (
    DENSITY,
    FILE_NAME,
    OUTPUT_ERROR,
    MicroMetricLogger,
)
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    SinkMaskerConfig,
)


# ----------------------------------------------------------------------------------------------
# Reference: dense attention in plain PyTorch (float64) and the relative output error.
def reference_dense(q, k, v, keep, scale):
    """q (b, h, sq, d); k, v (b, h_kv, sk, d); keep bool broadcastable to (b, h, sq, sk)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2)  # (b, sq, h, d)


def reference_error(out, dense):
    return ((out.double() - dense).norm() / dense.norm()).item()


def read_records(path):
    return [json.loads(line) for line in (path / FILE_NAME).read_text().splitlines()]


class Poison:
    """Any use of it fails: stands for tensors that must not be touched."""

    def __getattr__(self, name):
        raise AssertionError(f"unsampled call touched .{name}")

    def __getitem__(self, key):
        raise AssertionError("unsampled call indexed a tensor")


class CountingMask:
    def __init__(self, density):
        self.density, self.calls = density, 0

    def get_density(self):
        self.calls += 1
        return self.density


@pytest.fixture
def logger(tmp_path):
    log = MicroMetricLogger()
    log.configure_logging(tmp_path, "all")
    yield log
    log.disable()


def attention_event(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, 3, 16, generator=g)
    k = torch.randn(1, 2, 12, 16, generator=g)
    v = torch.randn(1, 2, 12, 16, generator=g)
    positions = torch.arange(9, 12)[:, None]
    causal = (torch.arange(12)[None, :] <= positions)[None, None]  # (1, 1, 3, 12)
    return q, k, v, causal


# ----------------------------------------------------------------------------------------------
def test_singleton_and_jsonl_format(logger, tmp_path):
    assert MicroMetricLogger() is logger
    assert {DENSITY, OUTPUT_ERROR} <= set(MicroMetricLogger.get_registered_metrics())
    logger.set_context(benchmark="unit")
    logger.log(DENSITY, 0.25, {"layer_idx": 3})
    logger.flush()
    (record,) = read_records(tmp_path)
    assert set(record) == {"timestamp", "metric", "value", "metadata", "location"}
    assert record["metric"] == DENSITY and record["value"] == 0.25
    assert record["metadata"] == {"benchmark": "unit", "layer_idx": 3}
    assert record["location"].endswith("test_metric_logging.test_singleton_and_jsonl_format")
    datetime.fromisoformat(record["timestamp"])


def test_configure_starts_the_file_afresh_unless_appending(logger, tmp_path):
    logger.log(DENSITY, 0.5)
    logger.flush()
    logger.configure_logging(tmp_path, "all", append=True)
    logger.log(DENSITY, 0.6)
    logger.flush()
    assert [r["value"] for r in read_records(tmp_path)] == [0.5, 0.6]
    logger.configure_logging(tmp_path, "all")
    logger.flush()
    assert (tmp_path / FILE_NAME).read_text() == ""


def test_configuration_errors_name_the_argument(tmp_path):
    log = MicroMetricLogger()
    with pytest.raises(ValueError, match="sampling_factor must be in \\[0, 1\\], got 1.5"):
        log.configure_logging(tmp_path, "all", sampling_factor=1.5)
    with pytest.raises(ValueError, match="max_records must be None or >= 0, got -1"):
        log.configure_logging(tmp_path, "all", max_records=-1)
    with pytest.raises(ValueError, match="unregistered names \\['nope'\\]"):
        log.configure_logging(tmp_path, ["nope"])
    log.disable()


def test_unsampled_calls_touch_no_tensor(logger):
    logger.configure_logging(logger.log_path, "all", sampling_factor=0.0)
    poison = {
        "layer_idx": 0,
        "mask": Poison(),
        "queries": Poison(),
        "keys": Poison(),
        "values": Poison(),
        "attention_mask": Poison(),
        "scaling": 1.0,
        "output": Poison(),
    }
    for _ in range(20):
        logger.observe(poison)
    logger.disable()  # nothing pending, nothing computed


def test_sampling_is_decided_before_computing(logger):
    q, k, v, causal = attention_event()
    logger.configure_logging(logger.log_path, [DENSITY], sampling_factor=0.3, seed=7)
    mask = CountingMask(0.5)
    event = dict(layer_idx=0, mask=mask, queries=q, keys=k, values=v, scaling=0.25)
    for _ in range(200):
        logger.observe(event)
    logger.flush()
    draws = random.Random(7)
    expected = sum(draws.random() < 0.3 for _ in range(200))
    assert mask.calls == expected == len(read_records(logger.log_path))
    assert 30 < expected < 90


def test_record_cap_stops_computation(logger, monkeypatch):
    from sparse_attention_hub.metric_logging import logger as logger_module

    computed = []
    monkeypatch.setitem(
        logger_module._ATTENTION_METRICS, OUTPUT_ERROR, lambda e: computed.append(1) or 0.1
    )
    logger.configure_logging(logger.log_path, "all", max_records=3)
    q, k, v, _ = attention_event()
    mask = CountingMask(0.2)
    for _ in range(5):
        logger.observe(dict(layer_idx=0, mask=mask, queries=q, keys=k, values=v, scaling=0.25))
    logger.flush()
    records = read_records(logger.log_path)
    assert [r["metric"] for r in records] == [DENSITY, OUTPUT_ERROR, DENSITY]
    assert mask.calls == 2 and len(computed) == 1


def test_density_and_output_error_match_the_reference(logger):
    q, k, v, causal = attention_event(seed=3)
    config = ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(3)])
    attention = ResearchAttention.create_from_config(config)
    attention.observer = logger.observe
    scale = 16**-0.5
    out, _ = attention.custom_attention(
        None, q, k, v, causal, scale, 0.0, sparse_meta_data={}, layer_idx=5
    )
    logger.flush()
    records = {r["metric"]: r for r in read_records(logger.log_path)}
    mask = attention.compute_mask(q, k, v, causal, scale, 0.0, {}, layer_idx=5)
    expected_density = (mask.get_dense_mask() > 0).double().mean().item()
    assert records[DENSITY]["value"] == pytest.approx(expected_density)
    assert 0.0 < expected_density < 0.5
    dense = reference_dense(q, k, v, causal, scale)
    assert records[OUTPUT_ERROR]["value"] == pytest.approx(reference_error(out, dense), rel=1e-4)
    assert records[OUTPUT_ERROR]["value"] > 1e-3  # the mask really dropped keys
    meta = records[DENSITY]["metadata"]
    assert meta["layer_idx"] == 5 and meta["q_len"] == 3 and meta["kv_len"] == 12


def test_output_error_skips_rows_that_see_no_key(logger):
    q, k, v, causal = attention_event(seed=4)
    out = reference_dense(q, k, v, causal, 0.25)
    out[:, 0] = 123.0  # garbage in a padding row must not count
    causal = causal.clone()
    causal[..., 0, :] = False  # the padding row sees no key
    event = dict(
        layer_idx=0,
        mask=CountingMask(1.0),
        queries=q,
        keys=k,
        values=v,
        attention_mask=causal,
        scaling=0.25,
        output=out.float(),
    )
    logger.observe(event)
    logger.flush()
    error = [r for r in read_records(logger.log_path) if r["metric"] == OUTPUT_ERROR][0]
    assert error["value"] == pytest.approx(0.0, abs=1e-5)


def test_identifiers_through_a_model_adapter(logger):
    transformers = pytest.importorskip("transformers")
    from test_adapter_hf import WORDS, context_text, make_tokenizer

    from sparse_attention_hub.adapters import ModelAdapterHF, Request

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    sparse = ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(8)])
    request = Request(context_text(80), ["what is the secret code", "which tree"], "answer")
    with ModelAdapterHF.from_model(model, make_tokenizer(), sparse) as adapter:
        logger.begin_request(5)
        with logger.attached(adapter):
            adapter.process_request(request, {"max_new_tokens": 3, "min_new_tokens": 3})
        assert "generate" not in model.__dict__ and adapter.sparse_attention.observer is None
        context_len = adapter._encode(request)[0].shape[1]
    records = [r["metadata"] for r in read_records(logger.log_path) if r["metric"] == DENSITY]
    assert {m["request_id"] for m in records} == {5}
    assert {m["question_id"] for m in records} == {0, 1}
    for question in (0, 1):
        rows = [m for m in records if m["question_id"] == question]
        assert sorted({m["layer_idx"] for m in rows}) == [0, 1, 2]
        assert sorted({m["step"] for m in rows}) == [0, 1, 2]  # question pass + 2 tokens
        first = [m for m in rows if m["step"] == 0]
        q_len = first[0]["q_len"]
        assert q_len > 1 and all(m["kv_len"] == context_len + q_len for m in first)
        for m in rows:
            if m["step"] > 0:
                assert m["q_len"] == 1 and m["kv_len"] == context_len + q_len + m["step"]
