"""Tests of the learned-score top-k maskers (HashAttention, PQCache), their weights utilities and
the efficient attention classes, against plain-PyTorch references of the documented algorithms.

HashAttention: signatures are sign(MLP) with 0 counted as +1, bit-packed; the score of a key is
the +-1 dot product plus the additive mask; the k best candidates (keys the query may see, not in
the previous mask) join the mask, equal scores going to the lower key index. PQCache: codes are
nearest centroids, scores are sums of query . centroid over sub-spaces, then the same top-k.
The CUDA kernels must give exactly the CPU kernels' results (tests marked ``gpu``).
"""

import itertools
import json
import pickle
import re
from unittest import mock

import pytest
import torch
from reference import causal_additive

from sparse_attention_hub import ops
from sparse_attention_hub.sparse_attention.base import SparseAttention
from sparse_attention_hub.sparse_attention.efficient_attention import (
    EfficientAttention,
    EfficientAttentionConfig,
)
from sparse_attention_hub.sparse_attention.efficient_attention.implementations import (
    DoubleSparsity,
    DoubleSparsityConfig,
    HashAttention,
    HashAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention import (
    ResearchAttention,
    ResearchAttentionConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers import ResearchMasker
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed import (
    LocalMasker,
    LocalMaskerConfig,
    SinkMasker,
    SinkMaskerConfig,
    TopKMasker,
    TopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.hashattention_top_k import (  # noqa: E501
    HashAttentionTopKMasker,
    HashAttentionTopKMaskerConfig,
)
from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.pq_top_k import (  # noqa: E501
    PQCache,
    PQCacheConfig,
    fit_pq_codebooks,
)
from sparse_attention_hub.sparse_attention.utils import Mask
from sparse_attention_hub.sparse_attention.utils.hashattention_utils import (
    convert_usa_weights_to_hash_attention,
    create_hat_weights_file_from_usa,
    load_hat_weights,
    save_hat_weights,
)

ACTIVATIONS = {
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "tanh": torch.tanh,
}

# ----------------------------------------------------------------------------------------------
# Reference: plain PyTorch, dense (b, h, sq, sk) masks, float64 scores.


def ref_mlp(x, mats, biases, act):
    """Pre-sign MLP outputs (b, H, s, bits) in float64; kv heads repeated to the H weight heads."""
    heads = mats[0].shape[0]
    z = x.double().repeat_interleave(heads // x.shape[1], 1)
    for idx, (w, c) in enumerate(zip(mats, biases)):
        z = torch.einsum("bhsd,hde->bhse", z, w.double()) + c.double()[None, :, None, :]
        if idx < len(mats) - 1:
            z = ACTIVATIONS[act](z)
    return z


def ref_pack(signs):
    """int32 words of +-1 (or any real) signatures (..., bits): bit t of word t // 32 is 1 for a
    value >= 0."""
    bits = signs.shape[-1]
    words = []
    for w in range(0, bits, 32):
        chunk = (signs[..., w : w + 32] >= 0).long()
        value = (chunk * (1 << torch.arange(chunk.shape[-1]))).sum(-1)
        words.append(torch.where(value >= 2**31, value - 2**32, value))
    return torch.stack(words, -1).to(torch.int32)


def ref_topk(scores, additive, prev, k):
    """Top-k of ``scores + additive`` over the keys the query may see and ``prev`` does not hold;
    equal scores: lower key first. Returns ``prev`` plus the picks (p = 1)."""
    b, h, sq, sk = scores.shape
    pos = sk - sq + torch.arange(sq)
    allowed = (torch.arange(sk)[None, :] <= pos[:, None]).expand(b, h, sq, sk)
    s = scores.double()
    if additive is not None:
        allowed = allowed & (additive > torch.finfo(additive.dtype).min)
        s = s + additive.double().masked_fill(~allowed, 0.0)
    s = s.masked_fill(~allowed | (prev != 0), float("-inf"))
    order = torch.sort(-s, dim=-1, stable=True).indices
    take = torch.isfinite(s).sum(-1, keepdim=True).clamp(max=k)
    chosen = (torch.arange(sk) < take).double()
    return prev.double() + torch.zeros_like(s).scatter(-1, order, chosen)


def ref_pq_scores(q, codebooks, codes):
    """sum_m q_m . centroid[m][code_m] (b, h, sq, sk) in float64; kv heads repeated."""
    b, h, sq, d = q.shape
    kvh, m, c, sub = codebooks.shape[1:]
    books = codebooks.double().repeat_interleave(h // kvh, 1)
    lut = torch.einsum("bhqms,bhmcs->bhqmc", q.double().reshape(b, h, sq, m, sub), books)
    cd = codes.long().repeat_interleave(h // kvh, 1)  # (b, h, sk, m)
    idx = cd.permute(0, 1, 3, 2)[:, :, None].expand(b, h, sq, m, cd.shape[2])
    return lut.gather(-1, idx).sum(3)


def ref_pq_encode(keys, codebooks):
    """Nearest (L2) centroid per sub-space, lowest index on ties."""
    b, kvh, n, d = keys.shape
    m, c, sub = codebooks.shape[2:]
    x = keys.double().reshape(b, kvh, n, m, 1, sub)
    dist = ((x - codebooks.double()[:, :, None]) ** 2).sum(-1)  # (b, kvh, n, m, c)
    return dist.argmin(-1).to(torch.uint8)  # argmin returns the first minimum


def to_rows(dense):
    return ops.dense_to_rows(dense.float().contiguous())


def dense(rows, sk):
    return ops.rows_to_dense(*rows, sk)


def random_prev(b, h, sq, sk, gen, density=0.2):
    _, allowed = causal_additive(b, sq, sk)
    keep = (torch.rand(b, h, sq, sk, generator=gen) < density) & allowed
    return torch.where(
        keep, torch.where(torch.rand(b, h, sq, sk, generator=gen) < 0.5, 1.0, 0.3), 0
    )


def random_weights(gen, heads, dims, layers=(0,)):
    """HashAttention weights: an MLP with widths ``dims`` per head, query and key sides."""

    def entry():
        return {
            f"{side}_{part}": [
                torch.randn(heads, a, b, generator=gen) / a**0.5
                if part == "matrix"
                else torch.randn(heads, b, generator=gen) * 0.1
                for a, b in zip(dims[:-1], dims[1:])
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }

    return {layer: entry() for layer in layers}


def hash_config(weights, heavy=3, act="silu", **kw):
    return HashAttentionTopKMaskerConfig(
        heavy_size=heavy,
        hat_bits=4,
        hat_mlp_layers=2,
        hat_mlp_hidden_size=8,
        hat_mlp_activation=act,
        hat_weights=weights,
        **kw,
    )


def empty_mask(b, h, sq, sk):
    return Mask.create_empty_mask((b, h, sq, sk), torch.float32, torch.device("cpu"))


def to_mask(prev):
    return Mask.create_from_rows(prev.shape, *to_rows(prev), dtype=torch.float32)


def add(masker, k, q, smd, prev=None, mask=None, layer=0):
    prev = prev if prev is not None else empty_mask(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return masker.add_mask(k, q, None, mask, 0.3, 0.0, smd, prev, layer_idx=layer)


# ----------------------------------------------------------------------------------------------
# HashAttention: packing and signatures


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pack_signs_bits_and_zero_rule(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 70, generator=gen).to(dtype)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, -1.0, 1.0])
    words = torch.ops.sah.hash_pack_signs(x)
    assert words.shape == (2, 3, 5, 3) and words.dtype == torch.int32
    assert torch.equal(words, ref_pack(x.double()))
    assert words[0, 0, 0, 0] & 0b1111 == 0b1011  # exact zeros (both signs) count as +1
    assert torch.equal(torch.ops.sah.hash_pack_signs(x.transpose(1, 2)), words.transpose(1, 2))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_packed_signatures_equal_sign_of_mlp(act):
    """Keys with 2 kv heads feed 4 weight heads (GQA, no copy); bits equal sign(MLP), 0 -> +1."""
    gen = torch.Generator().manual_seed(1)
    weights = random_weights(gen, 4, [16, 12, 40])
    masker = HashAttentionTopKMasker(hash_config(weights, act=act))
    keys = torch.randn(2, 2, 9, 16, generator=gen)
    for x, side in ((keys, "key"), (torch.randn(2, 4, 3, 16, generator=gen), "query")):
        mats, biases = weights[0][f"{side}_matrix"], weights[0][f"{side}_bias"]
        signs = masker._get_signatures(x, mats, biases)
        z = ref_mlp(x, mats, biases, act)
        assert signs.shape == z.shape and set(signs.unique().tolist()) <= {-1.0, 1.0}
        clear = z.abs() > 1e-5  # away from 0, float32 and float64 agree on the sign
        assert clear.float().mean() > 0.99
        assert torch.equal(signs[clear], torch.where(z >= 0, 1.0, -1.0).float()[clear])
        assert torch.equal(torch.ops.sah.hash_pack_signs(signs), ref_pack(signs))


# ----------------------------------------------------------------------------------------------
# HashAttention: top-k op


@pytest.mark.parametrize("bits", [5, 32, 45])
@pytest.mark.parametrize("h,hk", [(2, 2), (4, 2)])
@pytest.mark.parametrize("sq,sk", [(1, 40), (5, 30)])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "offsets", "bool"])
@pytest.mark.parametrize("with_prev", [False, True])
def test_hash_topk_matches_reference(bits, h, hk, sq, sk, mask_kind, with_prev):
    gen = torch.Generator().manual_seed(bits * 100 + sk + sq)
    b, k = 2, 6
    qs = torch.where(torch.rand(b, h, sq, bits, generator=gen) < 0.5, -1.0, 1.0)
    ks = torch.where(torch.rand(b, hk, sk, bits, generator=gen) < 0.5, -1.0, 1.0)
    scores = qs @ ks.repeat_interleave(h // hk, 1).transpose(-1, -2)  # integers: many ties
    additive = None
    if mask_kind == "causal":
        additive = causal_additive(b, sq, sk)[0]
    elif mask_kind == "offsets":  # finite offsets (multiples of 1/4: exact) + forbidden keys
        additive = torch.randint(-3, 2, (b, 1, sq, sk), generator=gen) * 0.25
        additive[:, :, :, 3] = torch.finfo(torch.float32).min
    elif mask_kind == "bool":
        allowed = torch.rand(b, 1, 1, sk, generator=gen) < 0.8
    prev = random_prev(b, h, sq, sk, gen) if with_prev else torch.zeros(b, h, sq, sk)
    op_mask = additive
    if mask_kind == "bool":
        op_mask = allowed
        additive = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).expand(b, 1, sq, sk)
    idx, p = torch.ops.sah.hash_topk_mask(
        ref_pack(qs), ref_pack(ks), *to_rows(prev), op_mask, k, bits
    )
    want = ref_topk(scores, additive, prev, k)
    assert idx.shape[-1] == min(to_rows(prev)[0].shape[-1] + k, sk)
    assert torch.equal(dense((idx, p), sk).double(), want.float().double())


def test_hash_topk_ties_prefer_lower_index_and_zero_budget():
    qs = ref_pack(torch.ones(1, 1, 1, 8))
    ks = ref_pack(torch.ones(1, 1, 10, 8))  # all keys tie
    pi, pp = torch.empty(1, 1, 1, 0, dtype=torch.int32), torch.empty(1, 1, 1, 0)
    assert torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, None, 3, 8)[0].tolist() == [[[[0, 1, 2]]]]
    idx, p = torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, None, 0, 8)
    assert idx.shape[-1] == 0 and p.shape[-1] == 0


# ----------------------------------------------------------------------------------------------
# HashAttention masker: end to end, state, weights


def test_hash_masker_matches_reference_pipeline():
    gen = torch.Generator().manual_seed(2)
    b, h, hkv, sq, sk, d = 2, 4, 2, 3, 24, 16
    weights = random_weights(gen, h, [d, 32, 32, 40])
    q, k = torch.randn(b, h, sq, d, generator=gen), torch.randn(b, hkv, sk, d, generator=gen)
    additive = causal_additive(b, sq, sk)[0]
    prev = random_prev(b, h, sq, sk, gen)
    masker = HashAttentionTopKMasker(hash_config(weights, heavy=5))
    smd = {}
    got = add(masker, k, q, smd, to_mask(prev), additive).get_dense_mask()
    zq = ref_mlp(q, weights[0]["query_matrix"], weights[0]["query_bias"], "silu")
    zk = ref_mlp(k, weights[0]["key_matrix"], weights[0]["key_bias"], "silu")
    assert (zq.abs() > 1e-5).all() and (zk.abs() > 1e-5).all()  # no sign is a rounding call
    scores = torch.sign(zq) @ torch.sign(zk).transpose(-1, -2)
    assert torch.equal(got.double(), ref_topk(scores, additive, prev, 5).float().double())
    assert smd["key"][0].shape == (b, h, sk, 2) and smd["key"][0].dtype == torch.int32
    assert "query" not in smd


def test_incremental_signatures_equal_recomputation():
    """A simulated decode: the cached signatures and every step's mask equal those computed
    from scratch with all keys at once."""
    gen = torch.Generator().manual_seed(3)
    b, h, hkv, d = 2, 4, 2, 8
    weights = random_weights(gen, h, [d, 16, 33], layers=(5,))
    k = torch.randn(b, hkv, 40, d, generator=gen)
    masker = HashAttentionTopKMasker(hash_config(weights, heavy=0.2))
    smd = {}
    for n in (20, 21, 22, 30, 30, 40):
        q = torch.randn(b, h, 1, d, generator=gen)
        got = add(masker, k[:, :, :n], q, smd, layer=5).get_dense_mask()
        fresh = add(masker, k[:, :, :n], q, {}, layer=5).get_dense_mask()
        assert torch.equal(got, fresh)
    state = smd["hash_attention"][5]
    assert state.num_keys == 40 and torch.equal(state.last_key, k[:, :, 39:])
    all_at_once = ref_pack(masker._get_signatures(k, *masker._layer_weights(5, "key", k)))
    assert torch.equal(state.valid_rows, all_at_once)
    assert smd["key"][5].data_ptr() == state.rows.data_ptr()  # the mirror is a view


def test_stale_state_is_detected():
    gen = torch.Generator().manual_seed(4)
    weights = random_weights(gen, 2, [8, 4])
    k, q = torch.randn(1, 2, 30, 8, generator=gen), torch.randn(1, 2, 1, 8, generator=gen)
    masker = HashAttentionTopKMasker(hash_config(weights))
    smd = {}
    add(masker, k[:, :, :20], q, smd)
    add(masker, k[:, :, :25], q, smd)  # a continuation
    msg = "Current number of keys (24) is less than cached number of keys (25)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        add(masker, k[:, :, :24], q, smd)
    with pytest.raises(RuntimeError, match="belongs to another sequence"):
        add(masker, torch.randn(1, 2, 30, 8, generator=gen), q, smd)
    with pytest.raises(ValueError, match="belongs to keys of"):
        add(masker, k.expand(2, 2, 30, 8), q.expand(2, 2, 1, 8), smd)
    other = HashAttentionTopKMasker(hash_config(random_weights(gen, 2, [8, 6])))
    with pytest.raises(ValueError, match=re.escape("for (heads, bits) = (2, 4), expected (2, 6)")):
        add(other, k, q, smd)
    full = Mask.create_full_mask((1, 2, 1, 30), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="sparse_meta_data cannot be None"):
        masker.add_mask(k, q, None, None, 0.3, 0.0, None, full, layer_idx=0)
    with pytest.raises(ValueError, match="layer_idx must be provided in kwargs"):
        masker.add_mask(k, q, None, None, 0.3, 0.0, {}, full)
    with pytest.raises(ValueError, match=re.escape("hat_weights has no entry for layer 3")):
        add(masker, k, q, {}, layer=3)


def test_weights_cast_once_and_caller_dict_untouched():
    gen = torch.Generator().manual_seed(5)
    weights = random_weights(gen, 2, [8, 6, 4])
    originals = {kind: [t.clone() for t in ts] for kind, ts in weights[0].items()}
    masker = HashAttentionTopKMasker(hash_config(weights))
    for dtype in (torch.bfloat16, torch.float64):
        k, q = torch.randn(1, 2, 12, 8, dtype=dtype), torch.randn(1, 2, 2, 8, dtype=dtype)
        smd = {}
        add(masker, k[:, :, :10], q, smd)
        cast = {key: [t for ts in v for t in ts] for key, v in masker._cast_weights.items()}
        add(masker, k, q, smd)
        again = {key: [t for ts in v for t in ts] for key, v in masker._cast_weights.items()}
        assert cast.keys() == again.keys() and all(
            all(a is b for a, b in zip(cast[key], again[key])) for key in cast
        )
        assert all(t.dtype == dtype for key in cast if key[3] == dtype for t in cast[key])
    assert len(masker._cast_weights) == 4  # (query, key) x (bfloat16, float64)
    assert masker.hat_weights is weights
    for kind, ts in weights[0].items():
        assert all(
            torch.equal(a, b) and a.dtype == torch.float32 for a, b in zip(ts, originals[kind])
        )


def test_weight_files_safetensors_pickle_and_dict(tmp_path):
    gen = torch.Generator().manual_seed(6)
    weights = random_weights(gen, 2, [8, 6, 4], layers=(0, 3))
    st, pk = tmp_path / "w.safetensors", tmp_path / "w.pkl"
    save_hat_weights(weights, st)
    with open(pk, "wb") as f:
        pickle.dump(weights, f)
    for loaded in (load_hat_weights(st), load_hat_weights(pk, trust_pickle=True)):
        assert sorted(loaded) == [0, 3]
        for layer in (0, 3):
            for kind, ts in weights[layer].items():
                assert all(torch.equal(a, b) for a, b in zip(loaded[layer][kind], ts))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_hat_weights(pk)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        HashAttentionTopKMasker(hash_config(None, hat_weight_file=str(pk)))
    k, q = torch.randn(1, 2, 16, 8, generator=gen), torch.randn(1, 2, 2, 8, generator=gen)
    want = add(HashAttentionTopKMasker(hash_config(weights)), k, q, {}, layer=3).get_dense_mask()
    for cfg in (
        hash_config(None, hat_weight_file=str(st)),
        hash_config(None, hat_weight_file=str(pk), trust_pickle=True),
    ):
        assert torch.equal(
            add(HashAttentionTopKMasker(cfg), k, q, {}, layer=3).get_dense_mask(), want
        )
    bad = {0: dict(weights[0], key_bias=weights[0]["key_bias"][:1])}
    with pytest.raises(ValueError, match="lists must all have the same length"):
        HashAttentionTopKMasker(hash_config(bad))
    bad = {0: dict(weights[0], query_matrix=[weights[0]["query_matrix"][0], torch.zeros(2, 5, 4)])}
    with pytest.raises(ValueError, match=re.escape("['query_matrix'][1] must have shape (2, 6,")):
        load_hat_weights(bad)


def test_usa_conversion_on_a_synthetic_checkpoint(tmp_path):
    """USA modules (nn.Sequential of Linear and SiLU per head) give the same signatures as the
    converted weights; a missing bias becomes zeros."""
    torch.manual_seed(7)
    layers, heads, d, mlp_layers = 2, 3, 8, 3
    modules = {}
    for layer in range(layers):
        for side in ("q", "k"):
            for head in range(heads):
                seq = torch.nn.Sequential(
                    torch.nn.Linear(d, 12),
                    torch.nn.SiLU(),
                    torch.nn.Linear(12, 12, bias=head != 1),
                    torch.nn.SiLU(),
                    torch.nn.Linear(12, 20),
                )
                modules[(layer, side, head)] = seq
    state = {
        f"{layer}.learning_to_hash_transformation_{side}.{head}.{name}": t.detach()
        for (layer, side, head), seq in modules.items()
        for name, t in seq.state_dict().items()
    }
    path = tmp_path / "usa.pt"
    torch.save(state, path)
    weights = convert_usa_weights_to_hash_attention(path, layers, heads, mlp_layers)
    create_hat_weights_file_from_usa(path, tmp_path / "hat.safetensors", layers, heads, mlp_layers)
    from_file = load_hat_weights(tmp_path / "hat.safetensors")
    masker = HashAttentionTopKMasker(hash_config(weights))
    x = torch.randn(1, heads, 5, d)
    for layer in range(layers):
        assert all(
            torch.equal(a, b)
            for kind in weights[layer]
            for a, b in zip(weights[layer][kind], from_file[layer][kind])
        )
        for side, name in (("q", "query"), ("k", "key")):
            signs = masker._get_signatures(
                x, weights[layer][f"{name}_matrix"], weights[layer][f"{name}_bias"]
            )
            with torch.no_grad():
                z = torch.stack([modules[(layer, side, t)](x[0, t]) for t in range(heads)])[None]
            clear = z.abs() > 1e-5
            assert torch.equal(signs[clear], torch.where(z >= 0, 1.0, -1.0)[clear])
    del state["1.learning_to_hash_transformation_k.2.4.weight"]
    with pytest.raises(ValueError, match="lacks 1.learning_to_hash_transformation_k.2.4.weight"):
        convert_usa_weights_to_hash_attention(state, layers, heads, mlp_layers)


def test_hash_masker_reference_api():
    """Names, messages and internals that the reference's tests use."""
    gen = torch.Generator().manual_seed(8)
    weights = random_weights(gen, 2, [16, 8, 4])
    cfg = hash_config(weights, heavy=2, act="relu")
    masker = HashAttentionTopKMasker.create_from_config(cfg)
    assert type(masker) is HashAttentionTopKMasker and masker.config == cfg
    assert ResearchMasker.create_masker_from_config(cfg).config == cfg
    assert issubclass(HashAttentionTopKMasker, TopKMasker)
    assert issubclass(HashAttentionTopKMaskerConfig, TopKMaskerConfig)
    assert (masker.hat_bits, masker.hat_mlp_layers, masker.hat_mlp_hidden_size) == (4, 2, 8)
    with pytest.raises(ValueError, match="Only one of hat_weights or hat_weight_file"):
        HashAttentionTopKMasker(hash_config(weights, hat_weight_file="w.safetensors"))
    with pytest.raises(ValueError, match="Either hat_weights or hat_weight_file must be provided"):
        HashAttentionTopKMasker(hash_config(None))
    k, q = torch.randn(1, 2, 5, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)
    odd = HashAttentionTopKMasker(hash_config(weights, act="elu"))  # accepted until first use
    with pytest.raises(ValueError, match="Unsupported activation function: elu"):
        add(odd, k, q, {})
    sig = masker._get_signatures(
        input_tensor=k, matrix_list=weights[0]["key_matrix"], bias_list=weights[0]["key_bias"]
    )
    assert sig.shape == (1, 2, 5, 4)
    for heavy in (2, 0.4):  # 0.4 * 5 = 2
        got = add(HashAttentionTopKMasker(hash_config(weights, heavy=heavy)), k, q, {})
        assert (got.get_dense_mask().ne(0).sum(-1) == 2).all()
    assert add(masker, k[:, :, :2], q[:, :, :1], {}).is_full_mask()  # sk <= heavy_size
    smd = {}
    with mock.patch.object(HashAttentionTopKMasker, "_get_signatures") as patched:
        patched.return_value = torch.randn(1, 2, 3, 4, generator=gen)
        first = masker._update_key_signatures(keys=k[:, :, :3], sparse_meta_data=smd, layer_idx=0)
        assert smd["key"][0].shape[2] == 3
        patched.return_value = torch.randn(1, 2, 2, 4, generator=gen)
        second = masker._update_key_signatures(keys=k, sparse_meta_data=smd, layer_idx=0)
    assert smd["key"][0].shape == (1, 2, 5, 1) and torch.equal(first, second[:, :, :3])


# ----------------------------------------------------------------------------------------------
# PQCache


def test_pq_encode_is_nearest_centroid():
    """Integer data: exact distances, so ties happen and go to the lower centroid."""
    gen = torch.Generator().manual_seed(9)
    keys = torch.randint(-3, 4, (2, 3, 17, 8), generator=gen).float()
    books = torch.randint(-3, 4, (2, 3, 4, 5, 2), generator=gen).float()
    codes = torch.ops.sah.pq_encode(keys, books)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 3, 17, 4)
    assert torch.equal(codes, ref_pq_encode(keys, books))
    assert torch.equal(torch.ops.sah.pq_encode(keys.to(torch.bfloat16), books), codes)
    strided = keys.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(torch.ops.sah.pq_encode(strided, books), codes)


@pytest.mark.parametrize("h,hkv", [(2, 2), (4, 2)])
@pytest.mark.parametrize("sq,sk", [(1, 30), (4, 25)])
@pytest.mark.parametrize("with_prev", [False, True])
def test_pq_topk_matches_reference(h, hkv, sq, sk, with_prev):
    """Integer queries and centroids: exact lookup-table sums, so the op must match the
    reference exactly, ties to the lower key included."""
    gen = torch.Generator().manual_seed(10 + h + sq)
    b, d, m, c, k = 2, 8, 4, 6, 5
    q = torch.randint(-2, 3, (b, h, sq, d), generator=gen).float()
    books = torch.randint(-2, 3, (b, hkv, m, c, d // m), generator=gen).float()
    codes = torch.randint(0, c, (b, hkv, sk, m), generator=gen).to(torch.uint8)
    additive = causal_additive(b, sq, sk)[0]
    prev = random_prev(b, h, sq, sk, gen) if with_prev else torch.zeros(b, h, sq, sk)
    idx, p = torch.ops.sah.pq_topk_mask(q, books, codes, *to_rows(prev), additive, k)
    want = ref_topk(ref_pq_scores(q, books, codes), additive, prev, k)
    assert torch.equal(dense((idx, p), sk).double(), want.float().double())


def test_kmeans_is_deterministic_and_fits():
    gen = torch.Generator().manual_seed(11)
    keys = torch.randn(1, 2, 64, 8, generator=gen)
    a = fit_pq_codebooks(keys, 4, 8, 5, seed=3)
    assert a.shape == (1, 2, 2, 8, 4) and a.dtype == torch.float32
    assert torch.equal(a, fit_pq_codebooks(keys, 4, 8, 5, seed=3))
    assert not torch.equal(a, fit_pq_codebooks(keys, 4, 8, 5, seed=4))
    init = fit_pq_codebooks(keys, 4, 8, 0, seed=3)  # the initial centroids are keys
    sub = keys.reshape(1, 2, 64, 2, 4)
    assert all(
        (sub[0, hh, :, mm] == init[0, hh, mm, cc]).all(-1).any()
        for hh in range(2)
        for mm in range(2)
        for cc in range(8)
    )

    def distortion(books):
        codes = torch.ops.sah.pq_encode(keys, books).long()
        total = 0.0
        for hh in range(2):
            for mm in range(2):
                total += ((sub[0, hh, :, mm] - books[0, hh, mm][codes[0, hh, :, mm]]) ** 2).sum()
        return float(total)

    assert distortion(a) < distortion(init)
    few = fit_pq_codebooks(keys[:, :, :3], 4, 8, 2, seed=0)  # fewer keys than centroids
    assert torch.isfinite(few).all()


def test_pq_masker_recall_on_clustered_keys():
    """Keys built from a few prototypes per sub-space (plus small noise) are quantised almost
    exactly, so PQ top-k finds nearly the oracle top-k."""
    gen = torch.Generator().manual_seed(12)
    b, h, hkv, sk, d, sub, k = 1, 4, 2, 512, 16, 4, 32
    protos = torch.randn(hkv, d // sub, 8, sub, generator=gen) * 2
    pick = torch.randint(0, 8, (hkv, sk, d // sub), generator=gen)
    keys = torch.stack(
        [protos[t, torch.arange(d // sub), pick[t]].reshape(sk, d) for t in range(hkv)]
    )[None] + 0.02 * torch.randn(b, hkv, sk, d, generator=gen)
    q = torch.randn(b, h, 1, d, generator=gen)
    masker = PQCache(PQCacheConfig(heavy_size=k, pq_sub_dim=sub, pq_bits=4, kmeans_iters=15))
    smd = {}
    got = add(masker, keys, q, smd).get_dense_mask() > 0
    exact = q @ keys.repeat_interleave(h // hkv, 1).transpose(-1, -2)
    oracle = torch.zeros_like(got).scatter(-1, exact.topk(k, -1).indices, True)
    recall = (got & oracle).sum() / oracle.sum()
    assert recall > 0.9, f"recall {recall:.3f}"
    assert smd["pq_codes"][0].shape == (b, hkv, sk, d // sub)
    assert smd["pq_centroids"][0].shape == (b, hkv, d // sub, 16, sub)


def test_pq_masker_incremental_state_and_validation():
    gen = torch.Generator().manual_seed(13)
    b, h, hkv, d = 1, 2, 1, 8
    keys = torch.randn(b, hkv, 60, d, generator=gen)
    masker = PQCache(PQCacheConfig(heavy_size=4, pq_sub_dim=2, pq_bits=3, kmeans_iters=3))
    smd = {}
    for n in (40, 41, 41, 60):
        q = torch.randn(b, h, 1, d, generator=gen)
        got = add(masker, keys[:, :, :n], q, smd, layer=1).get_rows()
        state = smd["pq_cache"][1]
        want = torch.ops.sah.pq_topk_mask(
            q, state.codebooks, state.valid_rows, *to_rows(torch.zeros(b, h, 1, 0)), None, 4
        )
        assert torch.equal(got[0], want[0])
    assert torch.equal(state.valid_rows, torch.ops.sah.pq_encode(keys, state.codebooks))
    assert torch.equal(state.codebooks, fit_pq_codebooks(keys[:, :, :40], 2, 8, 3, 0))
    with pytest.raises(RuntimeError, match="belongs to another sequence"):
        add(masker, torch.randn(b, hkv, 60, d, generator=gen), q, smd, layer=1)
    with pytest.raises(ValueError, match=re.escape("pq_sub_dim (3) must divide the head dim (8)")):
        add(PQCache(PQCacheConfig(4, 3, 2)), keys, q, {})
    with pytest.raises(ValueError, match="expected \\(2, 3, 3, 1\\)"):
        add(PQCache(PQCacheConfig(4, 2, 3, kmeans_iters=3, seed=1)), keys, q, smd, layer=1)
    with pytest.raises(ValueError, match="sparse_meta_data cannot be None"):
        masker.add_mask(keys, q, None, None, 0.3, 0.0, None, empty_mask(b, h, 1, 60), layer_idx=0)
    for kwargs, msg in [
        (dict(pq_sub_dim=0, pq_bits=4), "pq_sub_dim must be >= 1, got 0"),
        (dict(pq_sub_dim=2, pq_bits=9), "pq_bits must be in [1, 8] (codes are bytes), got 9"),
        (dict(pq_sub_dim=2, pq_bits=4, kmeans_iters=-1), "kmeans_iters must be >= 0, got -1"),
        (dict(pq_sub_dim=2, pq_bits=4, heavy_size=0), "heavy_size must be > 0, got 0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            PQCacheConfig(**{"heavy_size": 4, **kwargs})
    cfg = PQCacheConfig(heavy_size=10, pq_sub_dim=8, pq_bits=4)
    assert type(PQCache.create_from_config(cfg)) is PQCache and issubclass(PQCache, TopKMasker)
    assert ResearchMasker.create_masker_from_config(cfg).config == cfg


# ----------------------------------------------------------------------------------------------
# Efficient attention


def test_efficient_hash_attention_equals_research_chain():
    """Prefill with a causal mask, then decode steps: identical outputs and identical state."""
    gen = torch.Generator().manual_seed(14)
    b, h, hkv, d = 2, 4, 2, 16
    weights = random_weights(gen, h, [d, 16, 32])
    total = 70
    k, v = (
        torch.randn(b, hkv, total, d, generator=gen),
        torch.randn(b, hkv, total, d, generator=gen),
    )
    research = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [SinkMaskerConfig(3), LocalMaskerConfig(4), hash_config(weights, 0.1)]
        )
    )
    efficient = EfficientAttention.create_from_config(
        HashAttentionConfig(0.1, 3, 4, weights, 32, 2, 16, hat_mlp_activation="silu")
    )
    smd_r, smd_e = {}, {}
    for sq, sk in ((6, 50), (1, 51), (1, 52), (3, 60), (1, 70), (2, 6)):
        q = torch.randn(b, h, sq, d, generator=gen)
        additive = causal_additive(b, sq, sk)[0]
        smd = ({}, {}) if sk == 6 else (smd_r, smd_e)  # sk=6: the FULL shortcut (a new sequence)
        args = (None, q, k[:, :, :sk], v[:, :, :sk], additive, 0.25, 0.0)
        want, _ = research.custom_attention(*args, sparse_meta_data=smd[0], layer_idx=0)
        got, weights_out = efficient.custom_attention(*args, sparse_meta_data=smd[1], layer_idx=0)
        assert weights_out is None and torch.equal(got, want), (sq, sk)
    assert torch.equal(smd_r["key"][0], smd_e["key"][0])
    with pytest.raises(ValueError, match="sparse_meta_data cannot be None"):
        efficient.custom_attention(
            None, q, k[:, :, :6], v[:, :, :6], None, 0.3, 0.0, None, layer_idx=0
        )


def test_efficient_attention_factory_and_configs(tmp_path):
    ha = HashAttentionConfig(0.4, 10, 5, "weights.pt", 8, 2, 64)  # the file is read lazily
    attention = SparseAttention.create_from_config(ha)
    assert isinstance(attention, HashAttention) and attention.hat_weights == "weights.pt"
    assert (attention.hat_bits, attention.hat_mlp_layers, attention.hat_mlp_hidden_size) == (
        8,
        2,
        64,
    )
    ds = DoubleSparsityConfig(0.3, 10, 5, "config_file.json", 8, 4.0)
    attention = EfficientAttention.create_from_config(ds)
    assert isinstance(attention, DoubleSparsity)
    assert (attention.group_factor, attention.label_bits, attention.channel_config) == (
        4.0,
        8,
        "config_file.json",
    )

    class SubConfig(HashAttentionConfig):
        pass

    assert isinstance(
        EfficientAttention.create_from_config(SubConfig(1, 1, 1, {}, 1, 1, 1)), HashAttention
    )
    with pytest.raises(TypeError, match="Expected EfficientAttentionConfig"):
        EfficientAttention.create_from_config(ResearchAttentionConfig([]))
    with pytest.raises(ValueError, match="No efficient attention class found for config type"):
        EfficientAttention.create_from_config(EfficientAttentionConfig())
    with pytest.raises(TypeError, match="Expected HashAttentionConfig"):
        HashAttention.create_from_config(ds)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        bad = tmp_path / "w.pkl"
        bad.write_bytes(pickle.dumps({}))
        HashAttention.create_from_config(
            HashAttentionConfig(2, 1, 1, str(bad), 8, 2, 4)
        ).masker_chain()


def test_efficient_double_sparsity_equals_research_chain(tmp_path):
    from sparse_attention_hub.sparse_attention.research_attention.maskers.fixed.implementations.double_sparsity_top_k import (  # noqa: E501
        DoubleSparsityTopKMaskerConfig,
    )

    gen = torch.Generator().manual_seed(15)
    b, h, hkv, d, sq, sk = 1, 4, 2, 16, 1, 48
    table = {
        "model.layers.0.self_attn.qk_proj": [
            torch.randperm(d, generator=gen).tolist() for _ in range(h)
        ]
    }
    path = tmp_path / "channels.json"
    path.write_text(json.dumps(table))
    research = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [
                SinkMaskerConfig(2),
                LocalMaskerConfig(3),
                DoubleSparsityTopKMaskerConfig(6, str(path), group_factor=4, label_bits=16),
            ]
        )
    )
    efficient = EfficientAttention.create_from_config(
        DoubleSparsityConfig(6, 2, 3, str(path), 16, 4.0)
    )
    q = torch.randn(b, h, sq, d, generator=gen)
    k, v = torch.randn(b, hkv, sk, d, generator=gen), torch.randn(b, hkv, sk, d, generator=gen)
    additive = causal_additive(b, sq, sk)[0]
    args = (None, q, k, v, additive, 0.25, 0.0)
    want, _ = research.custom_attention(*args, sparse_meta_data={}, layer_idx=0)
    got, _ = efficient.custom_attention(*args, sparse_meta_data={}, layer_idx=0)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------
# Operator checks and compilation


def test_opcheck():
    gen = torch.Generator().manual_seed(16)
    b, h, hkv, sq, sk, d = 1, 4, 2, 2, 16, 8
    additive = causal_additive(b, sq, sk)[0]
    pi, pp = to_rows(random_prev(b, h, sq, sk, gen))
    x = torch.randn(b, h, sq, 40, generator=gen)
    torch.library.opcheck(torch.ops.sah.hash_pack_signs, (x,))
    qs, ks = ref_pack(x), ref_pack(torch.randn(b, hkv, sk, 40, generator=gen))
    torch.library.opcheck(torch.ops.sah.hash_topk_mask, (qs, ks, pi, pp, additive, 3, 40))
    keys = torch.randn(b, hkv, sk, d, generator=gen)
    books = torch.randn(b, hkv, 4, 5, 2, generator=gen)
    torch.library.opcheck(torch.ops.sah.pq_encode, (keys, books))
    codes = torch.ops.sah.pq_encode(keys, books)
    q = torch.randn(b, h, sq, d, generator=gen)
    torch.library.opcheck(torch.ops.sah.pq_topk_mask, (q, books, codes, pi, pp, additive, 3))


def test_compile_hash_chain_with_attention():
    """The whole chain is one graph for every key length. Run eagerly first: the weights are
    cast on first use and cached on the masker (a compiled first call would compile twice).
    The aot_eager backend checks capture, fake kernels and functionalisation of the state
    update; inductor's CPU code generation would add ~40 s on two cores."""
    gen = torch.Generator().manual_seed(17)
    weights = random_weights(gen, 4, [8, 16, 32])
    attention = ResearchAttention.create_from_config(
        ResearchAttentionConfig(
            [SinkMaskerConfig(2), LocalMaskerConfig(3), hash_config(weights, 0.25)]
        )
    )

    def run(q, k, v, mask):
        return attention.custom_attention(None, q, k, v, mask, 0.3, 0.0, {}, layer_idx=0)[0]

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, dynamic=True, backend="aot_eager")
    with mock.patch.object(torch._dynamo.config, "error_on_recompile", False):
        for sk in (24, 31, 40):
            q = torch.randn(1, 4, 1, 8, generator=gen)
            k, v = torch.randn(1, 2, sk, 8, generator=gen), torch.randn(1, 2, sk, 8, generator=gen)
            mask = torch.zeros(1, 1, 1, sk)
            want = run(q, k, v, mask)
            torch.testing.assert_close(compiled(q, k, v, mask), want)
            torch._dynamo.config.error_on_recompile = True  # one graph serves every length


def test_bad_inputs():
    qs, ks = torch.zeros(1, 2, 1, 1, dtype=torch.int32), torch.zeros(1, 2, 6, 1, dtype=torch.int32)
    pi, pp = torch.empty(1, 2, 1, 0, dtype=torch.int32), torch.empty(1, 2, 1, 0)
    with pytest.raises(RuntimeError, match="bits must be >= 1, got 0"):
        torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, None, 2, 0)
    with pytest.raises(RuntimeError, match="signatures of 40 bits must have 2 int32 words"):
        torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, None, 2, 40)
    with pytest.raises(RuntimeError, match="query_signatures must be int32"):
        torch.ops.sah.hash_topk_mask(qs.float(), ks, pi, pp, None, 2, 8)
    with pytest.raises(RuntimeError, match="size must be >= 0"):
        torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, None, -1, 8)
    with pytest.raises(RuntimeError, match="query heads 2 must be a multiple of key_signatures"):
        torch.ops.sah.hash_topk_mask(qs, ks.new_zeros(1, 3, 6, 1), pi, pp, None, 2, 8)
    with pytest.raises(RuntimeError, match="x must be float16, bfloat16, float32 or float64"):
        torch.ops.sah.hash_pack_signs(qs)
    keys, books = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 4, 3, 2)
    with pytest.raises(RuntimeError, match="subspaces \\* sub_dim = 4 \\* 3 must equal head_dim 8"):
        torch.ops.sah.pq_encode(keys, books.reshape(1, 2, 4, 2, 3))
    with pytest.raises(RuntimeError, match="1 to 256 centroids"):
        torch.ops.sah.pq_encode(keys, torch.randn(1, 2, 4, 257, 2))
    with pytest.raises(RuntimeError, match="codes must be uint8"):
        torch.ops.sah.pq_topk_mask(torch.randn(1, 2, 1, 8), books, keys, pi, pp, None, 2)
    codes = torch.ops.sah.pq_encode(keys, books)
    with pytest.raises(RuntimeError, match="prev_indices must lie in"):
        bad = torch.full((1, 2, 1, 1), 9, dtype=torch.int32)
        torch.ops.sah.pq_topk_mask(
            torch.randn(1, 2, 1, 8), books, codes, bad, torch.ones(1, 2, 1, 1), None, 2
        )


# ----------------------------------------------------------------------------------------------
# CUDA kernels: the same signatures, codes, picks and probabilities as the CPU kernels.
#
# Each test builds its inputs on the CPU and again on the GPU (non-contiguous views are taken on
# each device, so that the GPU kernels see them too). The CPU sums a PQ lookup-table entry in an
# order its compiler may vectorise, so exact top-k comparisons use dyadic queries and centroids
# (every partial sum is exact); with random floats only near-ties may differ.

CUDA = "cuda"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MASK_KINDS = ["none", "causal", "padded_bf16", "offsets", "offsets_f64", "bool", "static"]
PREV_KINDS = ["empty", "sink_local", "random"]


def assert_same(got, want):
    """The GPU op's outputs equal the CPU op's: dtype, shape and every value."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.device.type == torch.device(CUDA).type
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.cpu(), w)


def on_cuda(*tensors):
    return [t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors]


def assert_equal_outputs(got, want):
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def hf_mask(b, sq, sk, dtype=torch.float32, valid=None, pad=(), width=None):
    """HF additive 4-D mask (b, 1, sq, width or sk) in ``dtype``: query i sits at position
    valid - sq + i of ``valid`` real keys (a static cache holds sk >= valid key rows), batch row
    r starts with pad[r] padding keys; forbidden keys hold the dtype's lowest value."""
    valid = sk if valid is None else valid
    width = sk if width is None else width
    pos = valid - sq + torch.arange(sq)
    allowed = (torch.arange(width)[None, :] <= pos[:, None]).expand(b, 1, sq, width).clone()
    for r, n in enumerate(pad):
        allowed[r, :, :, :n] = False
    low = torch.finfo(dtype).min
    return torch.zeros(b, 1, sq, width, dtype=dtype).masked_fill(~allowed, low)


def make_mask(kind, b, sq, sk, gen):
    """An attention mask of one of MASK_KINDS (None for "none")."""
    if kind == "none":
        return None
    if kind == "causal":
        return hf_mask(b, sq, sk)
    if kind == "padded_bf16":
        return hf_mask(b, sq, sk, torch.bfloat16, pad=(3,))
    if kind in ("offsets", "offsets_f64"):  # finite offsets on (b, h=1, sq, sk), some -inf keys
        dtype = torch.float32 if kind == "offsets" else torch.float64
        mask = hf_mask(b, sq, sk, dtype) + torch.randn(b, 1, sq, sk, generator=gen).to(dtype)
        mask[..., 1] = float("-inf")
        return mask
    if kind == "bool":  # a padding mask (b, 1, 1, sk)
        return torch.rand(b, 1, 1, sk, generator=gen) < 0.8
    if kind == "static":  # sk cache rows, the last 5 not written yet; 3 extra mask columns
        return hf_mask(b, sq, sk, valid=max(sk - 5, sq), width=sk + 3)
    raise ValueError(kind)


def prev_rows(kind, b, h, sq, sk, mask, gen):
    """Previous rows of one of PREV_KINDS: none, sink 2 + window 3 (p = 1), or random picks
    with p in {0.3, 1}."""
    empty = torch.empty(b, h, sq, 0, dtype=torch.int32), torch.empty(b, h, sq, 0)
    if kind == "empty":
        return empty
    if kind == "random":
        return to_rows(random_prev(b, h, sq, sk, gen, density=0.3))
    rows = torch.ops.sah.sink_mask(*empty, mask, sk, 2)
    return torch.ops.sah.local_mask(*rows, mask, sk, 3)


def dyadic(gen, *shape):
    """Multiples of 1/4 in [-2, 2]: exact in every float dtype, and so are their small sums."""
    return torch.randint(-8, 9, shape, generator=gen) / 4


HASH_SHAPES = [  # (batch, heads, key_heads, q_len, k_len)
    (1, 4, 4, 1, 40),
    (2, 4, 2, 1, 5000),  # decode over two key spans of a scoring block, GQA group of 2
    (2, 8, 1, 5, 30),  # 40 query rows of one key head: several row chunks
    (1, 12, 1, 3, 300),
    (2, 2, 2, 7, 9),
    (1, 2, 1, 6, 4),  # more queries than keys: the first rows see no key
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", HASH_SHAPES)
@pytest.mark.parametrize("bits", [5, 32, 45])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_cuda_hash_topk_equals_cpu(shape, bits, mask_kind):
    """Non-contiguous signatures (query heads transposed, key rows a prefix of a larger cache)
    with garbage in the padding bits, every mask kind, previous rows and budget."""
    b, h, hk, sq, sk = shape
    gen = torch.Generator().manual_seed(bits * 1000 + sk + sq * 7 + MASK_KINDS.index(mask_kind))
    q_base = ref_pack(torch.randn(b, sq, h, bits, generator=gen))
    cache = ref_pack(torch.randn(b, hk, sk + 8, bits, generator=gen))
    if bits % 32:  # set every padding bit of the last word: the kernels must ignore them
        pad = torch.tensor(-(1 << (bits % 32)), dtype=torch.int32)
        q_base[..., -1] |= pad
        cache[..., -1] |= pad
    mask = make_mask(mask_kind, b, sq, sk, gen)
    dev = (q_base.to(CUDA).transpose(1, 2), cache.to(CUDA)[:, :, :sk])
    for prev_kind in PREV_KINDS:
        pi, pp = prev_rows(prev_kind, b, h, sq, sk, mask, gen)
        for k in (0, 1, 7, sk):
            want = torch.ops.sah.hash_topk_mask(
                q_base.transpose(1, 2), cache[:, :, :sk], pi, pp, mask, k, bits
            )
            got = torch.ops.sah.hash_topk_mask(*dev, *on_cuda(pi, pp, mask), k, bits)
            assert_same(got, want)


@pytest.mark.gpu
@needs_cuda
def test_cuda_hash_topk_decode_128k_equals_cpu():
    """A decode step at 128K keys: 32 query heads over 8 key heads, bf16 HF mask with padding,
    sink + window rows before."""
    gen = torch.Generator().manual_seed(20)
    b, h, hk, sk, bits = 2, 32, 8, 131072, 32
    qs = ref_pack(torch.randn(b, h, 1, bits, generator=gen))
    ks = ref_pack(torch.randn(b, hk, sk, bits, generator=gen))
    mask = hf_mask(b, 1, sk, torch.bfloat16, pad=(0, 1000))
    pi, pp = prev_rows("sink_local", b, h, 1, sk, mask, gen)
    for k in (0, 2048, sk):
        want = torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, mask, k, bits)
        assert_same(torch.ops.sah.hash_topk_mask(*on_cuda(qs, ks, pi, pp, mask), k, bits), want)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_pack_signs_equals_cpu(dtype):
    """Exact zeros of both signs, NaN, infinities and tiny negatives (subnormal in float32 and
    bfloat16); strided, transposed, 1-D, empty and 9-D inputs."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, 5, 70, generator=gen).to(dtype)
    tiny = torch.finfo(dtype).tiny / 4
    special = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), -tiny, tiny]
    x[0, 0, 0, :7] = torch.tensor(special, dtype=dtype)
    cases = [
        lambda t: t,
        lambda t: t.transpose(1, 2),
        lambda t: t[..., ::2],  # strided bits (35 of them)
        lambda t: t[1, 2, 3, :33],
        lambda t: t[..., :0],
        lambda t: (
            t[:1, :1, :1, :40]
            .reshape(1, 1, 1, 1, 1, 1, 1, 1, 40)
            .expand(2, 1, 1, 1, 1, 1, 1, 2, 40)
        ),
    ]
    for view in cases:
        want = torch.ops.sah.hash_pack_signs(view(x))
        assert_same(torch.ops.sah.hash_pack_signs(view(x.to(CUDA))), want)
    assert torch.equal(torch.ops.sah.hash_pack_signs(x), ref_pack(x.double()))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sub,centroids", [(1, 5), (2, 16), (8, 256), (3, 33)])
def test_cuda_pq_encode_equals_cpu(dtype, sub, centroids):
    """Random floats, integers (many equal distances: the lower centroid), NaN and inf keys;
    the keys are a transposed view."""
    gen = torch.Generator().manual_seed(22 + sub * 10 + centroids)
    b, kvh, n, m = 2, 3, 50, 4
    for data in ("random", "integer"):
        if data == "random":
            base = torch.randn(b, n, kvh, m * sub, generator=gen)
            books = torch.randn(b, kvh, m, centroids, sub, generator=gen)
        else:
            base = torch.randint(-2, 3, (b, n, kvh, m * sub), generator=gen).float()
            books = torch.randint(-2, 3, (b, kvh, m, centroids, sub), generator=gen).float()
        base = base.to(dtype)
        base[0, 1, 0, :] = float("nan")
        base[0, 2, 1, 0] = float("inf")
        want = torch.ops.sah.pq_encode(base.transpose(1, 2), books)
        got = torch.ops.sah.pq_encode(base.to(CUDA).transpose(1, 2), books.to(CUDA))
        assert_same(got, want)
        if data == "integer":  # batch 1 holds no NaN or inf
            assert torch.equal(want[1:], ref_pq_encode(base.transpose(1, 2)[1:], books[1:]))


PQ_SHAPES = [  # (batch, heads, kv_heads, q_len, k_len, head_dim, sub_dim, centroids)
    (1, 4, 4, 1, 40, 16, 2, 16),
    (2, 8, 2, 1, 9000, 32, 8, 256),  # decode over two key spans, GQA group of 4
    (2, 8, 1, 5, 30, 8, 2, 4),  # 40 query rows of one kv head
    (1, 2, 1, 3, 300, 128, 2, 256),  # a 66 KB lookup table per row (opt-in shared memory)
    (1, 2, 2, 1, 20, 8, 8, 1),  # one centroid: every key scores the same
    (1, 2, 1, 6, 4, 8, 4, 3),  # more queries than keys: the first rows see no key
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", PQ_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_cuda_pq_topk_equals_cpu(shape, dtype, mask_kind):
    """Dyadic queries and centroids (exact lookup-table sums, many ties), transposed queries,
    codes a prefix of a larger cache, every mask kind, previous rows and budget."""
    b, h, kvh, sq, sk, d, sub, cents = shape
    gen = torch.Generator().manual_seed(sk + sq * 7 + d + MASK_KINDS.index(mask_kind))
    q_base = dyadic(gen, b, sq, h, d).to(dtype)
    books = dyadic(gen, b, kvh, d // sub, cents, sub)
    cache = torch.randint(0, cents, (b, kvh, sk + 4, d // sub), generator=gen).to(torch.uint8)
    mask = make_mask(mask_kind, b, sq, sk, gen)
    dev = (q_base.to(CUDA).transpose(1, 2), books.to(CUDA), cache.to(CUDA)[:, :, :sk])
    for prev_kind in PREV_KINDS:
        pi, pp = prev_rows(prev_kind, b, h, sq, sk, mask, gen)
        for k in (0, 1, 7, sk):
            want = torch.ops.sah.pq_topk_mask(
                q_base.transpose(1, 2), books, cache[:, :, :sk], pi, pp, mask, k
            )
            got = torch.ops.sah.pq_topk_mask(*dev, *on_cuda(pi, pp, mask), k)
            assert_same(got, want)


@pytest.mark.gpu
@needs_cuda
def test_cuda_pq_topk_random_floats_match_cpu_up_to_near_ties():
    """Random floats: the lookup-table entries may differ from the CPU's in the last bit, so a
    pick may differ only between keys whose exact scores tie the row's k-th best within 1e-4."""
    gen = torch.Generator().manual_seed(23)
    b, h, kvh, sq, sk, d, sub, cents, k = 2, 8, 2, 3, 2000, 64, 8, 256, 50
    q = torch.randn(b, h, sq, d, generator=gen)
    books = torch.randn(b, kvh, d // sub, cents, sub, generator=gen)
    codes = torch.randint(0, cents, (b, kvh, sk, d // sub), generator=gen).to(torch.uint8)
    mask = hf_mask(b, sq, sk)
    pi, pp = prev_rows("sink_local", b, h, sq, sk, mask, gen)
    want = dense(torch.ops.sah.pq_topk_mask(q, books, codes, pi, pp, mask, k), sk)
    got = dense(torch.ops.sah.pq_topk_mask(*on_cuda(q, books, codes, pi, pp, mask), k), sk)
    got = got.cpu()
    assert torch.equal(got.ne(0).sum(-1), want.ne(0).sum(-1))
    prev = dense((pi, pp), sk)
    exact = ref_pq_scores(q, books, codes) + mask.double()
    new = (want != 0) & (prev == 0)
    kth = torch.where(new, exact, torch.inf).amin(-1, keepdim=True)
    differ = got != want
    assert ((exact - kth).abs()[differ] < 1e-4).all()


@pytest.mark.gpu
@needs_cuda
def test_cuda_opcheck():
    gen = torch.Generator().manual_seed(24)
    b, h, hkv, sq, sk, d = 1, 4, 2, 2, 16, 8
    additive, _ = causal_additive(b, sq, sk)
    pi, pp = to_rows(random_prev(b, h, sq, sk, gen))
    x = torch.randn(b, h, sq, 40, generator=gen)
    qs, ks = ref_pack(x), ref_pack(torch.randn(b, hkv, sk, 40, generator=gen))
    keys = torch.randn(b, hkv, sk, d, generator=gen)
    books = torch.randn(b, hkv, 4, 5, 2, generator=gen)
    q = torch.randn(b, h, sq, d, generator=gen)
    x, qs, ks, keys, books, q, additive, pi, pp = on_cuda(
        x, qs, ks, keys, books, q, additive, pi, pp
    )
    torch.library.opcheck(torch.ops.sah.hash_pack_signs, (x,))
    torch.library.opcheck(torch.ops.sah.hash_topk_mask, (qs, ks, pi, pp, additive, 3, 40))
    torch.library.opcheck(torch.ops.sah.pq_encode, (keys, books))
    codes = torch.ops.sah.pq_encode(keys, books)
    torch.library.opcheck(torch.ops.sah.pq_topk_mask, (q, books, codes, pi, pp, additive, 3))


@pytest.mark.gpu
@needs_cuda
def test_cuda_compile_fullgraph():
    """Packing + hash top-k and encoding + PQ top-k, each one graph for every key length."""
    gen = torch.Generator().manual_seed(25)
    bits = 40

    def hash_step(x, key_signatures, pi, pp, mask):
        qs = torch.ops.sah.hash_pack_signs(x)
        k = key_signatures.shape[2] // 4
        return torch.ops.sah.hash_topk_mask(qs, key_signatures, pi, pp, mask, k, bits)

    def pq_step(q, keys, books, pi, pp, mask):
        codes = torch.ops.sah.pq_encode(keys, books)
        return torch.ops.sah.pq_topk_mask(q, books, codes, pi, pp, mask, keys.shape[2] // 4)

    torch._dynamo.reset()
    hash_compiled = torch.compile(hash_step, fullgraph=True, dynamic=True)
    pq_compiled = torch.compile(pq_step, fullgraph=True, dynamic=True)
    for sk in (24, 31, 40):
        mask = hf_mask(1, 1, sk).to(CUDA)
        pi, pp = on_cuda(*prev_rows("sink_local", 1, 4, 1, sk, mask.cpu(), gen))
        x = torch.randn(1, 4, 1, bits, generator=gen).to(CUDA)
        ks = ref_pack(torch.randn(1, 2, sk, bits, generator=gen)).to(CUDA)
        assert_equal_outputs(hash_compiled(x, ks, pi, pp, mask), hash_step(x, ks, pi, pp, mask))
        q = torch.randn(1, 4, 1, 8, generator=gen).to(CUDA)
        keys = torch.randn(1, 2, sk, 8, generator=gen).to(CUDA)
        books = torch.randn(1, 2, 4, 5, 2, generator=gen).to(CUDA)
        args = (q, keys, books, pi, pp, mask)
        assert_equal_outputs(pq_compiled(*args), pq_step(*args))


@pytest.mark.gpu
@needs_cuda
def test_cuda_ops_do_not_synchronise():
    """No host synchronisation in a decode step (torch's sync debug mode raises on one)."""
    gen = torch.Generator().manual_seed(26)
    sk = 3000
    mask = hf_mask(1, 1, sk)
    pi, pp = prev_rows("sink_local", 1, 4, 1, sk, mask, gen)
    x = torch.randn(1, 4, 1, 32, generator=gen)
    ks = ref_pack(torch.randn(1, 4, sk, 32, generator=gen))
    q, keys = torch.randn(1, 4, 1, 16, generator=gen), torch.randn(1, 2, sk, 16, generator=gen)
    books = torch.randn(1, 2, 8, 16, 2, generator=gen)
    x, ks, q, keys, books, mask, pi, pp = on_cuda(x, ks, q, keys, books, mask, pi, pp)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.sah.hash_topk_mask(torch.ops.sah.hash_pack_signs(x), ks, pi, pp, mask, 64, 32)
        codes = torch.ops.sah.pq_encode(keys, books)
        torch.ops.sah.pq_topk_mask(q, books, codes, pi, pp, mask, 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def integer_weights(gen, heads, dims):
    """HashAttention weights of small integers: with relu, inputs in [-2, 2] and two layers of
    width 16, every MLP value is an integer below 2^11 (exact even in TF32), so CPU and GPU
    signatures agree bit for bit."""

    def ints(*shape):
        return torch.randint(-2, 3, shape, generator=gen).float()

    layers = list(itertools.pairwise(dims))
    return {
        0: {
            f"{side}_{part}": [
                ints(heads, a, b) if part == "matrix" else ints(heads, b) for a, b in layers
            ]
            for side in ("query", "key")
            for part in ("matrix", "bias")
        }
    }


def run_chain(maskers, steps, device):
    """Dense masks of a masker chain over decode-like steps (q, k, mask) on ``device``."""
    smd, masks = {}, []
    for q, k, mask in steps:
        b, h, sq, sk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        m = Mask.create_empty_mask((b, h, sq, sk), torch.float32, torch.device(device))
        q, k, mask = (t.to(device) for t in (q, k, mask))
        for masker in maskers:
            m = masker.add_mask(k, q, None, mask, 0.3, 0.0, smd, m, layer_idx=0)
        masks.append(m.get_dense_mask().cpu())
    return masks, smd


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("heavy", [7, 0.1])
def test_cuda_maskers_end_to_end_equal_cpu(heavy):
    """Sink + window + HashAttention, and sink + window + PQCache, over a prefill and decode
    steps with a padded HF mask: the GPU selects exactly the CPU's keys. Integer data keeps
    every signature and score exact on both devices; PQCache fits its codebooks on 12 keys
    with 16 centroids, so every k-means cluster holds equal sub-vectors (exact means)."""
    gen = torch.Generator().manual_seed(27)
    b, h, hkv, d, total = 2, 4, 2, 16, 40
    k = torch.randint(-2, 3, (b, hkv, total, d), generator=gen).float()

    def steps(lengths):
        return [
            (
                torch.randint(-2, 3, (b, h, sq, d), generator=gen).float(),
                k[:, :, :sk],
                hf_mask(b, sq, sk, pad=(2,)),
            )
            for sq, sk in lengths
        ]

    fixed = [SinkMasker(SinkMaskerConfig(2)), LocalMasker(LocalMaskerConfig(3))]
    weights = integer_weights(gen, h, [d, 16, 32])
    hash_masker = HashAttentionTopKMasker(hash_config(weights, heavy=heavy, act="relu"))
    hash_steps = steps([(6, 30), (1, 31), (1, 32), (3, 38), (1, 40)])
    want, smd_cpu = run_chain(fixed + [hash_masker], hash_steps, "cpu")
    got, smd_gpu = run_chain(fixed + [hash_masker], hash_steps, CUDA)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(smd_gpu["key"][0].cpu(), smd_cpu["key"][0])

    pq = PQCache(PQCacheConfig(heavy_size=heavy, pq_sub_dim=4, pq_bits=4, kmeans_iters=3))
    pq_steps = steps([(2, 12), (1, 13), (1, 20), (2, 40)])
    want, smd_cpu = run_chain(fixed + [pq], pq_steps, "cpu")
    books = smd_cpu["pq_centroids"][0]
    assert torch.equal(books, books.round())  # the premise: exact integer centroids
    got, smd_gpu = run_chain(fixed + [pq], pq_steps, CUDA)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(smd_gpu["pq_centroids"][0].cpu(), books)
    assert torch.equal(smd_gpu["pq_codes"][0].cpu(), smd_cpu["pq_codes"][0])


@pytest.mark.gpu
@needs_cuda
def test_cuda_efficient_hash_attention_equals_cpu():
    """The fused HashAttention path on the GPU attends over exactly the CPU's rows."""
    gen = torch.Generator().manual_seed(28)
    b, h, hkv, d, total = 2, 4, 2, 16, 70
    weights = integer_weights(gen, h, [d, 16, 32])
    k = torch.randint(-2, 3, (b, hkv, total, d), generator=gen).float()
    v = torch.randn(b, hkv, total, d, generator=gen)
    config = HashAttentionConfig(0.1, 3, 4, weights, 32, 2, 16, hat_mlp_activation="relu")
    devices = ("cpu", CUDA)
    smd = {dev: {} for dev in devices}
    attention = {dev: EfficientAttention.create_from_config(config) for dev in devices}
    for sq, sk in ((6, 50), (1, 51), (1, 52), (3, 60), (1, 70)):
        q = torch.randint(-2, 3, (b, h, sq, d), generator=gen).float()
        mask = hf_mask(b, sq, sk, pad=(0, 4))
        outs, rows = {}, {}
        for dev in devices:
            args = (None, *(t.to(dev) for t in (q, k[:, :, :sk], v[:, :, :sk], mask)), 0.25, 0.0)
            with mock.patch.object(ops, "sparse_attention", wraps=ops.sparse_attention) as spy:
                outs[dev], _ = attention[dev].custom_attention(
                    *args, sparse_meta_data=smd[dev], layer_idx=0
                )
            rows[dev] = [t.cpu() for t in spy.call_args.args[3:5]]
        assert all(torch.equal(g, w) for g, w in zip(rows[CUDA], rows["cpu"])), (sq, sk)
        torch.testing.assert_close(outs[CUDA].cpu(), outs["cpu"], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_cuda_bad_inputs():
    qs = torch.zeros(1, 2, 1, 1, dtype=torch.int32, device=CUDA)
    ks = torch.zeros(1, 2, 6, 1, dtype=torch.int32, device=CUDA)
    pi = torch.empty(1, 2, 1, 0, dtype=torch.int32, device=CUDA)
    pp = torch.empty(1, 2, 1, 0, device=CUDA)
    with pytest.raises(RuntimeError, match="attention_mask must be on"):
        torch.ops.sah.hash_topk_mask(qs, ks, pi, pp, torch.zeros(1, 1, 1, 6), 2, 8)
    with pytest.raises(RuntimeError, match="key_signatures must be on"):
        torch.ops.sah.hash_topk_mask(qs, ks.cpu(), pi, pp, None, 2, 8)
    with pytest.raises(RuntimeError, match="codebooks must be on"):
        torch.ops.sah.pq_encode(torch.zeros(1, 2, 6, 8, device=CUDA), torch.zeros(1, 2, 4, 3, 2))
    # A query row and its 256 x 256 lookup table (257 KB) exceed an H100's shared memory.
    q = torch.zeros(1, 2, 1, 256, device=CUDA)
    books = torch.zeros(1, 2, 256, 256, 1, device=CUDA)
    codes = torch.zeros(1, 2, 6, 256, dtype=torch.uint8, device=CUDA)
    with pytest.raises(RuntimeError, match="must fit in the GPU's shared memory"):
        torch.ops.sah.pq_topk_mask(q, books, codes, pi, pp, None, 2)
