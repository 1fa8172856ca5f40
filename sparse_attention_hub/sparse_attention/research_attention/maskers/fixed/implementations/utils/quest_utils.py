"""Quest helpers in plain PyTorch (dense, for research code and tests).

The masker itself runs ``sah::quest_page_minmax_update`` and ``sah::quest_topk_mask``; these
functions keep the reference's helper API and results. Pages split the key axis into chunks of
``page_size`` keys; the last page may be partial (no padding keys).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def compute_page_min_max(keys_rep: Tensor, page_size: int, num_pages: int) -> Tuple[Tensor, Tensor]:
    """Per-page, per-channel min and max of keys ``(B, H, K, D)``: two ``(B, H, P, D)`` tensors
    (``P = num_pages``, normally ``ceil(K / page_size)``); a partial last page covers only its
    real keys."""
    batch, heads, _, dim = keys_rep.shape
    pad = num_pages * page_size - keys_rep.shape[2]
    lows = F.pad(keys_rep, (0, 0, 0, pad), value=float("inf")) if pad > 0 else keys_rep
    highs = F.pad(keys_rep, (0, 0, 0, pad), value=float("-inf")) if pad > 0 else keys_rep
    shape = (batch, heads, num_pages, page_size, dim)
    return lows.reshape(shape).amin(dim=3), highs.reshape(shape).amax(dim=3)


def quest_page_scores(queries: Tensor, page_min: Tensor, page_max: Tensor) -> Tensor:
    """Quest's upper bound of ``q.k`` over each page's box: ``sum_c max(q_c lo_c, q_c hi_c)``.

    ``queries`` ``(B, H, Q, D)``, ``page_min``/``page_max`` ``(B, H, P, D)`` (broadcastable);
    returns ``(B, H, Q, P)``.
    """
    q = queries.unsqueeze(3)
    return torch.maximum(q * page_min.unsqueeze(2), q * page_max.unsqueeze(2)).sum(dim=-1)


def pages_to_token_mask(
    topk_pages: Tensor, K: int, page_size: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A ``(B, H, Q, K)`` mask of ``dtype`` with 1 on every key of the pages listed in
    ``topk_pages`` ``(B, H, Q, Kp)`` and 0 elsewhere (all zeros when no page is listed)."""
    out = torch.zeros((*topk_pages.shape[:3], K), device=device, dtype=dtype)
    if K == 0 or topk_pages.numel() == 0:
        return out
    page_of_key = torch.arange(K, device=device) // page_size
    chosen = (page_of_key[None, None, None, None, :] == topk_pages.unsqueeze(-1)).any(dim=3)
    return out.masked_fill_(chosen, 1)


def attention_mask_to_allowed_prob(attention_mask: Tensor, K: int) -> Tensor:
    """Float32 ``(B, 1, *, K)`` with 1 where the mask allows a key and 0 where it forbids it.

    A bool mask allows False entries; a float (additive) mask allows entries ``>= 0``. The last
    axis is cut to ``K``; a 3-D mask ``(B, Q, K')`` gets a head axis.
    """
    window = attention_mask[..., :K]
    if window.dtype == torch.bool:
        allowed = ~window
    else:
        allowed = window >= 0
    allowed = allowed.to(torch.float32)
    return allowed.unsqueeze(1) if allowed.dim() == 3 else allowed


def pages_valid(allowed_prob: Tensor, page_size: int, num_pages: int) -> Tensor:
    """Bool ``(B, Q, P)``: whether each page holds a key with allowed probability > 0.

    ``allowed_prob`` is ``(B, H', Q, K)`` (``Q`` may be 1); a page counts as valid when any head
    allows one of its keys. Works on non-contiguous inputs.
    """
    batch, _, queries, keys = allowed_prob.shape
    pad = num_pages * page_size - keys
    padded = F.pad(allowed_prob, (0, pad), value=0.0) if pad > 0 else allowed_prob
    paged = padded.reshape(batch, -1, queries, num_pages, page_size)
    return paged.amax(dim=(1, 4)) > 0
