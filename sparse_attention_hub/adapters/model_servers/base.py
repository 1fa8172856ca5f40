"""ModelServer: a process-wide, reference-counted cache of models and tokenizers."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple


@dataclass
class _Entry:
    obj: Any
    refs: int


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


class ModelServer(ABC):
    """Singleton cache: one model per (name, device, kwargs), one tokenizer per (name, kwargs).

    ``get_*`` loads on first use and counts references; ``clear_*`` releases one and frees the
    object when none remain. Keys use the real device (``"cuda:1"``, not ``"cuda"``).
    """

    _instance: Optional["ModelServer"] = None
    _instance_lock = threading.Lock()

    def __new__(cls) -> "ModelServer":
        with ModelServer._instance_lock:
            if ModelServer._instance is None:
                instance = super().__new__(cls)
                instance._models: Dict[str, _Entry] = {}
                instance._tokenizers: Dict[str, _Entry] = {}
                instance._lock = threading.RLock()
                ModelServer._instance = instance
            elif not isinstance(ModelServer._instance, cls):
                raise ValueError(
                    f"a {type(ModelServer._instance).__name__} already exists; one ModelServer "
                    "class per process"
                )
            return ModelServer._instance

    @abstractmethod
    def _create_model(self, model_name: str, device: Optional[str], model_kwargs: Dict) -> Any:
        """Loads a model."""

    @abstractmethod
    def _create_tokenizer(self, tokenizer_name: str, tokenizer_kwargs: Dict) -> Any:
        """Loads a tokenizer."""

    def _get(self, table: Dict[str, _Entry], key: str, create: Any) -> Any:
        with self._lock:
            entry = table.get(key)
            if entry is None:
                entry = table[key] = _Entry(create(), 0)
            entry.refs += 1
            return entry.obj

    def _clear(self, table: Dict[str, _Entry], key: str) -> bool:
        with self._lock:
            entry = table.get(key)
            if entry is None:
                return False
            entry.refs -= 1
            if entry.refs <= 0:
                del table[key]
            return True

    def get_model(self, model_name: str, device: Optional[str], model_kwargs: Dict) -> Any:
        key = _key(model_name, device, model_kwargs)
        return self._get(
            self._models, key, lambda: self._create_model(model_name, device, model_kwargs)
        )

    def clear_model(self, model_name: str, device: Optional[str], model_kwargs: Dict) -> bool:
        """Releases one reference; the model is dropped when none remain."""
        return self._clear(self._models, _key(model_name, device, model_kwargs))

    def get_tokenizer(self, tokenizer_name: str, tokenizer_kwargs: Dict) -> Any:
        key = _key(tokenizer_name, tokenizer_kwargs)
        return self._get(
            self._tokenizers, key, lambda: self._create_tokenizer(tokenizer_name, tokenizer_kwargs)
        )

    def clear_tokenizer(self, tokenizer_name: str, tokenizer_kwargs: Dict) -> bool:
        return self._clear(self._tokenizers, _key(tokenizer_name, tokenizer_kwargs))

    def reference_counts(self) -> Tuple[Dict[str, int], Dict[str, int]]:
        """(model key -> references, tokenizer key -> references)."""
        with self._lock:
            return (
                {k: e.refs for k, e in self._models.items()},
                {k: e.refs for k, e in self._tokenizers.items()},
            )

    def release_memory_and_clean_all(self) -> None:
        """Drops every cached model and tokenizer, referenced or not."""
        with self._lock:
            self._models.clear()
            self._tokenizers.clear()
