"""Tests of the sampling maskers (random sampling, adaptive sampling / vAttention, MagicPig):
the ops against a plain-Python/PyTorch transcription of their documented algorithms, and the
statistics that make them correct estimators (true inclusion probabilities, unbiased sums, the
adaptive error bound).
"""

import math
import re

import pytest
import torch
from reference import causal_additive

from sparse_attention_hub import ops
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers import (
    MaskerRegistry,
    ResearchMasker,
    sampling,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMaskerConfig,
    SinkMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.sampling import (
    MagicPig,
    MagicPigConfig,
    RandomSamplingMasker,
    RandomSamplingMaskerConfig,
    SamplingMasker,
    implementations,
)
from sparse_attention_hub.sparse_attention.utils import Mask

# AdaptiveSampling is exported from `sampling.implementations` only, as upstream.
AdaptiveSamplingMasker = implementations.AdaptiveSamplingMasker
AdaptiveSamplingMaskerConfig = implementations.AdaptiveSamplingMaskerConfig
MagicPigLayerState = implementations.MagicPigLayerState

# ----------------------------------------------------------------------------------------------
# Reference: the counter-based generator and the three algorithms, transcribed from the docs.

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
RANDOM, ADAPTIVE_BASE, ADAPTIVE_BUDGET, LSH_PROJECTIONS = 1, 2, 3, 4


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def counter_hash(key, counter):
    return mix64(key ^ mix64((counter + GOLDEN) & M64))


def stream_key(seed, layer, stream):
    return counter_hash(counter_hash(counter_hash(0, seed & M64), layer & M64), stream)


def row_key(stream, b, h, pos):
    return counter_hash(counter_hash(counter_hash(stream, b), h), pos)


def bottom_n(row, candidates, n):
    """The n candidates of smallest priority counter_hash(row, j), ascending."""
    return sorted(sorted(candidates, key=lambda j: (counter_hash(row, j), j))[:n])


def ref_projections(rows, cols, seed, layer):
    stream = stream_key(seed, layer, LSH_PROJECTIONS)

    def normal(t):
        u1 = ((counter_hash(stream, 2 * t) >> 12) + 0.5) / 2.0**52
        u2 = ((counter_hash(stream, 2 * t + 1) >> 12) + 0.5) / 2.0**52
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    return torch.tensor([normal(t) for t in range(rows * cols)]).view(rows, cols).float()


def candidates(prev, allowed, b, h, i, lo=0, hi=None):
    """Keys of row (b, h, i) the query may see and the previous (dense) mask does not hold."""
    hi = allowed.shape[-1] if hi is None else hi
    return [j for j in range(lo, hi) if allowed[i, j] and prev[b, h, i, j] == 0]


def ref_random(prev, allowed, n, seed, layer):
    """Dense mask of the random sampling op: n of the m candidates, each with p = n / m."""
    b_, h_, sq, sk = prev.shape
    out = prev.clone()
    stream = stream_key(seed, layer, RANDOM)
    for b in range(b_):
        for h in range(h_):
            for i in range(sq):
                cand = candidates(prev, allowed, b, h, i)
                if cand:
                    take = min(n, len(cand))
                    for j in bottom_n(row_key(stream, b, h, sk - sq + i), cand, take):
                        out[b, h, i, j] = take / len(cand)
    return out


def ref_adaptive(q, k, additive, prev, allowed, scale, nb, eps, z, start, end, seed, layer):
    """Dense mask of the adaptive sampling op (float64 statistics)."""
    b_, h_, sq, sk = prev.shape
    g = h_ // k.shape[1]
    s = scale * (q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2))
    s = s + additive.double()
    out = prev.clone()
    for b in range(b_):
        for h in range(h_):
            for i in range(sq):
                pos = sk - sq + i
                cand = candidates(prev, allowed, b, h, i, start, end)
                m = len(cand)
                if m == 0:
                    continue
                budget = m
                if min(nb, m) < m:
                    base = bottom_n(
                        row_key(stream_key(seed, layer, ADAPTIVE_BASE), b, h, pos), cand, nb
                    )
                    held = prev[b, h, i].nonzero().flatten().tolist()
                    logits = s[b, h, i]
                    c = logits[held + base].max()
                    e = torch.exp(logits - c)
                    static = sum(float(e[j]) / float(prev[b, h, i, j]) for j in held)
                    eb = e[base]
                    sigma = max(float(eb.std()), 1e-8)
                    den = static + m / nb * float(eb.sum())
                    x = z * sigma * m / max(eps * den, 1e-8)
                    budget = max(int(min(max(x * x, 1.0), m)), nb)
                row = row_key(stream_key(seed, layer, ADAPTIVE_BUDGET), b, h, pos)
                for j in bottom_n(row, cand, budget):
                    out[b, h, i, j] = budget / m
    return out


def ref_signatures(x, aug, proj, lsh_l, lsh_k):
    """Packed int32 signatures of rows x (..., d) with augmentation aug (...,)."""
    acc = x.double() @ proj[:-1].double() + aug.double()[..., None] * proj[-1].double()
    bits = (acc > 0).long().view(*x.shape[:-1], lsh_l, lsh_k)
    slot = 1 << (lsh_k - 1).bit_length() if lsh_k <= 32 else 32 * -(-lsh_k // 32)
    words = torch.zeros(*x.shape[:-1], -(-lsh_l * slot // 32), dtype=torch.long)
    for t in range(lsh_l):
        for c in range(lsh_k):
            bit = t * slot + c
            words[..., bit // 32] |= bits[..., t, c] << (bit % 32)
    return torch.where(words >= 2**31, words - 2**32, words).int()


def ref_collision(cos, lsh_k, lsh_l):
    theta = torch.arccos(cos.clamp(-1, 1))
    return 1 - (1 - (1 - theta / math.pi) ** lsh_k) ** lsh_l


def ref_magicpig(q, k, prev, allowed, mean, bound, proj, lsh_l, lsh_k):
    """Dense mask of the MagicPig op given the layer state (mean, bound, projections)."""
    g = q.shape[1] // k.shape[1]
    x = k.double() - mean.double()[:, :, None]
    xn = x.norm(dim=-1)
    aug = (bound.double()[:, :, None] ** 2 - xn**2).clamp_min(0).sqrt()
    ksig = ref_signatures(x, aug, proj, lsh_l, lsh_k).repeat_interleave(g, 1)
    y = q.double() - mean.double().repeat_interleave(g, 1)[:, :, None]
    qsig = ref_signatures(y, torch.zeros(y.shape[:-1]), proj, lsh_l, lsh_k)
    slot = 1 << (lsh_k - 1).bit_length() if lsh_k <= 32 else 32 * -(-lsh_k // 32)
    diff = (qsig[:, :, :, None].long() ^ ksig[:, :, None].long()) & 0xFFFFFFFF
    match = torch.zeros(diff.shape[:-1], dtype=torch.bool)
    for t in range(lsh_l):
        first = t * slot
        if slot >= 32:
            match |= (diff[..., first // 32 : (first + slot) // 32] == 0).all(-1)
        else:
            match |= ((diff[..., first // 32] >> (first % 32)) & ((1 << slot) - 1)) == 0
    xg, xng = x.repeat_interleave(g, 1), xn.repeat_interleave(g, 1)
    denom = y.norm(dim=-1)[..., None] * torch.maximum(
        bound.double().repeat_interleave(g, 1)[:, :, None, None], xng[:, :, None]
    )
    cos = torch.where(denom > 0, (y @ xg.transpose(-1, -2)) / denom, torch.zeros(()))
    p = ref_collision(cos, lsh_k, lsh_l).float()
    new = match & allowed & (prev == 0) & (p > 0)
    return torch.where(new, p, prev)


# ----------------------------------------------------------------------------------------------
# Helpers


def to_rows(dense):
    return ops.dense_to_rows(dense.float().contiguous())


def empty_rows(b, h, sq, device="cpu"):
    e = torch.empty(b, h, sq, 0, dtype=torch.int32, device=device)
    return e, e.float()


def dense(idx, p, sk):
    return ops.rows_to_dense(idx.cpu(), p.cpu(), sk)


def sink_local_prev(b, h, sq, sk, sink=2, window=3):
    """A previous mask of sink + local keys (p = 1) under the causal rule."""
    pos = sk - sq + torch.arange(sq)
    j = torch.arange(sk)
    keep = (j[None, :] < sink) | (
        (j[None, :] > pos[:, None] - window) & (j[None, :] <= pos[:, None])
    )
    keep &= j[None, :] <= pos[:, None]
    return keep.float().expand(b, h, sq, sk).clone()


def magicpig_state(k, lsh_l, lsh_k, center=True, seed=42, layer=0):
    state = MagicPigLayerState.create(k, lsh_l, lsh_k, center, seed, layer)
    state.reserve(k.shape[2])
    return state


def run_magicpig(q, k, prev_rows, additive, state, lsh_l, lsh_k):
    return torch.ops.sah.magicpig_mask(
        q,
        k,
        *prev_rows,
        additive,
        state.projections,
        state.key_mean,
        state.key_norm_bound,
        state.key_signatures,
        state.num_keys,
        lsh_l,
        lsh_k,
    )


# ----------------------------------------------------------------------------------------------
# Random sampling


@pytest.mark.parametrize("sq,sk,n", [(1, 40, 7), (4, 23, 5), (3, 12, 20)])
@pytest.mark.parametrize("with_prev", [False, True])
def test_random_sampling_matches_reference(device, sq, sk, n, with_prev):
    b, h = 2, 3
    additive, allowed = causal_additive(b, sq, sk)
    prev = sink_local_prev(b, h, sq, sk) if with_prev else torch.zeros(b, h, sq, sk)
    pi, pp = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    idx, p = torch.ops.sah.random_sampling_mask(
        pi.to(device), pp.to(device), additive.to(device), sk, n, 1234, 5
    )
    assert idx.shape[-1] == min(pi.shape[-1] + n, sk)
    torch.testing.assert_close(dense(idx, p, sk), ref_random(prev, allowed, n, 1234, 5))
    # Without an attention mask the causal rule still holds.
    idx2, p2 = torch.ops.sah.random_sampling_mask(
        pi.to(device), pp.to(device), None, sk, n, 1234, 5
    )
    assert torch.equal(idx2, idx) and torch.equal(p2, p)


def test_random_sampling_inclusion_frequency_equals_probability(device):
    """Over many seeds, each candidate key is included with exactly its recorded probability."""
    b, h, sq, sk, n, seeds = 4, 1, 3, 24, 5, 400
    additive, allowed = causal_additive(b, sq, sk)
    prev = sink_local_prev(b, h, sq, sk)
    pi, pp = (t.to(device) for t in to_rows(prev))
    additive = additive.to(device)
    counts = torch.zeros(b, h, sq, sk)
    recorded = None
    for seed in range(seeds):
        idx, p = torch.ops.sah.random_sampling_mask(pi, pp, additive, sk, n, seed, 0)
        d = dense(idx, p, sk)
        new = (d > 0) & (prev == 0)
        counts += new
        probs = torch.where(new, d, torch.zeros(()))
        recorded = probs if recorded is None else torch.maximum(recorded, probs)
    trials = seeds
    cand = (prev == 0) & allowed
    m = cand.sum(-1, keepdim=True).float()
    p_true = torch.where(cand, (n / m).clamp(max=1.0), torch.zeros(()))
    torch.testing.assert_close(recorded, p_true)  # recorded p = n / m on every candidate
    sel = cand & (p_true < 1)
    z = (counts[sel] - trials * p_true[sel]) / torch.sqrt(trials * p_true[sel] * (1 - p_true[sel]))
    assert z.abs().max() < 5.0
    assert 0.6 < (z**2).mean() < 1.5  # chi-square per cell ~ 1
    assert (counts[~cand] == 0).all()


def test_random_sampling_sums_are_unbiased():
    """The 1/p-weighted numerator and denominator of attention are unbiased; the output, their
    ratio, is biased by O(1/n) only: its mean over seeds approaches dense attention as n grows."""
    torch.manual_seed(0)
    b, h, sq, sk, d, scale = 1, 2, 2, 48, 8, 0.5
    q, k, v = torch.randn(b, h, sq, d), torch.randn(b, 1, sk, d), torch.randn(b, 1, sk, d)
    additive, _ = causal_additive(b, sq, sk)
    pi, pp = to_rows(sink_local_prev(b, h, sq, sk))
    s = scale * (q.double() @ k.double().transpose(-1, -2)) + additive.double()
    true_den = torch.exp(s).sum(-1)
    true_num = torch.exp(s) @ v.double()
    bias = []
    for n in (6, 24, 36):
        dens, nums, outs = [], [], []
        for seed in range(2000):
            idx, p = torch.ops.sah.random_sampling_mask(pi, pp, additive, sk, n, seed, 0)
            out, lse = ops.sparse_attention(q, k, v, idx, p, scale, additive)
            den = torch.exp(lse.double())
            dens.append(den)
            nums.append(out.double() * den[..., None])
            outs.append(out.double())
        for est, true in ((torch.stack(dens), true_den), (torch.stack(nums), true_num)):
            se = est.std(0) / math.sqrt(est.shape[0])
            assert ((est.mean(0) - true).abs() <= 4.5 * se + 1e-9).all()
        bias.append(float((torch.stack(outs).mean(0) - true_num / true_den[..., None]).abs().max()))
    assert bias[0] > bias[1] > bias[2] and bias[2] < 0.02


def test_random_sampling_masker_density_and_seeds():
    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 200, 8)
    prev = Mask.create_empty_mask((2, 4, 3, 200), torch.float32, torch.device("cpu"))
    masker = RandomSamplingMasker(RandomSamplingMaskerConfig(sampling_rate=0.25, seed=7))
    out = masker.add_mask(k, q, k, None, 0.3, 0.0, None, prev)
    assert out.get_density() == pytest.approx(0.25)  # exactly n = 50 keys per row
    again = masker.add_mask(k, q, k, None, 0.3, 0.0, None, prev)
    assert torch.equal(again.get_rows()[0], out.get_rows()[0])
    other = RandomSamplingMasker(RandomSamplingMaskerConfig(0.25, seed=8))
    assert not torch.equal(
        other.add_mask(k, q, k, None, 0.3, 0.0, None, prev).get_rows()[0], out.get_rows()[0]
    )
    layer1 = masker.add_mask(k, q, k, None, 0.3, 0.0, None, prev, layer_idx=1)
    assert not torch.equal(layer1.get_rows()[0], out.get_rows()[0])
    # seed=None draws the seed from torch's default generator.
    unseeded = RandomSamplingMasker(RandomSamplingMaskerConfig(0.25))
    torch.manual_seed(3)
    first = unseeded.add_mask(k, q, k, None, 0.3, 0.0, None, prev).get_rows()[0]
    second = unseeded.add_mask(k, q, k, None, 0.3, 0.0, None, prev).get_rows()[0]
    torch.manual_seed(3)
    assert torch.equal(unseeded.add_mask(k, q, k, None, 0.3, 0.0, None, prev).get_rows()[0], first)
    assert not torch.equal(first, second)
    full = Mask.create_full_mask((2, 4, 3, 200), torch.float32, torch.device("cpu"))
    assert masker.add_mask(k, q, k, None, 0.3, 0.0, None, full) is full


def test_padding_mask_keys_are_never_sampled(device):
    """A 2-D padding mask (False = padded key) removes keys from every sampler's candidates."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(2, 2, 1, 8, generator=gen).to(device)
    k = torch.randn(2, 2, 40, 8, generator=gen).to(device)
    padding = torch.ones(2, 40, dtype=torch.bool)
    padding[0, :15] = False  # left padding of batch row 0
    prev = Mask.create_empty_mask((2, 2, 1, 40), torch.float32, torch.device(device))
    for masker in (
        RandomSamplingMasker(RandomSamplingMaskerConfig(0.9, seed=1)),
        MagicPig(MagicPigConfig(2, 1)),
        AdaptiveSamplingMasker(AdaptiveSamplingMaskerConfig(4, 0.05, 0.05, 0, 0, seed=1)),
    ):
        out = masker.add_mask(k, q, k, padding.to(device), 0.3, 0.0, {}, prev, layer_idx=0)
        got = out.get_dense_mask().cpu()
        assert (got[0, :, :, :15] == 0).all() and (got[1] > 0).any()


def test_zero_budgets_select_nothing(device):
    pi, pp = (t.to(device) for t in to_rows(sink_local_prev(1, 2, 2, 10)))
    idx, p = torch.ops.sah.random_sampling_mask(pi, pp, None, 10, 0, 0, 0)
    assert torch.equal(idx, pi) and torch.equal(p, pp)
    prev = Mask.create_empty_mask((1, 2, 2, 10), torch.float32, torch.device(device))
    q, k = torch.randn(1, 2, 2, 4, device=device), torch.randn(1, 2, 10, 4, device=device)
    out = RandomSamplingMasker(RandomSamplingMaskerConfig(0.05)).add_mask(
        k, q, k, None, 1.0, 0.0, None, prev
    )
    assert out.get_density() == 0.0  # int(0.05 * 10) = 0 keys: nothing, no error
    adaptive = AdaptiveSamplingMasker(AdaptiveSamplingMaskerConfig(0, 0.1, 0.1, 0, 0))
    assert adaptive.add_mask(k, q, k, None, 1.0, 0.0, None, prev) is prev


# ----------------------------------------------------------------------------------------------
# Adaptive sampling


@pytest.mark.parametrize("sq,sk", [(1, 60), (3, 41)])
@pytest.mark.parametrize("h,hkv", [(2, 2), (4, 2)])
@pytest.mark.parametrize("with_prev", [False, True])
def test_adaptive_sampling_matches_reference(device, sq, sk, h, hkv, with_prev):
    gen = torch.Generator().manual_seed(sq * 100 + sk + h)
    b, d, scale, eps, z = 2, 8, 0.4, 0.2, 1.2815515655446004
    q, k = torch.randn(b, h, sq, d, generator=gen), torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = causal_additive(b, sq, sk)
    prev = sink_local_prev(b, h, sq, sk) if with_prev else torch.zeros(b, h, sq, sk)
    if with_prev:
        prev[..., 10] = 0.5  # a sampled previous entry, counted with weight 2
    pi, pp = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    start, end, nb = 2, sk - 3, 4
    idx, p = torch.ops.sah.adaptive_sampling_mask(
        q.to(device),
        k.to(device),
        pi.to(device),
        pp.to(device),
        additive.to(device),
        scale,
        nb,
        eps,
        z,
        start,
        end,
        99,
        3,
    )
    assert idx.shape[-1] == min(pi.shape[-1] + end - start, sk)
    want = ref_adaptive(q, k, additive, prev, allowed, scale, nb, eps, z, start, end, 99, 3)
    torch.testing.assert_close(dense(idx, p, sk), want.float())


def test_adaptive_sampling_error_bound():
    """With z = Phi^-1(1 - delta) (the reference's choice) each tail of the relative error of the
    denominator estimate, below -epsilon and above +epsilon, has probability about delta."""
    gen = torch.Generator().manual_seed(0)
    b, h, sk, d, eps, delta = 8, 8, 512, 16, 0.1, 0.1
    q, k, v = (
        torch.randn(b, h, 1, d, generator=gen),
        torch.randn(b, h, sk, d, generator=gen),
        torch.randn(b, h, sk, d, generator=gen),
    )
    scale = 1.0 / math.sqrt(d)
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [
                SinkMaskerConfig(8),
                LocalMaskerConfig(8),
                AdaptiveSamplingMaskerConfig(0.1, eps, delta, 8, 8, seed=None),
            ]
        )
    )
    true_den = torch.exp(scale * (q.double() @ k.double().transpose(-1, -2))).sum(-1)
    torch.manual_seed(1)
    rel, density = [], 0.0
    for _ in range(32):
        mask = attention.compute_mask(q, k, v, None, scale, 0.0, {})
        _, lse = ops.sparse_attention(q, k, v, *mask.get_rows(), scale)
        rel.append(torch.exp(lse.double()) / true_den - 1)
        density += mask.get_density() / 32
    rel = torch.cat(rel).flatten()
    slack = 3 * math.sqrt(delta * (1 - delta) / rel.numel())
    assert (rel > eps).double().mean() <= delta + slack
    assert (rel < -eps).double().mean() <= delta + slack
    assert density < 0.7  # it did sample


def test_adaptive_sampling_masker_paths_and_seeds():
    q, k = torch.randn(1, 2, 2, 8), torch.randn(1, 2, 64, 8)
    empty = Mask.create_empty_mask((1, 2, 2, 64), torch.float32, torch.device("cpu"))
    full = Mask.create_full_mask((1, 2, 2, 64), torch.float32, torch.device("cpu"))
    cfg = AdaptiveSamplingMaskerConfig(0.1, 0.1, 0.1, 0.25, 0.25, seed=5)
    masker = AdaptiveSamplingMasker.create_from_config(cfg)
    assert masker.add_mask(k, q, k, None, 0.3, 0.0, None, full) is full
    assert masker.delta_ppf == pytest.approx(1.2815515655446004)
    assert masker._get_sampling_range(64) == (16, 48, 32)
    assert masker._get_base_sample_count(32) == 3
    assert (
        AdaptiveSamplingMasker(
            AdaptiveSamplingMaskerConfig(1, 0.1, 0.1, 0, 0)
        )._get_base_sample_count(32)
        == 2
    )
    a = masker.add_mask(k, q, k, None, 0.3, 0.0, None, empty).get_dense_mask()
    b = masker.add_mask(k, q, k, None, 0.3, 0.0, None, empty).get_dense_mask()
    assert torch.equal(a, b)
    assert (a[..., :16] == 0).all() and (a[..., 48:] == 0).all()
    other = AdaptiveSamplingMasker(AdaptiveSamplingMaskerConfig(0.1, 0.1, 0.1, 0.25, 0.25, seed=6))
    assert not torch.equal(other.add_mask(k, q, k, None, 0.3, 0.0, None, empty).get_dense_mask(), a)
    short = AdaptiveSamplingMasker(AdaptiveSamplingMaskerConfig(0.1, 0.1, 0.1, 32, 31))
    assert short.add_mask(k, q, k, None, 0.3, 0.0, None, empty).is_full_mask()  # range 1 < 2
    # A range the previous mask already covers leaves nothing to sample.
    prev = Mask.create_from_rows(
        (1, 2, 2, 64),
        torch.arange(64, dtype=torch.int32).expand(1, 2, 2, 64),
        torch.ones(1, 2, 2, 64),
    )
    covered = masker.add_mask(k, q, k, None, 0.3, 0.0, None, prev)
    assert torch.equal(covered.get_dense_mask(), torch.ones(1, 2, 2, 64))


# ----------------------------------------------------------------------------------------------
# MagicPig


def test_lsh_projections_match_reference():
    out = torch.empty(5, 6)
    torch.ops.sah.fill_lsh_projections(out, 42, 3)
    torch.testing.assert_close(out, ref_projections(5, 6, 42, 3), rtol=1e-6, atol=1e-7)
    other = torch.empty(5, 6)
    torch.ops.sah.fill_lsh_projections(other, 42, 4)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("lsh_l,lsh_k", [(6, 3), (4, 8), (3, 32), (2, 40)])
@pytest.mark.parametrize("h,hkv,sq,sk", [(2, 2, 1, 50), (4, 2, 3, 37)])
@pytest.mark.parametrize("with_prev", [False, True])
def test_magicpig_matches_reference(device, lsh_l, lsh_k, h, hkv, sq, sk, with_prev):
    gen = torch.Generator().manual_seed(lsh_l * 100 + lsh_k + sk)
    b, d = 2, 8
    q, k = torch.randn(b, h, sq, d, generator=gen), torch.randn(b, hkv, sk, d, generator=gen)
    additive, allowed = causal_additive(b, sq, sk)
    prev = sink_local_prev(b, h, sq, sk) if with_prev else torch.zeros(b, h, sq, sk)
    rows = to_rows(prev) if with_prev else empty_rows(b, h, sq)
    state = magicpig_state(k[:, :, :20].to(device), lsh_l, lsh_k)
    idx, p = run_magicpig(
        q.to(device),
        k.to(device),
        [t.to(device) for t in rows],
        additive.to(device),
        state,
        lsh_l,
        lsh_k,
    )
    assert idx.shape[-1] == sk
    want = ref_magicpig(
        q,
        k,
        prev,
        allowed,
        state.key_mean.cpu(),
        state.key_norm_bound.cpu(),
        state.projections.cpu(),
        lsh_l,
        lsh_k,
    )
    torch.testing.assert_close(dense(idx, p, sk), want, rtol=1e-5, atol=1e-6)
    x = k.double() - state.key_mean.cpu().double()[:, :, None]
    aug = (
        (state.key_norm_bound.cpu().double()[:, :, None] ** 2 - x.norm(dim=-1) ** 2)
        .clamp_min(0)
        .sqrt()
    )
    sigs = ref_signatures(x, aug, state.projections.cpu(), lsh_l, lsh_k)
    assert torch.equal(state.key_signatures[:, :, :sk].cpu(), sigs)


def test_magicpig_collision_probability_formula():
    """A parallel pair collides in every table (p = 1); an antiparallel pair never (p ~ 0)."""
    cos = torch.tensor([1.0, 0.5, 0.0, -1.0], dtype=torch.float64)
    p = ref_collision(cos, 4, 8)
    assert p[0] == 1.0 and p[-1] == 0.0
    assert p[1] == pytest.approx(1 - (1 - (2 / 3) ** 4) ** 8)
    k = torch.tensor([[1.0, 2.0, -1.0, 0.5]]).view(1, 1, 1, 4)
    q = torch.cat([3 * k, -2 * k], dim=1)  # two query heads sharing the kv head
    state = MagicPigLayerState.create(k, 8, 4, False, 42, 0)
    state.reserve(1)
    idx, p = run_magicpig(q, k, empty_rows(1, 2, 1), None, state, 8, 4)
    assert idx.tolist() == [[[[0]], [[-1]]]]
    assert p[0, 0, 0, 0] == pytest.approx(
        float(ref_collision(torch.tensor(1 / (1 + 2**-10)), 4, 8))
    )
    assert p[0, 0, 0, 0] > 0.999999


def test_magicpig_incremental_signatures_equal_recomputation():
    """Signatures cached over several calls equal those of all keys computed at once."""
    gen = torch.Generator().manual_seed(3)
    b, h, hkv, d, lsh_l, lsh_k = 2, 4, 2, 8, 5, 6
    k = torch.randn(b, hkv, 40, d, generator=gen)
    masker = MagicPig(MagicPigConfig(lsh_l=lsh_l, lsh_k=lsh_k))
    smd = {}
    masks = []
    for n in (20, 21, 22, 30, 30, 40):
        q = torch.randn(b, h, 1, d, generator=gen)
        prev = Mask.create_empty_mask((b, h, 1, n), torch.float32, torch.device("cpu"))
        masks.append(
            (q, n, masker.add_mask(k[:, :, :n], q, None, None, 0.3, 0.0, smd, prev, layer_idx=2))
        )
    state = smd["magic_pig"][2]
    assert state.num_keys == 40 and torch.equal(state.last_key, k[:, :, 39])
    fresh = MagicPigLayerState.create(k[:, :, :20], lsh_l, lsh_k, True, 42, 2)
    fresh.reserve(40)
    for q, n, mask in masks:
        idx, p = run_magicpig(q, k[:, :, :n], empty_rows(b, h, 1), None, fresh, lsh_l, lsh_k)
        assert torch.equal(idx, mask.get_rows()[0]) and torch.equal(p, mask.get_rows()[1])
    assert torch.equal(fresh.key_signatures[:, :, :40], state.key_signatures[:, :, :40])
    assert smd["projections"][2].shape == (d + 1, lsh_l * lsh_k)
    assert smd["key_mean"][2].shape == (b, h, 1, d)
    torch.testing.assert_close(smd["key_mean"][2][:, ::2, 0], k[:, :, :20].mean(2))


def test_magicpig_stale_state_is_detected():
    gen = torch.Generator().manual_seed(4)
    k, q = torch.randn(1, 2, 30, 8, generator=gen), torch.randn(1, 2, 1, 8, generator=gen)
    masker = MagicPig(MagicPigConfig(lsh_l=4, lsh_k=4))

    def call(keys, smd, queries=q):
        prev = Mask.create_empty_mask(
            (keys.shape[0], 2, 1, keys.shape[2]), torch.float32, torch.device("cpu")
        )
        return masker.add_mask(keys, queries, None, None, 0.3, 0.0, smd, prev, layer_idx=0)

    smd = {}
    call(k[:, :, :20], smd)
    call(k[:, :, :25], smd)  # a continuation
    with pytest.raises(
        ValueError,
        match=re.escape("Current number of keys (24) is less than cached number of keys (25)"),
    ):
        call(k[:, :, :24], smd)
    with pytest.raises(RuntimeError, match="belongs to another sequence"):
        call(torch.randn(1, 2, 30, 8, generator=gen), smd)  # same length, other keys
    with pytest.raises(ValueError, match="belongs to keys of"):
        call(k.expand(2, 2, 30, 8), smd, q.expand(2, 2, 1, 8))  # batch size changed
    with pytest.raises(ValueError, match="for \\(lsh_l, lsh_k, center, seed\\)"):
        MagicPig(MagicPigConfig(lsh_l=5, lsh_k=4)).add_mask(
            k,
            q,
            None,
            None,
            0.3,
            0.0,
            smd,
            Mask.create_empty_mask((1, 2, 1, 30), torch.float32, torch.device("cpu")),
            layer_idx=0,
        )
    with pytest.raises(ValueError, match="sparse_meta_data cannot be None"):
        call(k, None)
    prev = Mask.create_empty_mask((1, 2, 1, 30), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="layer_idx must be provided in kwargs"):
        masker.add_mask(k, q, None, None, 0.3, 0.0, {}, prev)


def test_magicpig_seeds_packing_and_centering():
    gen = torch.Generator().manual_seed(5)
    k, q = torch.randn(1, 2, 64, 16, generator=gen), torch.randn(1, 2, 2, 16, generator=gen)
    prev = Mask.create_empty_mask((1, 2, 2, 64), torch.float32, torch.device("cpu"))

    def mask(**cfg):
        smd = {}
        m = MagicPig(MagicPigConfig(lsh_l=8, lsh_k=3, **cfg)).add_mask(
            k, q, None, None, 0.3, 0.0, smd, prev, layer_idx=1
        )
        return m.get_dense_mask(), smd

    a, smd = mask(seed=1)
    assert torch.equal(a, mask(seed=1)[0]) and not torch.equal(a, mask(seed=2)[0])
    assert torch.equal(a, mask(seed=1, packing="float32")[0])
    assert mask(seed=1, center=False)[1]["key_mean"][1] is None
    assert a.sum() > 0 and a.max() <= 1.0
    torch.manual_seed(0)
    b, smd_none = mask(seed=None)
    torch.manual_seed(0)
    assert torch.equal(b, mask(seed=None)[0])
    assert smd_none["magic_pig"][1].seed != 42


# ----------------------------------------------------------------------------------------------
# Configs, registry, chain, opcheck, compile


def test_config_validation_messages():
    with pytest.raises(
        ValueError, match=re.escape("sampling_rate must be in range (0, 1], got 0.0")
    ):
        RandomSamplingMaskerConfig(0.0)
    with pytest.raises(
        ValueError, match=re.escape("sampling_rate must be in range (0, 1], got 1.5")
    ):
        RandomSamplingMaskerConfig(1.5)
    with pytest.raises(ValueError, match=re.escape("seed must be an int in [-2**63, 2**63) or")):
        RandomSamplingMaskerConfig(0.5, seed=1.5)
    with pytest.raises(ValueError, match="seed must be an int"):
        AdaptiveSamplingMaskerConfig(0.1, 0.1, 0.1, 0, 0, seed=2**63)
    for kwargs, msg in [
        (dict(lsh_l=0, lsh_k=2), "lsh_l must be positive"),
        (dict(lsh_l=2, lsh_k=0), "lsh_k must be positive"),
        (dict(lsh_l=2, lsh_k=2, packing="int8"), "packing must be 'int64' or 'float32'"),
        (dict(lsh_l=1, lsh_k=65), "For 'int64' packing, lsh_k must be <= 64"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            MagicPigConfig(**kwargs)
    assert MagicPigConfig(lsh_l=1, lsh_k=65, packing="float32").seed == 42
    base = dict(base_rate_sampling=0.1, epsilon=0.1, delta=0.1, init_offset=0, local_offset=0)
    for change, msg in [
        (dict(base_rate_sampling=1.0), "base_rate_sampling must be in [0, 1) if float"),
        (dict(base_rate_sampling=-1), "base_rate_sampling must be non-negative if int"),
        (dict(base_rate_sampling="x"), "base_rate_sampling must be int or float"),
        (dict(epsilon=0.0), "epsilon must be in (0, 1)"),
        (dict(delta=1.0), "delta must be in (0, 1)"),
        (dict(init_offset=-1), "init_offset must be non-negative if int"),
        (dict(init_offset=1.5), "init_offset must be in [0, 1] if float"),
        (dict(local_offset=None), "local_offset must be int or float"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            AdaptiveSamplingMaskerConfig(**{**base, **change})
    cfg = AdaptiveSamplingMaskerConfig(**base)
    assert cfg.search_space["epsilon"] == {"grid_search": [0.05, 0.1, 0.2, 0.3]}
    assert MagicPigConfig(4, 4).search_space["lsh_k"] == {"grid_search": [4, 8, 16, 32]}


def test_registry_and_chain_rules():
    for cfg, cls in [
        (RandomSamplingMaskerConfig(0.1), RandomSamplingMasker),
        (MagicPigConfig(4, 4), MagicPig),
        (AdaptiveSamplingMaskerConfig(0.1, 0.1, 0.1, 0, 0), AdaptiveSamplingMasker),
    ]:
        masker = ResearchMasker.create_masker_from_config(cfg)
        assert type(masker) is cls and masker.config == cfg and isinstance(masker, SamplingMasker)
        assert MaskerRegistry.get_masker_class(type(cfg)) is cls
    with pytest.raises(ValueError, match="Invalid config type"):
        MagicPig.create_from_config(RandomSamplingMaskerConfig(0.1))
    assert not hasattr(sampling, "AdaptiveSamplingMasker")  # as upstream: implementations only
    with pytest.raises(ValueError, match="Only one sampling masker"):
        ResearchAttention.create_from_config(
            ResearchAttentionConfig([RandomSamplingMaskerConfig(0.1), MagicPigConfig(4, 4)])
        )


def test_chain_output_equals_attention_over_its_mask(device):
    gen = torch.Generator().manual_seed(6)
    b, h, hkv, sq, sk, d = 1, 4, 2, 3, 50, 8
    q, k, v = (
        torch.randn(b, h, sq, d, generator=gen),
        torch.randn(b, hkv, sk, d, generator=gen),
        torch.randn(b, hkv, sk, d, generator=gen),
    )
    additive, allowed = causal_additive(b, sq, sk)
    q, k, v, additive = (t.to(device) for t in (q, k, v, additive))
    for sampler in (
        RandomSamplingMaskerConfig(0.2, seed=3),
        MagicPigConfig(6, 3),
        AdaptiveSamplingMaskerConfig(0.1, 0.2, 0.2, 2, 2, seed=3),
    ):
        attention = ResearchAttention.create_from_config(
            ResearchAttentionConfig([SinkMaskerConfig(2), LocalMaskerConfig(3), sampler])
        )
        mask = attention.compute_mask(q, k, v, additive, 0.3, 0.0, {}, layer_idx=0)
        got = mask.get_dense_mask().cpu()
        assert (got[~allowed.expand_as(got)] == 0).all()
        out, _ = attention.custom_attention(None, q, k, v, additive, 0.3, 0.0, {}, layer_idx=0)
        want, _ = ops.sparse_attention(q, k, v, *mask.get_rows(), 0.3, additive)
        torch.testing.assert_close(out, want.transpose(1, 2))


def test_opcheck(device):
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 2, 8, generator=gen).to(device)
    k = torch.randn(1, 2, 16, 8, generator=gen).to(device)
    additive = causal_additive(1, 2, 16)[0].to(device)
    pi, pp = (t.to(device) for t in to_rows(sink_local_prev(1, 4, 2, 16)))
    torch.library.opcheck(torch.ops.sah.random_sampling_mask, (pi, pp, additive, 16, 3, 1, 0))
    torch.library.opcheck(
        torch.ops.sah.adaptive_sampling_mask,
        (q, k, pi, pp, additive, 0.3, 2, 0.1, 1.64, 1, 15, 1, 0),
    )
    state = magicpig_state(k, 3, 4)
    torch.library.opcheck(
        torch.ops.sah.magicpig_mask,
        (
            q,
            k,
            pi,
            pp,
            additive,
            state.projections,
            state.key_mean,
            state.key_norm_bound,
            state.key_signatures,
            0,
            3,
            4,
        ),
    )
    if device == "cpu":
        torch.library.opcheck(torch.ops.sah.fill_lsh_projections, (torch.empty(9, 12), 1, 0))


def test_compile_chain_with_sampling_masker(device):
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [
                SinkMaskerConfig(2),
                LocalMaskerConfig(4),
                RandomSamplingMaskerConfig(0.25, seed=11),
            ]
        )
    )

    def run(q, k, v, mask):
        return attention.custom_attention(None, q, k, v, mask, 0.3, 0.0, {}, layer_idx=1)[0]

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(8)
    for sk in (24, 31, 40):
        q = torch.randn(1, 4, 1, 8, generator=gen).to(device)
        k = torch.randn(1, 2, sk, 8, generator=gen).to(device)
        v = torch.randn(1, 2, sk, 8, generator=gen).to(device)
        mask = torch.zeros(1, 1, 1, sk, device=device)
        torch.testing.assert_close(compiled(q, k, v, mask), run(q, k, v, mask))


def test_bad_inputs():
    pi, pp = empty_rows(1, 2, 1)
    q, k = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 6, 4)
    with pytest.raises(RuntimeError, match="size must be >= 0"):
        torch.ops.sah.random_sampling_mask(pi, pp, None, 6, -1, 0, 0)
    with pytest.raises(RuntimeError, match="base_samples must be >= 2"):
        torch.ops.sah.adaptive_sampling_mask(q, k, pi, pp, None, 1.0, 1, 0.1, 1.0, 0, 6, 0, 0)
    with pytest.raises(RuntimeError, match="sampling range must satisfy"):
        torch.ops.sah.adaptive_sampling_mask(q, k, pi, pp, None, 1.0, 2, 0.1, 1.0, 4, 7, 0, 0)
    state = magicpig_state(k, 2, 3)
    with pytest.raises(RuntimeError, match="projections must be float32 of shape"):
        torch.ops.sah.magicpig_mask(
            q,
            k,
            pi,
            pp,
            None,
            state.projections[:, :5],
            state.key_mean,
            state.key_norm_bound,
            state.key_signatures,
            0,
            2,
            3,
        )
    with pytest.raises(RuntimeError, match="key_signatures must be int32 of shape"):
        torch.ops.sah.magicpig_mask(
            q,
            k,
            pi,
            pp,
            None,
            state.projections,
            state.key_mean,
            state.key_norm_bound,
            state.key_signatures[:, :, :3],
            0,
            2,
            3,
        )
    with pytest.raises(RuntimeError, match="num_cached must be in"):
        torch.ops.sah.magicpig_mask(
            q,
            k,
            pi,
            pp,
            None,
            state.projections,
            state.key_mean,
            state.key_norm_bound,
            state.key_signatures,
            7,
            2,
            3,
        )


def decode_prev_rows(b, h, sk, extra, gen):
    """Sink 128 + local 128 (p = 1) and `extra` random middle keys (p = 0.5) per row."""
    dense = torch.zeros(b, h, 1, sk)
    dense[..., :128] = 1.0
    dense[..., sk - 128 :] = 1.0
    for bb in range(b):
        for hh in range(h):
            dense[bb, hh, 0, torch.randperm(sk - 256, generator=gen)[:extra] + 128] = 0.5
    return ops.dense_to_rows(dense)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sk", [70000, 9000])
def test_cuda_equals_cpu_on_long_decode_rows(sk):
    """At decode sizes the CUDA kernels split each row over a cluster of blocks (random and
    adaptive sampling) or over many key chunks with look-back offsets (MagicPig): same masks as
    the CPU (which the tests above check against the reference)."""
    gen = torch.Generator().manual_seed(sk)
    b, h, hkv, d = 1, 8, 2, 128
    q = torch.randn(b, h, 1, d, generator=gen).to(torch.bfloat16)
    k = torch.randn(b, hkv, sk, d, generator=gen).to(torch.bfloat16)
    prev = decode_prev_rows(b, h, sk, sk // 20, gen)
    mask = torch.zeros(b, 1, 1, sk)
    mask[..., 5:9] = float("-inf")

    def both(fn, *args):
        cpu = fn(*args)
        cuda = fn(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
        return cpu, tuple(t.cpu() for t in cuda)

    for m in (None, mask):
        for (ci, cp), (gi, gp) in [
            both(torch.ops.sah.random_sampling_mask, *prev, m, sk, sk // 10, 7, 1),
            both(
                torch.ops.sah.adaptive_sampling_mask,
                q, k, *prev, m, d**-0.5, sk // 20, 0.25, 0.6745, 128, sk - 128, 3, 2,
            ),
        ]:
            assert torch.equal(ci, gi)
            assert torch.equal(cp, gp)
    outs = []
    for device in ("cpu", "cuda"):
        state = magicpig_state(k[:, :, : sk // 2].to(device), 75, 8, seed=0)
        state.reserve(sk)
        out = run_magicpig(q.to(device), k.to(device), [t.to(device) for t in prev], None,
                           state, 75, 8)
        outs.append(tuple(t.cpu() for t in out))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
