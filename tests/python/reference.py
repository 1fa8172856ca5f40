"""Plain-PyTorch transcription of the reference implementation's dense algorithms (the
independent reference the masker tests compare against). Dense masks of shape (b, h, sq, sk)."""

import torch

MIN = torch.finfo(torch.float32).min


def causal_additive(b, sq, sk, dtype=torch.float32):
    """HF-style additive causal mask (b, 1, sq, sk) and its boolean 'allowed' (sq, sk)."""
    pos = sk - sq + torch.arange(sq)
    allowed = torch.arange(sk)[None, :] <= pos[:, None]
    mask = torch.zeros(b, 1, sq, sk, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask, allowed


def _rep(k, h):
    return k.repeat_interleave(h // k.shape[1], 1)


def ref_sink(prev, s):
    out = prev.clone()
    out[..., :s] = 1.0
    return out


def ref_local(prev, w, zero_future=False):
    """Window of the w most recent keys; upstream also erases the previous mask's future."""
    _, _, sq, sk = prev.shape
    out = prev.clone()
    j = torch.arange(sk)
    pos = sk - sq + torch.arange(sq)
    band = (j[None, :] >= pos[:, None] - w + 1) & (j[None, :] <= pos[:, None])
    out[..., band] = 1.0
    if zero_future:
        out[..., j[None, :] > pos[:, None]] = 0.0
    return out


def ref_topk(q, k, additive, prev, kk):
    """Top-k of raw q.k + A among keys not yet active; picks get 1.0."""
    s = q.double() @ _rep(k, q.shape[1]).double().transpose(-1, -2) + additive.double()
    s = s.masked_fill(prev != 0, MIN)
    top = s.topk(kk, dim=-1).indices
    return (prev + torch.zeros_like(prev).scatter(-1, top, 1.0)).clamp(0, 1)


def ref_topp(q, k, additive, prev, top_p, scale):
    """Top-p over the residual mass exp(scale q.k + A - max) of keys not yet active."""
    x = scale * (q.double() @ _rep(k, q.shape[1]).double().transpose(-1, -2)) + additive.double()
    x = x.masked_fill(prev != 0, MIN)
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    y = e.sort(-1, descending=True).values
    c = y.cumsum(-1) / y.sum(-1, keepdim=True)
    r = torch.searchsorted(c, torch.full_like(c[..., :1], top_p), right=True)
    tau = y.gather(-1, r.clamp(max=y.shape[-1] - 1))
    return (prev + (e >= tau).double()).clamp(0, 1)


def ref_masked_attention(q, k, v, additive, scale, mask=None):
    """Upstream's attention over a dense mask (weights 1/p on non-zeros; None = dense),
    in float64; returns (b, sq, h, d)."""
    h = q.shape[1]
    s = scale * (q.double() @ _rep(k, h).double().transpose(-1, -2))
    if additive is not None:
        s = s + additive.double()
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    if mask is not None:
        m = mask.double()
        e = e * torch.where(m != 0, 1.0 / m.clamp_min(1e-30), torch.zeros_like(m))
    out = (e @ _rep(v, h).double()) / e.sum(-1, keepdim=True)
    return out.transpose(1, 2)
