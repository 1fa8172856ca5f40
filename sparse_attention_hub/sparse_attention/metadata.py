"""Placeholder metadata type of the reference API (kept so its import path works)."""


class SparseAttentionMetadata:
    """Metadata of a sparse attention mechanism; holds nothing yet.

    Per-request masker state lives in explicit state objects next to the KV cache instead.
    """
