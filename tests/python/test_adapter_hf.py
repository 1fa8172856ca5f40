"""ModelAdapterHF and the registration lifecycle on a tiny random-weight Llama (no downloads).

Reference: plain HF generation (dense), and a plain-PyTorch sink+local attention registered in
transformers' AttentionInterface and run in the same model.
"""

import copy
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from sparse_attention_hub.adapters import (  # noqa: E402
    AttentionRegistry,
    ModelAdapterHF,
    Request,
    RequestResponse,
)
from sparse_attention_hub.sparse_attention.research_attention import (  # noqa: E402
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (  # noqa: E402
    LocalMaskerConfig,
    OracleTopKConfig,
    SinkMaskerConfig,
)

WORDS = (
    "the a of and to in is was it that for on with as at by this are be from or an have not "
    "which one all were we when there can more if has been who will their would what so its "
    "USER ENDUSER ASSISTANT code secret number question answer blue red green cat dog tree"
).split()


# ----------------------------------------------------------------------------------------------
# Reference attention: plain PyTorch, dense scores, sink + local window by absolute position.
def reference_sink_local(sink, window):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        b, h, sq, d = query.shape
        sk = key.shape[2]
        g = h // key.shape[1]
        k, v = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
        s = (scaling or d**-0.5) * query @ k.transpose(-1, -2)
        pos = sk - sq + torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        s_eff, w_eff = sink(sk), window(sk)
        full = sk <= s_eff or sk <= w_eff + sq
        keep = (j <= pos) & (full | (j < s_eff) | (j > pos - w_eff))
        if attention_mask is not None:
            keep = keep & attention_mask[:, :, :, :sk]
        s = s.masked_fill(~keep, float("-inf"))
        out = torch.softmax(s, -1) @ v
        return out.transpose(1, 2).contiguous(), None

    return attention


def make_tokenizer(chat_template=True):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    if chat_template:
        tok.chat_template = (
            "{{ bos_token }}{% for m in messages %}USER {{ m['content'] }} ENDUSER{% endfor %}"
            "{% if add_generation_prompt %} ASSISTANT{% endif %}"
        )
    return tok


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    return model, make_tokenizer()


def context_text(n_words=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = [WORDS[i] for i in torch.randint(0, 40, (n_words,), generator=g).tolist()]
    return "the secret code is blue . " + " ".join(words)


def plain_greedy(model, tok, adapter, request, max_new_tokens):
    ctx, qs = adapter._encode(request)
    outs = []
    for q in qs:
        ids = torch.cat([ctx, q], 1)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=3,
        )
        outs.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return outs


# ----------------------------------------------------------------------------------------------
def test_dense_mode_equals_plain_hf_generation(tiny):
    model, tok = tiny
    request = Request(context_text(), ["what is the secret code", "which tree is red"], "answer")
    with ModelAdapterHF.from_model(model, tok, None) as adapter:
        got = adapter.process_request(request, {"max_new_tokens": 8})
        assert isinstance(got, RequestResponse) and isinstance(got.responses, list)
        assert got.responses == plain_greedy(model, tok, adapter, request, 8)


def test_sparse_mode_keeping_every_key_equals_dense(tiny):
    """Sink 60% + local 50% of the keys cover every key without the 'full' shortcut, so the
    row-form kernels run and must reproduce dense generation."""
    model, tok = tiny
    request = Request(context_text(seed=1), "what is the secret code")
    config = ResearchAttentionConfig([SinkMaskerConfig(0.6), LocalMaskerConfig(0.5)])
    with ModelAdapterHF.from_model(model, tok, None) as dense:
        want = dense.process_request(request, {"max_new_tokens": 10}).responses
    with ModelAdapterHF.from_model(model, tok, config) as sparse:
        got = sparse.process_request(request, {"max_new_tokens": 10}).responses
    assert isinstance(got, str) and got == want


@pytest.mark.parametrize("setup", ["B", "A"])
def test_sink_local_equals_reference_attention_in_same_model(tiny, setup):
    model, tok = tiny
    request = Request(context_text(seed=2), ["what is the secret code", "is the dog red"])
    config = ResearchAttentionConfig([SinkMaskerConfig(4), LocalMaskerConfig(16)])
    with ModelAdapterHF.from_model(model, tok, config, setup=setup) as sparse:
        got = sparse.process_request(request, {"max_new_tokens": 10}).responses
        # The same flow with the reference attention plugged in place of the sparse one.
        function = sparse._registry.get_attention_adapter(sparse.attention_name)
        reference = reference_sink_local(lambda n: 4, lambda n: 16)
        original = function.sparse_attention.custom_attention
        function.sparse_attention.custom_attention = lambda module, q, k, v, m, s, d, **kw: (
            reference(module, q, k, v, m, s, d)
        )
        try:
            want = sparse.process_request(request, {"max_new_tokens": 10}).responses
        finally:
            function.sparse_attention.custom_attention = original
    assert got == want


@pytest.mark.parametrize("setup", ["B", "A"])
def test_context_is_prefilled_once_per_request(tiny, setup):
    model, tok = tiny
    request = Request(context_text(seed=3), ["what is the code", "is it blue", "is it red"])
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(
            kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None else -1
        ),
        with_kwargs=True,
    )
    try:
        config = ResearchAttentionConfig([LocalMaskerConfig(8)])
        with ModelAdapterHF.from_model(model, tok, config, setup=setup) as adapter:
            adapter.process_request(request, {"max_new_tokens": 3})
            ctx_len = adapter._encode(request)[0].shape[1]
    finally:
        hook.remove()
    assert lengths.count(ctx_len) == 1, lengths
    assert max(lengths) == ctx_len  # questions never re-run the context


def test_prompt_has_one_bos_and_truncation_modes(tiny):
    model, tok = tiny
    with ModelAdapterHF.from_model(model, tok, None) as adapter:
        ctx, qs = adapter._encode(Request("the cat", "is it red", "answer"))
        assert (ctx == tok.bos_token_id).sum() == 1 and ctx[0, 0] == tok.bos_token_id
        assert all((q == tok.bos_token_id).sum() == 0 for q in qs)
        ids = torch.arange(10)[None]
        assert adapter._truncate(ids, 4, "head").tolist() == [[0, 1, 2, 3]]
        assert adapter._truncate(ids, 4, "middle").tolist() == [[0, 1, 8, 9]]
        with pytest.raises(ValueError, match="truncation must be one of"):
            adapter._truncate(ids, 4, "tail")
    base = make_tokenizer(chat_template=False)
    with ModelAdapterHF.from_model(model, base, None) as adapter:
        ctx, _ = adapter._encode(Request("the cat", "is it red"))
        assert (ctx == base.bos_token_id).sum() == 1


def test_generation_kwargs_are_honoured_and_not_mutated(tiny):
    model, tok = tiny
    kwargs = {"max_new_tokens": 4}
    with ModelAdapterHF.from_model(
        model, tok, ResearchAttentionConfig([LocalMaskerConfig(8)])
    ) as adapter:
        short = adapter.process_request(
            Request(context_text(), "what is the code"), kwargs
        ).responses
        assert kwargs == {"max_new_tokens": 4}
        assert len(tok(short, add_special_tokens=False).input_ids) <= 4
        torch.manual_seed(0)
        sampled = adapter.process_request(
            Request(context_text(), "what is the code"),
            {"max_new_tokens": 6, "do_sample": True, "temperature": 5.0, "top_k": 0},
        ).responses
        assert isinstance(sampled, str)


def test_enable_sparse_mode_restores_after_exception_and_dense_only_refuses(tiny):
    model, tok = tiny
    before = model.config._attn_implementation
    with ModelAdapterHF.from_model(
        model, tok, ResearchAttentionConfig([LocalMaskerConfig(8)])
    ) as adapter:
        with pytest.raises(KeyError):
            with adapter.enable_sparse_mode():
                assert model.config._attn_implementation == adapter.attention_name
                raise KeyError("boom")
        assert model.config._attn_implementation == before
    with ModelAdapterHF.from_model(model, tok, None) as dense:
        with pytest.raises(RuntimeError, match="needs a sparse attention config"):
            with dense.enable_sparse_mode():
                pass


def test_registration_lifecycle_and_dense_layers(tiny):
    model, tok = tiny
    registry = AttentionRegistry()
    calls = []

    class Spy(ResearchAttention):
        def custom_attention(
            self, module, q, k, v, mask, scaling, dropout, sparse_meta_data=None, **kw
        ):
            calls.append(kw["layer_idx"])
            return super().custom_attention(
                module, q, k, v, mask, scaling, dropout, sparse_meta_data, **kw
            )

    spy = Spy(ResearchAttentionConfig([]), [])
    name = registry.register_sparse_attention(spy, attention_name="spy_attention_test")
    assert registry.list_registered_attention_functions() == {
        "spy_attention_test": "ResearchAttentionFunction"
    }
    assert registry.get_attention_adapter(name).get_attention_name() == name
    with pytest.raises(ValueError, match="already registered"):
        registry.register_sparse_attention(spy, attention_name=name)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_sparse_attention(spy, attention_name="sdpa")
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    previous = registry.configure_model_attention(model, name, layer_indices=[1])
    try:
        with torch.no_grad():
            model(ids)
    finally:
        registry.restore_model_attention(model, previous)
    assert calls == [1], "only layer 1 runs the sparse attention"
    registry.unregister_attention_function(name)
    assert registry.list_registered_attention_functions() == {}
    with pytest.raises(KeyError, match="not registered"):
        registry.get_attention_adapter(name)
    model.config._attn_implementation = name
    try:
        with pytest.raises(RuntimeError, match="was unregistered"), torch.no_grad():
            model(ids)
    finally:
        model.config._attn_implementation = "sdpa"


def test_dense_layers_option_and_topk_generation(tiny):
    model, tok = tiny
    config = ResearchAttentionConfig(
        [SinkMaskerConfig(2), LocalMaskerConfig(8), OracleTopKConfig(0.1)]
    )
    request = Request(context_text(seed=4), "what is the secret code")
    with (
        ModelAdapterHF.from_model(model, tok, config, dense_layers=[0, 1, 2]) as all_dense,
        ModelAdapterHF.from_model(model, tok, None) as dense,
    ):
        assert (
            all_dense.process_request(request, {"max_new_tokens": 6}).responses
            == dense.process_request(request, {"max_new_tokens": 6}).responses
        )
    with ModelAdapterHF.from_model(model, tok, config, dense_layers=[0]) as adapter:
        assert isinstance(adapter.process_request(request, {"max_new_tokens": 6}).responses, str)


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="setup must be one of"):
        ModelAdapterHF.from_model(model, tok, None, setup="C")
    with pytest.raises(ValueError, match="a tokenizer is required"):
        ModelAdapterHF("x", None, model=model, device="cpu")


def _arch_models():
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attn_implementation="sdpa",
    )
    return {
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common)),
        "mistral-sliding": lambda: MistralForCausalLM(MistralConfig(sliding_window=24, **common)),
        "gemma3-sliding": lambda: Gemma3ForCausalLM(
            Gemma3TextConfig(
                head_dim=8,
                sliding_window=24,
                layer_types=["sliding_attention", "full_attention"],
                **common,
            )
        ),
    }


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral-sliding", "gemma3-sliding"])
def test_architectures_sparse_keeping_every_key_equals_dense(arch):
    """Sliding-window layers keep their window: the maskers never pick keys the layer's mask
    forbids, so a configuration that keeps every allowed key reproduces dense generation."""
    torch.manual_seed(0)
    model = _arch_models()[arch]().to(torch.float64).eval()
    tok = make_tokenizer()
    request = Request(context_text(n_words=80, seed=5), ["what is the secret code", "is it red"])
    config = ResearchAttentionConfig([SinkMaskerConfig(0.6), LocalMaskerConfig(0.5)])
    with ModelAdapterHF.from_model(model, tok, None) as dense:
        want = dense.process_request(request, {"max_new_tokens": 8}).responses
    with ModelAdapterHF.from_model(model, tok, config) as sparse:
        got = sparse.process_request(request, {"max_new_tokens": 8}).responses
    assert got == want


@pytest.mark.parametrize("setup", ["B", "A"])
def test_batch_equals_one_by_one(tiny, setup):
    """Questions of several requests (different context and question lengths) as one batch
    give the answers each gets alone (integer masker sizes: fractions use the padded length)."""
    model, tok = tiny
    config = ResearchAttentionConfig(
        [SinkMaskerConfig(3), LocalMaskerConfig(12), OracleTopKConfig(6)]
    )
    requests = [
        Request(context_text(n_words=90, seed=6), ["what is the secret code", "is it red"]),
        Request(context_text(n_words=60, seed=7), "which dog is in the tree now"),
    ]
    with ModelAdapterHF.from_model(model, tok, config, setup=setup) as adapter:
        alone = [adapter.process_request(r, {"max_new_tokens": 6}) for r in requests]
        batched = adapter.process_requests(requests, {"max_new_tokens": 6})
        one_request = adapter.process_request(
            requests[0], {"max_new_tokens": 6}, {"batch_questions": True}
        )
    assert [r.responses for r in batched] == [r.responses for r in alone]
    assert one_request.responses == alone[0].responses
    assert isinstance(batched[1].responses, str)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sparse_every_key_equals_dense_and_topk_runs(tiny):
    """The whole path on the GPU: the row-form CUDA kernels reproduce dense generation, and a
    top-k configuration runs under generate() with batching."""
    model, tok = tiny
    model = copy.deepcopy(model).to("cuda")
    request = Request(context_text(seed=8), ["what is the secret code", "is it blue"])
    every_key = ResearchAttentionConfig([SinkMaskerConfig(0.6), LocalMaskerConfig(0.5)])
    with ModelAdapterHF.from_model(model, tok, None) as dense:
        want = dense.process_request(request, {"max_new_tokens": 8}).responses
    with ModelAdapterHF.from_model(model, tok, every_key) as sparse:
        assert sparse.process_request(request, {"max_new_tokens": 8}).responses == want
    topk = ResearchAttentionConfig(
        [SinkMaskerConfig(3), LocalMaskerConfig(12), OracleTopKConfig(6)]
    )
    with ModelAdapterHF.from_model(model, tok, topk) as adapter:
        alone = adapter.process_request(request, {"max_new_tokens": 6})
        batched = adapter.process_request(request, {"max_new_tokens": 6}, {"batch_questions": True})
    assert batched.responses == alone.responses


# ----------------------------------------------------------------------------------------------
# Static cache: fixed shapes (the maskers see the whole buffer; the mask hides its unused tail).
STATIC_TOPK = [SinkMaskerConfig(3), LocalMaskerConfig(12), OracleTopKConfig(6)]


@pytest.mark.parametrize("setup", ["B", "A"])
def test_static_cache_equals_dynamic_cache(tiny, setup):
    """Integer masker sizes pick the same keys whatever the buffer length, so a static cache
    reproduces the dynamic cache's answers (several questions: the static cache is rolled back
    in place between them), dense and sparse, one by one and batched."""
    model, tok = tiny
    request = Request(context_text(seed=9), ["what is the secret code", "is the dog red", "why"])
    for config in (None, ResearchAttentionConfig(STATIC_TOPK)):
        with ModelAdapterHF.from_model(model, tok, config, setup=setup) as dynamic:
            want = dynamic.process_request(request, {"max_new_tokens": 7}).responses
        with ModelAdapterHF.from_model(
            model, tok, config, setup=setup, cache_implementation="static"
        ) as static:
            got = static.process_request(request, {"max_new_tokens": 7}).responses
            batched = static.process_request(
                request, {"max_new_tokens": 7}, {"batch_questions": True}
            ).responses
        assert got == want
        assert batched == want


def test_static_cache_honours_max_length_and_validates_the_cache_kind(tiny):
    """(Maskers with per-key state on a static cache: tests/python/test_static_cache.py.)"""
    model, tok = tiny
    request = Request(context_text(seed=10), "what is the secret code")
    with ModelAdapterHF.from_model(model, tok, None, cache_implementation="static") as adapter:
        context_ids, question_ids = adapter._encode(request)
        prompt = context_ids.shape[1] + question_ids[0].shape[1]
        short = adapter.process_request(request, {"max_length": prompt + 3}).responses
        longer = adapter.process_request(request, {"max_new_tokens": 3}).responses
    assert short == longer
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        ModelAdapterHF.from_model(model, tok, None, cache_implementation="paged")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_static_cache_compiled_decode_equals_eager(tiny):
    """On CUDA, generate() compiles the decode step of a static cache (transformers' auto
    compile, CUDA graphs) with the sparse attention inside: same answers as the eager dynamic
    cache, and the compiled step is reused across questions."""
    model, tok = tiny
    model = copy.deepcopy(model).to("cuda")
    request = Request(context_text(seed=11), ["what is the secret code", "is it blue"])
    config = ResearchAttentionConfig(STATIC_TOPK)
    with ModelAdapterHF.from_model(model, tok, config) as eager:
        want = eager.process_request(request, {"max_new_tokens": 6}).responses
    torch._dynamo.reset()
    with ModelAdapterHF.from_model(model, tok, config, cache_implementation="static") as static:
        got = static.process_request(request, {"max_new_tokens": 6}).responses
    assert got == want


# ----------------------------------------------------------------------------------------------
# device_map: a model folder loaded by the adapter with accelerate's placement.
def test_device_map_auto_loads_and_matches_plain_device(tiny, tmp_path):
    """``model_kwargs={"device_map": "auto"}`` loads the folder through accelerate's placement
    (this machine's devices: the CPU here, every GPU on a multi-GPU machine, where
    benchmarks/bench_multi_gpu.py runs it at 128K), feeds the inputs to the embedding's device,
    and answers as the same folder loaded on one device, dense and sparse."""
    pytest.importorskip("accelerate")
    model, tok = tiny
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    request = Request(context_text(seed=5), ["what is the secret code", "is it blue"])
    topk = ResearchAttentionConfig([SinkMaskerConfig(3), LocalMaskerConfig(12), OracleTopKConfig(6)])
    answers = {}
    for placement in ("one device", "auto"):
        kwargs = {"dtype": torch.float64}
        if placement == "auto":
            kwargs["device_map"] = "auto"
        for name, config in (("dense", None), ("sparse", topk)):
            with ModelAdapterHF(str(folder), config, model_kwargs=kwargs, device="cpu") as adapter:
                embed = adapter.model.get_input_embeddings().weight.device
                assert adapter._input_device() == embed
                got = adapter.process_request(request, {"max_new_tokens": 6}).responses
            answers[placement, name] = got
    assert answers["auto", "dense"] == answers["one device", "dense"]
    assert answers["auto", "sparse"] == answers["one device", "sparse"]
    assert all(isinstance(a, str) for a in answers["auto", "sparse"])


@pytest.mark.parametrize("arch", ["mistral-sliding", "gemma3-sliding"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sliding_window_layers_with_key_state_maskers(arch, cache):
    """A sliding-window layer's cache drops and shifts keys once the window is full, so a
    masker with per-key state (Quest here) must not carry its state across calls there: the
    adapter's generation equals one whose attention rebuilds every state from scratch on every
    call (the state's invariant: equal to a recomputation from the current keys)."""
    from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations import (  # noqa: E501
        QuestTopKMaskerConfig,
    )

    torch.manual_seed(0)
    model = _arch_models()[arch]().to(torch.float64).eval()
    tok = make_tokenizer()
    request = Request(context_text(n_words=70, seed=6), "what is the secret code")
    config = ResearchAttentionConfig(
        [SinkMaskerConfig(2), LocalMaskerConfig(4), QuestTopKMaskerConfig(heavy_size=8, page_size=4)]
    )
    with ModelAdapterHF.from_model(model, tok, config, cache_implementation=cache) as adapter:
        got = adapter.process_request(request, {"max_new_tokens": 12}).responses
        function = adapter._registry.get_attention_adapter(adapter.attention_name)
        attention = function.sparse_attention

        def stateless(module, q, k, v, mask, scaling=None, dropout=0.0, **kwargs):
            kwargs.pop("sparse_meta_data", None)
            return attention.custom_attention(
                module, q, k, v, mask, scaling, dropout, sparse_meta_data={}, **kwargs
            )

        function.sparse_attention = types.SimpleNamespace(custom_attention=stateless)
        try:
            want = adapter.process_request(request, {"max_new_tokens": 12}).responses
        finally:
            function.sparse_attention = attention
    assert got == want and len(got.split()) > 0
