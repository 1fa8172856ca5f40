"""ResearchAttention with the fixed maskers against the reference implementation's pipeline
(dense mask chain + masked softmax, transcribed in tests/python/reference.py)."""

import dataclasses

import pytest
import torch
import torch._dynamo.testing
from reference import (
    causal_additive,
    ref_local,
    ref_masked_attention,
    ref_sink,
    ref_topk,
    ref_topp,
)

from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers import (
    MaskerRegistry,
    ResearchMasker,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    CausalMasker,
    FixedMaskerConfig,
    LocalMasker,
    LocalMaskerConfig,
    OracleTopK,
    OracleTopKConfig,
    OracleTopPMaskerConfig,
    SinkMaskerConfig,
    TopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling import (
    SamplingMasker,
)
from sparse_attention_hub.sparse_attention.utils import Mask


def eff(x, n):
    return int(x * n) if isinstance(x, float) else int(x)


def reference_chain(configs, q, k, additive, scale):
    """Upstream's dense mask chain; returns None for 'dense attention' (EMPTY or FULL)."""
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    mask, empty = torch.zeros(b, h, sq, sk, dtype=torch.float64), True
    for c in configs:
        if isinstance(c, SinkMaskerConfig):
            s = eff(c.sink_size, sk)
            if sk <= s:
                return None
            mask = ref_sink(mask, s)
        elif isinstance(c, LocalMaskerConfig):
            w = eff(c.window_size, sk)
            if sk <= w + sq:
                return None
            mask = ref_local(mask, w, zero_future=True)
        elif isinstance(c, OracleTopKConfig):
            kk = eff(c.heavy_size, sk)
            if sk <= kk:
                return None
            mask = ref_topk(q, k, additive, mask, kk)
        elif isinstance(c, OracleTopPMaskerConfig):
            if sk <= int(c.top_p * sk):
                return None
            mask = ref_topp(q, k, additive, mask, c.top_p, scale)
        else:
            continue
        empty = False
    return None if empty else mask


CHAINS = {
    "sink+local": [SinkMaskerConfig(4), LocalMaskerConfig(8)],
    "local+sink (fractions)": [LocalMaskerConfig(0.1), SinkMaskerConfig(0.05)],
    "sink+local+topk": [SinkMaskerConfig(4), LocalMaskerConfig(8), OracleTopKConfig(0.1)],
    "topk alone": [OracleTopKConfig(10)],
    "sink+local+topp": [SinkMaskerConfig(2), LocalMaskerConfig(4), OracleTopPMaskerConfig(0.7)],
    "causal only (dense)": [FixedMaskerConfig()],
    "topk+topp": [OracleTopKConfig(5), OracleTopPMaskerConfig(0.5)],
}


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("b,h,hkv,sq", [(1, 4, 2, 1), (2, 4, 1, 5), (2, 2, 2, 3)])
@pytest.mark.parametrize("sk", [64, 97])
def test_chain_outputs_and_masks_match_reference(device, chain, b, h, hkv, sq, sk):
    configs = CHAINS[chain]
    gen = torch.Generator().manual_seed(sk * 31 + sq * 7 + h)
    d, scale = 16, 0.25
    q = torch.randn(b, h, sq, d, generator=gen)
    k = torch.randn(b, hkv, sk, d, generator=gen)
    v = torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = causal_additive(b, sq, sk)
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig(configs))
    dev = [t.to(device) for t in (q, k, v, additive)]
    out, weights = attention.custom_attention(None, *dev, scale, 0.0, sparse_meta_data={})
    assert weights is None and out.shape == (b, sq, h, d)
    want_mask = reference_chain(configs, q, k, additive, scale)
    want = ref_masked_attention(q, k, v, additive, scale, want_mask)
    torch.testing.assert_close(out.cpu().double(), want, atol=1e-4, rtol=1e-4)
    got_mask = attention.compute_mask(*dev, scale, 0.0, {})
    if want_mask is None:
        assert got_mask.is_full_mask() or got_mask.is_empty_mask()
    else:
        got = got_mask.get_dense_mask().cpu().double()
        allowed4 = allowed.expand_as(got)
        torch.testing.assert_close(got[allowed4], want_mask[allowed4])
        assert (got[~allowed4] == 0).all()


def test_weights_on_request_match_reference():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 2, 2, 8, generator=gen),
        torch.randn(1, 1, 30, 8, generator=gen),
        torch.randn(1, 1, 30, 8, generator=gen),
    )
    additive, _ = causal_additive(1, 2, 30)
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(4)])
    )
    out, w = attention.custom_attention(
        None, q, k, v, additive, 0.3, 0.0, {}, output_attentions=True
    )
    mask = reference_chain(attention.sparse_attention_config.masker_configs, q, k, additive, 0.3)
    assert w.shape == (1, 2, 2, 30)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 2))
    assert (w[mask.float() == 0] == 0).all()


def test_padded_static_cache_keys_are_never_selected(device):
    """Keys beyond the valid length (a static cache) are forbidden by the mask: no masker picks
    them and the output equals attention over the valid prefix only."""
    gen = torch.Generator().manual_seed(1)
    valid, total, sq = 40, 56, 1
    q = torch.randn(1, 4, sq, 8, generator=gen)
    k = torch.randn(1, 2, total, 8, generator=gen)
    v = torch.randn(1, 2, total, 8, generator=gen)
    mask = torch.zeros(1, 1, sq, total)
    mask[..., valid:] = torch.finfo(torch.float32).min
    mask[..., : valid - 1 + 1] = 0.0
    configs = [SinkMaskerConfig(2), OracleTopKConfig(6)]
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig(configs))
    dev = [t.to(device) for t in (q, k, v, mask)]
    got_mask = attention.compute_mask(*dev, 0.3, 0.0, {})
    idx, _ = got_mask.get_rows()
    assert int(idx.max()) < valid
    out, _ = attention.custom_attention(None, *dev, 0.3, 0.0, {})
    # Same as the valid prefix alone, queried at its last position.
    additive_valid, _ = causal_additive(1, sq, valid)
    want_mask = reference_chain(configs, q, k[:, :, :valid], additive_valid, 0.3)
    want = ref_masked_attention(q, k[:, :, :valid], v[:, :, :valid], additive_valid, 0.3, want_mask)
    torch.testing.assert_close(out.cpu().double(), want, atol=1e-4, rtol=1e-4)


def test_bool_attention_mask_equals_additive(device):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(2, 4, 3, 8, generator=gen),
        torch.randn(2, 2, 50, 8, generator=gen),
        torch.randn(2, 2, 50, 8, generator=gen),
    )
    additive, allowed = causal_additive(2, 3, 50)
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig([SinkMaskerConfig(3), LocalMaskerConfig(5), OracleTopKConfig(4)])
    )
    a = attention.custom_attention(
        None, *(t.to(device) for t in (q, k, v, additive)), 0.3, 0.0, {}
    )[0]
    boolean = allowed.expand(2, 1, 3, 50).to(device)
    c = attention.custom_attention(
        None, q.to(device), k.to(device), v.to(device), boolean, 0.3, 0.0, {}
    )[0]
    torch.testing.assert_close(a, c)


# ----------------------------------------------------------------------------------------------
# Shortcuts, sizes and the framework.
def test_full_shortcuts_and_identity():
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4)
    empty = Mask.create_empty_mask((1, 2, 1, 10), dtype=torch.float32, device="cpu")
    full = Mask.create_full_mask((1, 2, 1, 10), dtype=torch.float32, device="cpu")
    for cfg in (
        LocalMaskerConfig(9),
        SinkMaskerConfig(10),
        OracleTopKConfig(10),
        OracleTopKConfig(1.0),
        OracleTopPMaskerConfig(1),
    ):
        masker = ResearchMasker.create_masker_from_config(cfg)
        assert masker.add_mask(k, q, v, None, 1.0, 0.0, {}, empty).is_full_mask(), cfg
        assert masker.add_mask(k, q, v, None, 1.0, 0.0, {}, full) is full
    causal = ResearchMasker.create_masker_from_config(FixedMaskerConfig())
    assert type(causal) is CausalMasker
    assert causal.add_mask(k, q, v, None, 1.0, 0.0, {}, empty) is empty


def test_fraction_sizes_grow_with_keys_and_zero_budget_selects_nothing():
    masker = ResearchMasker.create_masker_from_config(OracleTopKConfig(0.1))
    q = torch.randn(1, 1, 1, 4)
    for sk, want in ((50, 5), (100, 10), (9, 0)):
        k = torch.randn(1, 1, sk, 4)
        empty = Mask.create_empty_mask((1, 1, 1, sk), dtype=torch.float32, device="cpu")
        m = masker.add_mask(k, q, k, None, 1.0, 0.0, {}, empty)
        assert int((m.get_rows()[1] > 0).sum()) == want
    # 0.29 * 100 truncates to 28 (double multiply, as the reference).
    assert ResearchMasker._calculate_effective_size(0.29, 100) == 28


def test_config_validation_messages():
    with pytest.raises(ValueError, match="window_size must be > 0, got 0"):
        LocalMaskerConfig(0)
    with pytest.raises(ValueError, match="sink_size must be > 0, got -1"):
        SinkMaskerConfig(-1)
    with pytest.raises(ValueError, match="heavy_size must be > 0, got 0"):
        OracleTopKConfig(0)
    with pytest.raises(ValueError, match=r"top_p must be in range \[0, 1\], got 1.5"):
        OracleTopPMaskerConfig(1.5)
    assert OracleTopPMaskerConfig(0).top_p == 0 and OracleTopPMaskerConfig(1).top_p == 1
    with pytest.raises(ValueError, match="Invalid config type"):
        LocalMasker.create_from_config(SinkMaskerConfig(2))
    with pytest.raises(TypeError, match="Expected ResearchAttentionConfig"):
        ResearchAttention.create_from_config(LocalMaskerConfig(2))


def test_registry_accepts_config_subclasses_but_not_framework_bases():
    @dataclasses.dataclass
    class MyTopK(OracleTopKConfig):
        note: str = "mine"

    masker = ResearchMasker.create_masker_from_config(MyTopK(heavy_size=3))
    assert type(masker) is OracleTopK and masker.config.note == "mine"
    with pytest.raises(ValueError, match="No masker class registered for config type"):
        ResearchMasker.create_masker_from_config(TopKMaskerConfig(heavy_size=3))
    assert MaskerRegistry.get_masker_class(LocalMaskerConfig) is LocalMasker


def test_at_most_one_sampling_masker():
    class Dummy(SamplingMasker):
        def add_mask(self, *args, previous_mask=None, **kwargs):
            return previous_mask

        @classmethod
        def create_from_config(cls, config):
            return cls(config)

    with pytest.raises(ValueError, match="Only one sampling masker supported"):
        ResearchAttention(ResearchAttentionConfig([]), [Dummy(None), Dummy(None)])
    assert len(ResearchAttention(ResearchAttentionConfig([]), [Dummy(None)]).maskers) == 1


def test_no_maskers_is_dense_attention_and_module_none():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 4, 2, 8, generator=gen),
        torch.randn(1, 2, 9, 8, generator=gen),
        torch.randn(1, 2, 9, 8, generator=gen),
    )
    additive, _ = causal_additive(1, 2, 9)
    out, _ = ResearchAttention(ResearchAttentionConfig([]), []).custom_attention(
        None, q, k, v, additive, 0.5, 0.0, sparse_meta_data={}
    )
    torch.testing.assert_close(
        out.double(), ref_masked_attention(q, k, v, additive, 0.5), atol=1e-5, rtol=1e-5
    )


def test_input_mask_is_not_mutated():
    """Decision D5: maskers never write into the previous mask or the caller's tensors."""
    dense = torch.zeros(1, 1, 1, 20)
    dense[..., 15] = 0.5
    prev = Mask.create_mask_from_dense_mask((1, 1, 1, 20), dense, dtype=torch.float32)
    before = prev.get_dense_mask().clone()
    q, k = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 20, 4)
    for cfg in (SinkMaskerConfig(2), LocalMaskerConfig(3), OracleTopKConfig(2)):
        out = ResearchMasker.create_masker_from_config(cfg).add_mask(
            k, q, k, None, 1.0, 0.0, {}, prev
        )
        assert torch.equal(prev.get_dense_mask(), before)
        assert out.get_dense_mask()[0, 0, 0, 15] == 0.5
    assert torch.equal(dense, before)


# ----------------------------------------------------------------------------------------------
def test_compiled_decode_loop_recompiles_at_most_twice(device):
    """A 64-step decode loop with a growing KV cache: one compiled graph (dynamic key length),
    at most 2 compilations, same outputs as eager."""
    torch._dynamo.reset()
    configs = [SinkMaskerConfig(4), LocalMaskerConfig(16), OracleTopKConfig(0.05)]
    attention = ResearchAttention.create_from_config(ResearchAttentionConfig(configs))

    def step(q, k, v, mask):
        return attention.custom_attention(None, q, k, v, mask, 0.25, 0.0, sparse_meta_data={})[0]

    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(4)
    k = torch.randn(1, 2, 64, 16, generator=gen).to(device)
    v = torch.randn(1, 2, 64, 16, generator=gen).to(device)
    for _ in range(64):
        q = torch.randn(1, 4, 1, 16, generator=gen).to(device)
        k = torch.cat([k, torch.randn(1, 2, 1, 16, generator=gen).to(device)], dim=2)
        v = torch.cat([v, torch.randn(1, 2, 1, 16, generator=gen).to(device)], dim=2)
        mask = torch.zeros(1, 1, 1, k.shape[2], device=device)
        torch.testing.assert_close(compiled(q, k, v, mask), step(q, k, v, mask))
    assert counter.frame_count <= 2, f"{counter.frame_count} compilations"
