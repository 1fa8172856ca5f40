"""The two attention micro metrics, computed from one ``ResearchAttention.observer`` event.

Both cost a host sync, and the output error also a dense attention: call them only for records
that were already chosen for logging.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

#: Fraction of the (b, h, q, k) mask positions the maskers chose (reference semantics).
DENSITY = "research_attention_density"
#: ||o_sparse - o_dense|| / ||o_dense|| over the call's valid query rows (fp32 dense reference).
OUTPUT_ERROR = "research_attention_output_error"


def attention_density(event: Dict[str, Any]) -> float:
    """``mask.get_density()``: an EMPTY mask (attention ran dense) gives 0.0, as upstream."""
    return float(event["mask"].get_density())


def attention_output_error(event: Dict[str, Any]) -> float:
    """Relative L2 error of the call's output against dense fp32 attention over the same keys.

    Query rows that may see no key at all (left padding in a batch) are left out: their dense
    output is undefined.
    """
    queries, keys, values = event["queries"], event["keys"], event["values"]
    mask = event.get("attention_mask")
    if mask is not None and mask.dim() == 4:
        mask = mask[..., : keys.shape[2]]
        if mask.dtype != torch.bool:
            mask = mask.float()
    else:
        mask = None
    dense = torch.nn.functional.scaled_dot_product_attention(
        queries.float(),
        keys.float(),
        values.float(),
        attn_mask=mask,
        scale=event["scaling"],
        enable_gqa=True,
    ).transpose(1, 2)  # (b, q, h, d), the layout of event["output"]
    sparse = event["output"].float()
    if mask is not None and mask.dtype == torch.bool:
        rows = mask.any(-1).expand(dense.shape[0], dense.shape[2], dense.shape[1])
        rows = rows.transpose(1, 2)  # (b, q, h)
        dense, sparse = dense[rows], sparse[rows]
    return float((sparse - dense).norm() / dense.norm().clamp_min(torch.finfo(torch.float32).tiny))
