"""Maskers with per-key state (HashAttention, EfficientAttention HashAttention, Quest, PQCache,
MagicPig) on a transformers StaticCache, eager and compiled, on a tiny random-weight Llama (no
downloads, CPU).

References: the same generation with a DynamicCache (the state appends rows as the key length
grows), states built from scratch on the final keys, plain-PyTorch page statistics, and a
direct transcription of "the positions a call wrote" for hand-made masks.
"""

import copy
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from test_adapter_hf import WORDS, context_text, make_tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    CompileConfig,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    StaticCache,
)

from sparse_attention_hub.adapters import AttentionRegistry, ModelAdapterHF, Request  # noqa: E402
from sparse_attention_hub.sparse_attention.efficient_attention import (  # noqa: E402
    EfficientAttention,
)
from sparse_attention_hub.sparse_attention.efficient_attention.implementations.hash_attention import (  # noqa: E402,E501
    HashAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention import (  # noqa: E402
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (  # noqa: E402
    HashAttentionTopKMaskerConfig,
    LocalMaskerConfig,
    SinkMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations import (  # noqa: E402,E501
    HashAttentionTopKMasker,
    PQCacheConfig,
    QuestTopKMaskerConfig,
    quest_top_k,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.key_rows_state import (  # noqa: E402,E501
    StaleStateError,
    written_end,
    written_positions,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.pq_top_k import (  # noqa: E402,E501
    fit_pq_codebooks,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling import (  # noqa: E402
    MagicPigConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling.implementations.magic_pig import (  # noqa: E402,E501
    MagicPigLayerState,
)
from sparse_attention_hub.sparse_attention.utils.mask import Mask  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 4, 2, 8, 2
CONTEXT, QUESTION, NEW = 40, 4, 12
#: Prompt + generated tokens - 1: the last decode step writes the buffer's last slot.
BUFFER = CONTEXT + QUESTION + NEW - 1
FAMILIES = ["hash_research", "hash_efficient", "quest", "pq", "magicpig"]
STATE_KEYS = {
    "hash_research": "hash_attention",
    "hash_efficient": "hash_attention",
    "quest": "quest",
    "pq": "pq_cache",
    "magicpig": "magic_pig",
}


def hat_weights(seed=7, dims=(HEAD_DIM, 16, 32)):
    """Random HashAttention weights (an MLP 8 -> 16 -> 32 per head: 32 bits), every layer."""
    gen = torch.Generator().manual_seed(seed)

    def entry():
        return {
            f"{side}_{part}": [
                torch.randn(HEADS, a, b, generator=gen) / a**0.5
                if part == "matrix"
                else torch.randn(HEADS, b, generator=gen) * 0.1
                for a, b in zip(dims[:-1], dims[1:])
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }

    return {layer: entry() for layer in range(LAYERS)}


def make_attention(family):
    """Sink 2 + local 2 + the family's masker, integer sizes (both caches pick the same keys)."""
    base = [SinkMaskerConfig(2), LocalMaskerConfig(2)]
    hat = dict(hat_bits=32, hat_mlp_layers=2, hat_mlp_hidden_size=16, hat_weights=hat_weights())
    if family == "hash_efficient":
        config = HashAttentionConfig(
            heavy_size=6, sink_size=2, local_size=2, hat_mlp_activation="silu", **hat
        )
        return EfficientAttention.create_from_config(config)
    extra = {
        "hash_research": lambda: HashAttentionTopKMaskerConfig(
            heavy_size=6, hat_mlp_activation="silu", **hat
        ),
        "quest": lambda: QuestTopKMaskerConfig(heavy_size=8, page_size=4),
        "pq": lambda: PQCacheConfig(heavy_size=6, pq_sub_dim=2, pq_bits=3, kmeans_iters=3),
        "magicpig": lambda: MagicPigConfig(lsh_l=8, lsh_k=2, seed=3),
    }[family]()
    return ResearchAttention.create_from_config(ResearchAttentionConfig(base + [extra]))


def masker_chain(attention):
    if isinstance(attention, EfficientAttention):
        return list(attention.masker_chain())
    return list(attention.maskers)


def stateful_masker(attention):
    return masker_chain(attention)[-1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()


def prompt_ids(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, len(WORDS) + 4, (1, CONTEXT + QUESTION), generator=gen)


def run(model, attention, cache_kind, new=NEW, compile_config=None, ids=None, **generation):
    """Setup B by hand: the context prefilled densely, then ``generate`` (question prefill and
    decode) through the registered sparse attention with a fresh masker state. Returns the new
    tokens, their logits, the masker state and the cache."""
    ids = (prompt_ids() if ids is None else ids).to(model.device)
    if cache_kind == "static":
        cache = StaticCache(config=model.config, max_cache_len=BUFFER)
    else:
        cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :CONTEXT], past_key_values=cache, use_cache=True)
    registry = AttentionRegistry()
    name = registry.register_sparse_attention(attention)
    function = registry.get_attention_adapter(name)
    function.state = state = {}
    previous = registry.configure_model_attention(model, name)
    kwargs = dict(generation)
    if compile_config is not None:
        kwargs["compile_config"] = compile_config
    try:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                past_key_values=cache,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=3,
                output_logits=True,
                return_dict_in_generate=True,
                **kwargs,
            )
    finally:
        registry.restore_model_attention(model, previous)
        registry.unregister_attention_function(name)
    return out.sequences[0, ids.shape[1] :].tolist(), torch.stack(out.logits), state, cache


def valid_rows(family, layer_state, n):
    """The state's rows for the first ``n`` keys (page statistics of their pages for Quest)."""
    if family == "quest":
        pages = -(-n // layer_state.page_size)
        return layer_state.page_min[:, :, :pages], layer_state.page_max[:, :, :pages]
    if family == "magicpig":
        return (layer_state.key_signatures[:, :, :n],)
    return (layer_state.rows[:, :, :n],)


# ----------------------------------------------------------------------------------------------
# 1. Static cache generation == dynamic cache generation
@pytest.mark.parametrize("family", FAMILIES)
def test_static_cache_generation_equals_dynamic_cache(model, family):
    """Token for token, and the logits of every step, through the sparse attention; the states
    agree on every written position."""
    tokens, logits, state, _ = run(model, make_attention(family), "dynamic")
    s_tokens, s_logits, s_state, _ = run(model, make_attention(family), "static")
    assert s_tokens == tokens
    torch.testing.assert_close(s_logits, logits, rtol=1e-9, atol=1e-9)
    key = STATE_KEYS[family]
    valid = CONTEXT + QUESTION + NEW - 1
    for layer in range(LAYERS):
        assert state[key][layer].num_keys == valid  # dynamic: appended up to the last key
        assert s_state[key][layer].num_keys == BUFFER  # static: the whole buffer, constant
        for got, want in zip(
            valid_rows(family, s_state[key][layer], valid),
            valid_rows(family, state[key][layer], valid),
        ):
            assert torch.equal(got, want)


def test_stale_rows_would_change_the_output(model, monkeypatch):
    """The comparison above is sensitive: without the positional refresh (the state keeps the
    rows of the buffer as it was at the question prefill) the logits differ."""
    _, logits, _, _ = run(model, make_attention("quest"), "dynamic")
    monkeypatch.setattr(quest_top_k.QuestLayerState, "refresh", lambda *args: None)
    _, stale_logits, _, _ = run(model, make_attention("quest"), "static")
    assert (stale_logits - logits).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# 2. The state after a static run == a state built from scratch on the final keys
def page_stats_reference(keys, page_size):
    """Per-page min/max (float32) of keys (b, h, n, d), the last page partial."""
    n = keys.shape[2]
    pages = [keys[:, :, p : min(p + page_size, n)].float() for p in range(0, n, page_size)]
    return (
        torch.stack([p.amin(2) for p in pages], dim=2),
        torch.stack([p.amax(2) for p in pages], dim=2),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_static_state_equals_state_built_from_final_keys(model, family):
    attention = make_attention(family)
    _, _, state, cache = run(model, attention, "static")
    masker = stateful_masker(attention)
    valid = CONTEXT + QUESTION + NEW - 1
    prompt = CONTEXT + QUESTION  # the state was created at the question prefill
    assert valid == BUFFER  # the buffer is full: its last slot was rewritten
    for layer in range(LAYERS):
        keys = cache.layers[layer].keys[:, :, :valid]
        layer_state = state[STATE_KEYS[family]][layer]
        if family.startswith("hash"):
            matrices, biases = masker._layer_weights(layer, "key", keys)
            signs = masker._get_signatures(keys, matrices, biases)
            want = (torch.ops.sah.hash_pack_signs(signs),)
        elif family == "quest":
            want = page_stats_reference(keys, 4)
        elif family == "pq":
            books = fit_pq_codebooks(keys[:, :, :prompt], 2, 8, 3, 0)  # fitted on the prompt only
            assert torch.equal(layer_state.codebooks, books)
            want = (torch.ops.sah.pq_encode(keys, books),)
        else:
            fresh = MagicPigLayerState.create(keys[:, :, :prompt], 8, 2, True, 3, layer)
            torch.testing.assert_close(layer_state.key_mean, fresh.key_mean)
            torch.testing.assert_close(layer_state.key_norm_bound, fresh.key_norm_bound)
            fresh.reserve(valid)
            no_rows = torch.empty(1, KV_HEADS, 1, 0, dtype=torch.int32)
            torch.ops.sah.magicpig_mask(
                keys[:, :, :1], keys, no_rows, no_rows.float(), None, fresh.projections,
                fresh.key_mean, fresh.key_norm_bound, fresh.key_signatures, 0, 8, 2,
            )  # fmt: skip
            want = (fresh.key_signatures[:, :, :valid],)
        for got, expected in zip(valid_rows(family, layer_state, valid), want):
            assert torch.equal(got, expected)
        # Mutated in place by the compiled decode step: static addresses for CUDA graphs.
        assert layer_state.anchor.tolist() == [prompt - 1]  # the question prefill's last key
        for t in layer_state._state_tensors():
            assert getattr(t, "_dynamo_static_input_type", None) == "unguarded"
        assert not layer_state.stale.item()


# ----------------------------------------------------------------------------------------------
# 3. Compiled static decode (generate's own compile path, forced on CPU)
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_static_decode_equals_eager(model, family):
    """generate() compiles the decode step of a static cache (here with aot_eager on CPU, which
    checks capture, fake kernels and the functionalisation of the in-place state updates): the
    same tokens, logits and states as eager, with at most 2 compilations for 8 decode steps."""
    from torch._dynamo.backends.registry import lookup_backend

    compilations = []

    def counting_backend(gm, example_inputs):
        compilations.append(len(gm.graph.nodes))
        return lookup_backend("aot_eager")(gm, example_inputs)

    new = 9  # question prefill (eager) + 8 compiled decode steps
    tokens, logits, state, _ = run(model, make_attention(family), "static", new=new)
    torch._dynamo.reset()
    config = CompileConfig(fullgraph=True, dynamic=False, backend=counting_backend, mode=None)
    config._compile_all_devices = True  # generate() compiles on CUDA only by default
    try:
        c_tokens, c_logits, c_state, _ = run(
            model, make_attention(family), "static", new=new, compile_config=config
        )
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)
    assert 1 <= len(compilations) <= 2, compilations
    assert c_tokens == tokens
    torch.testing.assert_close(c_logits, logits, rtol=1e-9, atol=1e-9)
    key, valid = STATE_KEYS[family], CONTEXT + QUESTION + new - 1
    for layer in range(LAYERS):
        for got, want in zip(
            valid_rows(family, c_state[key][layer], valid),
            valid_rows(family, state[key][layer], valid),
        ):
            assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------
# 4. ModelAdapterHF with cache_implementation="static" and a key-state masker
@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_static_cache_equals_dynamic_with_key_state_maskers(model, tokenizer, family):
    """Several questions (the static cache is rolled back in place between them), one by one
    and batched (left padding), answer as with the dynamic cache."""
    request = Request(context_text(n_words=50, seed=4), ["what is the secret code", "is it red"])
    config = make_attention(family).sparse_attention_config
    answers = {}
    for cache in ("dynamic", "static"):
        with ModelAdapterHF.from_model(
            model, tokenizer, config, cache_implementation=cache
        ) as adapter:
            answers[cache] = (
                adapter.process_request(request, {"max_new_tokens": 12}).responses,
                adapter.process_request(
                    request, {"max_new_tokens": 12}, {"batch_questions": True}
                ).responses,
            )
    assert answers["static"] == answers["dynamic"]


# ----------------------------------------------------------------------------------------------
# 5. The written-positions helper
def written_reference(mask, q_len, n):
    """Direct transcription: 1 + the last key the last query row may see, max over batch rows
    and heads; then the q_len positions ending there, clamped to [0, n - 1]."""
    end = 0
    rows = mask[:, :, -1, :n]
    for b in range(rows.shape[0]):
        for h in range(rows.shape[1]):
            for j in range(n):
                value = rows[b, h, j].item()
                allowed = value if rows.dtype == torch.bool else value > torch.finfo(rows.dtype).min
                if allowed:
                    end = max(end, j + 1)
    return end, [min(max(end - q_len + i, 0), n - 1) for i in range(q_len)]


def static_bool_mask(lengths_padding, q_len, written, n):
    """transformers' static-cache mask: (b, 1, q, n) bool, query i at position written - q + i
    sees keys <= its position, minus each row's left padding."""
    rows = []
    for pad in lengths_padding:
        pos = written - q_len + torch.arange(q_len)[:, None]
        j = torch.arange(n)[None, :]
        rows.append(((j <= pos) & (j >= pad))[None])
    return torch.stack(rows)


@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("kind", ["bool", "additive_min", "additive_inf", "per_head"])
def test_written_positions_match_reference(q_len, kind):
    n, written = 24, 13
    mask = static_bool_mask([0, 3], q_len, written, n)  # row 1 left-padded by 3
    if kind != "bool":
        neg = torch.finfo(torch.float32).min if kind != "additive_inf" else float("-inf")
        mask = torch.where(mask, 0.0, neg)
    if kind == "per_head":  # per-head mask: one head sees one key more, longer than n
        mask = mask.expand(2, 2, q_len, n).clone()
        mask[1, 1, -1, written] = 0.0
        mask = torch.cat([mask, torch.zeros(2, 2, q_len, 3)], dim=3)
        mask[:, :, :, n:] = torch.finfo(torch.float32).min
    end, positions = written_reference(mask, q_len, n)
    assert end == (written + 1 if kind == "per_head" else written)
    assert written_end(mask, n).item() == end
    got = written_positions(mask, q_len, n)
    assert got.dtype == torch.int64 and got.tolist() == positions


def test_written_positions_edge_cases():
    n = 10
    # A mask whose query dim broadcasts (1) and a prefill longer than what is visible: clamped.
    mask = torch.zeros(1, 1, 1, n, dtype=torch.bool)
    mask[..., :3] = True
    assert written_positions(mask, 5, n).tolist() == [0, 0, 0, 1, 2]
    # The last row sees nothing: end 0, every position clamps to 0.
    assert written_end(torch.zeros(1, 1, 2, n, dtype=torch.bool), n).item() == 0
    # The buffer's last slot written.
    full = torch.ones(2, 1, 3, n, dtype=torch.bool)
    assert written_positions(full, 3, n).tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="must be 4-D"):
        written_end(torch.ones(1, n, dtype=torch.bool), n)
    # Under torch.compile: one graph, no host sync needed (static shapes, device ops only).
    compiled = torch.compile(written_positions, fullgraph=True, backend="aot_eager")
    assert compiled(full, 3, n).tolist() == [7, 8, 9]


# ----------------------------------------------------------------------------------------------
# The sequence guard of a refreshed (static) state
def test_static_refresh_sequence_guard():
    """A state on a simulated static buffer: refreshing calls check the last key the creating
    call wrote and, unless the call wrote it, the buffer's last slot; filling the whole buffer
    is no error."""
    gen = torch.Generator().manual_seed(5)
    n, d = 16, HEAD_DIM
    masker = HashAttentionTopKMasker(
        HashAttentionTopKMaskerConfig(
            heavy_size=3,
            hat_bits=32,
            hat_mlp_layers=2,
            hat_mlp_hidden_size=16,
            hat_mlp_activation="silu",
            hat_weights=hat_weights(),
        )
    )
    buffer = torch.zeros(1, KV_HEADS, n, d)
    buffer[:, :, :10] = torch.randn(1, KV_HEADS, 10, d, generator=gen)

    def call(keys, written, q_len=1, smd=None):
        mask = static_bool_mask([0], q_len, written, n)
        q = torch.randn(1, HEADS, q_len, d, generator=gen)
        empty = Mask.create_empty_mask((1, HEADS, q_len, n), torch.float32, torch.device("cpu"))
        return masker.add_mask(keys, q, keys, mask, 0.3, 0.0, smd, empty, layer_idx=0)

    smd = {}
    call(buffer, 10, q_len=10, smd=smd)
    state = smd["hash_attention"][0]
    rows = state.rows
    for written in range(11, n + 1):  # decode until the buffer is full
        buffer[:, :, written - 1] = torch.randn(1, KV_HEADS, d, generator=gen)
        call(buffer, written, smd=smd)
    assert state.rows is rows and state.num_keys == n  # in place, Python ints unchanged
    matrices, biases = masker._layer_weights(0, "key", buffer)
    want = torch.ops.sah.hash_pack_signs(masker._get_signatures(buffer, matrices, biases))
    assert torch.equal(state.valid_rows, want)
    other = buffer.clone()  # another sequence prefilled into the buffer, with the same first
    other[:, :, 1:10] = torch.randn(1, KV_HEADS, 9, d, generator=gen)  # key (e.g. BOS)
    with pytest.raises(StaleStateError, match="belongs to another sequence"):
        call(other, n, smd=smd)
    smd = {}
    call(buffer, 10, q_len=10, smd=smd)
    changed = buffer.clone()
    changed[:, :, n - 1] += 1.0  # the unwritten last slot changed: not this sequence's buffer
    with pytest.raises(StaleStateError, match=re.escape("HashAttention state of layer 0")):
        call(changed, 11, smd=smd)


# ----------------------------------------------------------------------------------------------
# GPU: CUDA graphs and no host sync
# (on a GPU machine: python -m pytest -m gpu tests/python/test_static_cache.py)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_static_decode_equals_eager(model, family):
    """On CUDA, generate() compiles the decode step of a static cache by itself (inductor,
    mode "reduce-overhead": CUDA graphs) with the key-state masker inside: the same tokens,
    logits and states as the eager static and dynamic runs, no CUDA-graph skip (every state
    tensor that the step mutates is a static address), at most 2 compilations, no stale flag."""
    from torch._dynamo.utils import counters

    cuda_model = copy.deepcopy(model).to("cuda")
    tokens, logits, state, _ = run(cuda_model, make_attention(family), "dynamic")
    e_tokens, e_logits, e_state, _ = run(
        cuda_model, make_attention(family), "static", disable_compile=True
    )
    torch._dynamo.reset()
    counters.clear()
    try:
        c_tokens, c_logits, c_state, _ = run(cuda_model, make_attention(family), "static")
        graphs = counters["stats"]["unique_graphs"]
        skips = counters["inductor"]["cudagraph_skips"]
    finally:
        torch._dynamo.reset()
    assert 1 <= graphs <= 2, dict(counters["stats"])
    assert skips == 0
    assert c_tokens == e_tokens == tokens
    torch.testing.assert_close(c_logits, e_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(e_logits, logits, rtol=1e-9, atol=1e-9)
    key, valid = STATE_KEYS[family], CONTEXT + QUESTION + NEW - 1
    for layer in range(LAYERS):
        for got, want in zip(
            valid_rows(family, c_state[key][layer], valid),
            valid_rows(family, e_state[key][layer], valid),
        ):
            if got.is_floating_point():  # Quest bounds, PQ codebooks: from keys that inductor
                # computes with other roundings than eager (the logits differ by ~1e-12 too)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            else:  # signatures, codes: exactly
                assert torch.equal(got, want)
        c_state[key][layer].raise_if_stale()


@pytest.mark.parametrize("family", FAMILIES)
def test_refresh_step_does_not_sync(device, family):
    """A static-cache decode step of the masker chain (a positional refresh of the state) makes
    no host sync on CUDA (torch's sync debug mode raises on one), and leaves the state equal,
    on the written positions, to that of the same two calls on a dynamic cache."""
    gen = torch.Generator().manual_seed(6)
    n, written, d = 48, 30, HEAD_DIM
    keys = torch.zeros(1, KV_HEADS, n, d, dtype=torch.float64)  # a static buffer, tail unwritten
    keys[:, :, : written + 1] = torch.randn(1, KV_HEADS, written + 1, d, generator=gen).double()
    queries = torch.randn(1, HEADS, QUESTION, d, generator=gen).double()
    keys, queries = keys.to(device), queries.to(device)

    def step(chain, smd, keys, q, mask):
        m = Mask.create_empty_mask(mask.shape[:1] + q.shape[1:3] + mask.shape[3:], torch.float64,
                                   torch.device(device))  # fmt: skip
        for masker in chain:
            m = masker.add_mask(keys, q, keys, mask, 0.3, 0.0, smd, m, layer_idx=0)

    static, dynamic = {}, {}
    static_chain = masker_chain(make_attention(family))
    dynamic_chain = masker_chain(make_attention(family))
    prefill = keys.clone()
    prefill[:, :, written] = 0.0  # the decode step's slot is not written yet at the prefill
    # A question prefill after a dense context (no full-attention shortcut with either cache):
    mask = static_bool_mask([0], QUESTION, written, n).to(device)
    step(static_chain, static, prefill, queries, mask)  # creation: may sync (PQCache, MagicPig)
    step(dynamic_chain, dynamic, keys[:, :, :written], queries, mask[..., :written])
    mask = static_bool_mask([0], 1, written + 1, n).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        step(static_chain, static, keys, queries[:, :, -1:], mask)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    step(
        dynamic_chain,
        dynamic,
        keys[:, :, : written + 1],
        queries[:, :, -1:],
        mask[..., : written + 1],
    )
    key = STATE_KEYS[family]
    assert static[key][0].num_keys == n and dynamic[key][0].num_keys == written + 1
    static[key][0].raise_if_stale()
    for got, want in zip(
        valid_rows(family, static[key][0], written + 1),
        valid_rows(family, dynamic[key][0], written + 1),
    ):
        assert torch.equal(got, want)
