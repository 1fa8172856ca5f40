"""ModelServerHF: loads HuggingFace causal LMs and tokenizers (hub names, folders, GGUF files)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from .base import ModelServer


def split_gguf(name: str, kwargs: Dict) -> Tuple[str, Dict]:
    """A path to a ``.gguf`` file becomes (its folder, kwargs + ``gguf_file``)."""
    if name.endswith(".gguf") and "gguf_file" not in kwargs:
        return os.path.dirname(os.path.abspath(name)), {
            **kwargs,
            "gguf_file": os.path.basename(name),
        }
    return name, kwargs


class ModelServerHF(ModelServer):
    """HuggingFace implementation of :class:`ModelServer`."""

    def _create_model(self, model_name: str, device: Optional[str], model_kwargs: Dict) -> Any:
        from transformers import AutoModelForCausalLM

        name, kwargs = split_gguf(model_name, dict(model_kwargs))
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        if device is not None and "device_map" not in kwargs:
            model = model.to(device)
        return model.eval()

    def _create_tokenizer(self, tokenizer_name: str, tokenizer_kwargs: Dict) -> Any:
        from transformers import AutoTokenizer

        name, kwargs = split_gguf(tokenizer_name, dict(tokenizer_kwargs))
        return AutoTokenizer.from_pretrained(name, **kwargs)
