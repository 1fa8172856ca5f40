"""Seeds and layer indices of the sampling maskers.

The sampling ops draw counter-based random numbers keyed by ``(seed, layer, query row, key)``,
so a mask depends only on its inputs: the same seed gives the same mask on CPU and CUDA. A
masker configured with ``seed=None`` draws a fresh seed from torch's default CPU generator,
so ``torch.manual_seed`` keeps runs reproducible.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

_SEED_HIGH = 2**62


def check_seed(seed: Optional[int]) -> None:
    """Raises ValueError unless ``seed`` is None or an int64 (bool is refused)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be an int in [-2**63, 2**63) or None, got {seed!r}")


def resolve_seed(seed: Optional[int]) -> int:
    """``seed`` itself, or for None a seed drawn from torch's default CPU generator.

    Drawing reads a CPU tensor, so it never waits for a GPU; under ``torch.compile`` give the
    masker an explicit seed (the draw is a data-dependent Python int).
    """
    if seed is not None:
        return seed
    return int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64))


def layer_index(kwargs: Dict[str, Any]) -> int:
    """The ``layer_idx`` keyword (0 when absent): it keys the random streams per layer."""
    layer = kwargs.get("layer_idx")
    return 0 if layer is None else int(layer)
