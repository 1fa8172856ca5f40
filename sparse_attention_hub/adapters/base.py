"""Request/response types and the adapter interfaces (the reference API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from ..sparse_attention.base import SparseAttention, SparseAttentionConfig


@dataclass
class Request:
    """A context that is prefilled once (dense) and one or more questions about it."""

    context: str
    questions: Union[str, List[str]]
    answer_prefix: str = ""


@dataclass
class RequestResponse:
    """Answers: a str when the request's ``questions`` was a str, else a list."""

    responses: Union[str, List[str]]


class ModelHubAdapterInterface(ABC):
    """Something that answers requests with a model."""

    @abstractmethod
    def process_request(
        self,
        request: Request,
        generation_kwargs: Optional[Dict[str, Any]] = None,
        request_kwargs: Optional[Dict[str, Any]] = None,
    ) -> RequestResponse:
        """Answers every question of ``request``."""


class SparseAttentionAdapterInterface(ABC):
    """Something that plugs a sparse attention into a model library."""

    @abstractmethod
    def get_custom_attention_function(self, sparse_attention: SparseAttention) -> Callable:
        """The attention function, with the model library's signature."""


class ModelAdapter(ModelHubAdapterInterface, SparseAttentionAdapterInterface, ABC):
    """Dense by default; sparse only inside :meth:`enable_sparse_mode`."""

    def __init__(
        self,
        model_name: str,
        sparse_attention_config: Optional[SparseAttentionConfig],
        **kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.sparse_attention_config = sparse_attention_config
        self.kwargs = kwargs
        self.sparse_attention: Optional[SparseAttention] = (
            SparseAttention.create_from_config(sparse_attention_config)
            if sparse_attention_config is not None
            else None
        )

    @abstractmethod
    @contextmanager
    def enable_sparse_mode(self) -> Iterator[None]:
        """Within this block the model's attention runs the sparse attention."""
        yield
