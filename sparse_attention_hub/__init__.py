"""sparse_attention_hub: sparse-attention research operators (torch.ops.sah.*) for real models."""

import torch  # noqa: F401  (loads libtorch before the operator library)

from sparse_attention_hub import (
    _C,  # noqa: F401  (registers torch.ops.sah.*)
    ops,
)

__all__ = ["ops"]
__version__ = "0.1.0"
