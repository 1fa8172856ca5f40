"""Model adapters: run sparse attention inside HuggingFace models."""

from .base import (
    ModelAdapter,
    ModelHubAdapterInterface,
    Request,
    RequestResponse,
    SparseAttentionAdapterInterface,
)
from .huggingface import ModelAdapterHF
from .model_servers import ModelServer, ModelServerHF
from .registry import (
    AttentionRegistry,
    BaseAttentionFunction,
    EfficientAttentionFunction,
    ResearchAttentionFunction,
    configure_model_attention,
    default_registry,
    get_attention_adapter,
    list_registered_attention_functions,
    register_sparse_attention,
    restore_model_attention,
    unregister_attention_function,
)

__all__ = [
    "AttentionRegistry",
    "BaseAttentionFunction",
    "EfficientAttentionFunction",
    "ModelAdapter",
    "ModelAdapterHF",
    "ModelHubAdapterInterface",
    "ModelServer",
    "ModelServerHF",
    "Request",
    "RequestResponse",
    "ResearchAttentionFunction",
    "SparseAttentionAdapterInterface",
    "configure_model_attention",
    "default_registry",
    "get_attention_adapter",
    "list_registered_attention_functions",
    "register_sparse_attention",
    "restore_model_attention",
    "unregister_attention_function",
]
