"""ModelAdapterHF: runs requests on a HuggingFace causal LM with sparse attention.

Flow of :meth:`ModelAdapterHF.process_request` (evaluation setup B by default):
the context is prefilled ONCE, densely; each question continues from that cache (cropped back
after the question), its tokens and every generated token run through the sparse attention, and
generation goes through ``model.generate`` so every generation kwarg works.
"""

from __future__ import annotations

import copy
import secrets
import string
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..attention_manager import AttentionManagerMixin
from ..sparse_attention.base import SparseAttention, SparseAttentionConfig
from ..sparse_attention.research_attention.maskers.fixed.implementations.key_rows_state import (
    raise_if_stale,
)
from .base import ModelAdapter, Request, RequestResponse
from .model_servers import ModelServerHF
from .registry import AttentionRegistry, default_registry

Tensor = torch.Tensor

SETUPS = ("B", "A")
TRUNCATIONS = ("head", "middle")
CACHES = ("dynamic", "static")


class ModelAdapterHF(AttentionManagerMixin, ModelAdapter):
    """A HuggingFace model whose attention can run a sparse attention configuration.

    Args:
        model_name: hub name, local folder, or path to a ``.gguf`` file.
        sparse_attention_config: the sparse attention; None gives a dense-only adapter.
        model_kwargs / tokenizer_kwargs: passed to ``from_pretrained``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA when available. Ignored when
            ``model_kwargs`` has a ``device_map``.
        setup: ``"B"`` (default: context dense; question and generation sparse) or ``"A"``
            (whole prompt dense except its last token; generation sparse).
        dense_layers: layer indices that always run dense attention.
        cache_implementation: ``"dynamic"`` (default: transformers' DynamicCache, the key length
            is the number of cached tokens) or ``"static"`` (a StaticCache sized for each
            request: fixed shapes, so ``generate`` compiles the decode step on CUDA, as
            transformers does for static caches; pass ``disable_compile=True`` in the
            generation kwargs to stay eager). With a static cache the maskers see the whole
            buffer as keys and the attention mask hides its unused tail: integer sizes select
            the same keys as with a dynamic cache, but fractional sizes and the full-attention
            shortcuts refer to the buffer length. Maskers that keep per-key state
            (HashAttention, PQCache, Quest, MagicPig) recompute it for the buffer positions
            each call writes, read from the attention mask on the device (see
            ``key_rows_state``), so they work in the compiled decode step too.
        attention_type: pins an AttentionManager backend ("dense", "sdpa", "sparse",
            "chunked"); None lets :meth:`select_attention` choose. Each request logs the
            backend chosen for its question shape (logger
            ``sparse_attention_hub.attention_manager``).
    """

    def __init__(
        self,
        model_name: str,
        sparse_attention_config: Optional[SparseAttentionConfig],
        model_kwargs: Optional[Dict[str, Any]] = None,
        tokenizer_kwargs: Optional[Dict[str, Any]] = None,
        device: Optional[str] = None,
        *,
        setup: str = "B",
        dense_layers: Optional[Iterable[int]] = None,
        registry: AttentionRegistry = default_registry,
        model: Optional[nn.Module] = None,
        tokenizer: Any = None,
        cache_implementation: str = "dynamic",
        attention_type: Optional[str] = None,
    ) -> None:
        super().__init__(model_name, sparse_attention_config)
        if setup not in SETUPS:
            raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
        if cache_implementation not in CACHES:
            raise ValueError(
                f"cache_implementation must be one of {CACHES}, got {cache_implementation!r}"
            )
        self.cache_implementation = cache_implementation
        self.model_kwargs = dict(model_kwargs or {})
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        if device is None and "device_map" not in self.model_kwargs:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = str(torch.device(device)) if device is not None else None
        if self.device == "cuda":
            self.device = f"cuda:{torch.cuda.current_device()}"
        self.setup = setup
        self.dense_layers = set(dense_layers or ())
        self._registry = registry
        self._server: Optional[ModelServerHF] = None
        if model is None:
            self._server = ModelServerHF()
            model = self._server.get_model(model_name, self.device, self.model_kwargs)
            tokenizer = self._server.get_tokenizer(model_name, self.tokenizer_kwargs)
        elif tokenizer is None:
            raise ValueError("a tokenizer is required when a model object is given")
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._separator = "".join(secrets.choice(string.ascii_letters) for _ in range(100))
        self._attention_name: Optional[str] = None
        self.init_attention_manager(attention_type)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        tokenizer: Any,
        sparse_attention_config: Optional[SparseAttentionConfig],
        **kwargs: Any,
    ) -> "ModelAdapterHF":
        """An adapter over an already built model and tokenizer (nothing is loaded)."""
        device = kwargs.pop("device", str(next(model.parameters()).device))
        name = getattr(model.config, "name_or_path", "") or type(model).__name__
        return cls(
            name, sparse_attention_config, device=device, model=model, tokenizer=tokenizer, **kwargs
        )

    # ------------------------------------------------------------------------------------------
    # Registration and sparse mode.
    @property
    def attention_name(self) -> str:
        """transformers' name of this adapter's sparse attention (registered on first use)."""
        if self.sparse_attention is None:
            raise RuntimeError("this adapter was built without a sparse attention config")
        if self._attention_name is None:
            self._attention_name = self._registry.register_sparse_attention(self.sparse_attention)
        return self._attention_name

    def get_custom_attention_function(self, sparse_attention: SparseAttention) -> Callable:
        if sparse_attention is not self.sparse_attention:
            name = self._registry.register_sparse_attention(sparse_attention)
            return self._registry.get_attention_adapter(name)
        return self._registry.get_attention_adapter(self.attention_name)

    def _sparse_layers(self) -> Optional[List[int]]:
        if not self.dense_layers:
            return None
        n = self.model.config.get_text_config().num_hidden_layers
        return [i for i in range(n) if i not in self.dense_layers]

    @contextmanager
    def enable_sparse_mode(self) -> Iterator[None]:
        """Within this block the model runs the sparse attention (restored on exit, also after
        an exception)."""
        if self.sparse_attention is None:
            raise RuntimeError("enable_sparse_mode needs a sparse attention config")
        previous = self._registry.configure_model_attention(
            self.model, self.attention_name, self._sparse_layers()
        )
        try:
            yield
        finally:
            self._registry.restore_model_attention(self.model, previous)

    @contextmanager
    def _dense_mode(self) -> Iterator[None]:
        """Dense attention even inside an outer ``enable_sparse_mode`` (context prefill)."""
        if self._attention_name is None:
            yield
            return
        function = self._registry.get_attention_adapter(self._attention_name)
        saved = function.layer_indices
        function.layer_indices = set()
        try:
            yield
        finally:
            function.layer_indices = saved

    @contextmanager
    def _request_state(self, state: Dict[Any, Any]) -> Iterator[None]:
        if self.sparse_attention is None:
            yield
            return
        function = self._registry.get_attention_adapter(self.attention_name)
        saved = function.state
        function.state = state
        try:
            yield
        finally:
            function.state = saved
        raise_if_stale(state)  # a stale masker state flagged on the device (CUDA) raises here

    # ------------------------------------------------------------------------------------------
    # Requests.
    def _encode(self, request: Request) -> Tuple[Tensor, List[Tensor]]:
        """Context ids (with the chat template's head) and each question's ids (question +
        template tail + answer prefix); the BOS token appears once."""
        questions = [request.questions] if isinstance(request.questions, str) else request.questions
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": request.context + self._separator}],
                tokenize=False,
                add_generation_prompt=True,
            )
            context_text, tail = rendered.split(self._separator)
            context_ids = tok(context_text, add_special_tokens=False).input_ids
        else:
            tail = ""
            context_ids = tok(request.context, add_special_tokens=True).input_ids
        question_ids = [
            tok(q + tail + request.answer_prefix, add_special_tokens=False).input_ids
            for q in questions
        ]
        return (
            torch.tensor([context_ids], dtype=torch.long),
            [torch.tensor([q], dtype=torch.long) for q in question_ids],
        )

    @staticmethod
    def _truncate(ids: Tensor, max_len: Optional[int], mode: str) -> Tensor:
        if mode not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {mode!r}")
        if max_len is None or ids.shape[1] <= max_len:
            return ids
        if mode == "head":
            return ids[:, :max_len]
        head = max_len // 2
        return torch.cat([ids[:, :head], ids[:, ids.shape[1] - (max_len - head) :]], dim=1)

    def _input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def process_request(
        self,
        request: Request,
        generation_kwargs: Optional[Dict[str, Any]] = None,
        request_kwargs: Optional[Dict[str, Any]] = None,
    ) -> RequestResponse:
        """Answers every question of ``request`` (see the module docstring for the flow).

        ``generation_kwargs`` go to ``model.generate`` (default ``max_new_tokens=50``, greedy);
        ``request_kwargs``: ``max_context_length`` (tokens), ``truncation`` ("head" or
        "middle"), ``batch_questions`` (answer all questions as one batch). Neither dict is
        modified.
        """
        generation = self._generation(generation_kwargs)
        options = dict(request_kwargs or {})
        if options.get("batch_questions"):
            return self.process_requests([request], generation_kwargs, request_kwargs)[0]
        context_ids, questions = self._encode(request)
        context_ids = self._truncate(
            context_ids, options.get("max_context_length"), options.get("truncation", "head")
        )
        device = self._input_device()
        context_ids = context_ids.to(device)
        longest = max(q.shape[1] for q in questions)
        cache = self._new_cache(self._cache_len(context_ids.shape[1] + longest, generation))
        with torch.no_grad(), self._dense_mode():
            self.model(
                input_ids=context_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        context_len = context_ids.shape[1]
        self.select_attention(longest, context_len + longest)  # logs the choice and the reason
        answers = []
        for i, question_ids in enumerate(questions):
            last = i == len(questions) - 1
            # Continue from the context: crop back afterwards, or (sliding-window layers drop
            # old keys and cannot be cropped back) answer on a copy.
            own = last or _croppable(cache)
            question_cache = cache if own else copy.deepcopy(cache)
            answers.append(
                self._answer(context_ids, question_ids.to(device), question_cache, generation)
            )
            if own and not last:
                crop_cache_to(cache, context_len)
        responses = answers[0] if isinstance(request.questions, str) else answers
        return RequestResponse(responses=responses)

    def _generation(self, generation_kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        generation = {"max_new_tokens": 50, "do_sample": False}
        generation.update(generation_kwargs or {})
        generation.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if "max_length" in (generation_kwargs or {}) and "max_new_tokens" not in (
            generation_kwargs or {}
        ):
            del generation["max_new_tokens"]  # the caller's max_length decides
        return generation

    @staticmethod
    def _cache_len(prompt_len: int, generation: Dict[str, Any]) -> int:
        """Tokens a static cache must hold for a prompt of ``prompt_len`` tokens."""
        if "max_new_tokens" in generation:
            return prompt_len + int(generation["max_new_tokens"])
        return max(prompt_len + 1, int(generation["max_length"]))

    def _new_cache(self, max_len: int) -> Any:
        """An empty cache of this adapter's kind; a static one holds ``max_len`` tokens."""
        from transformers import DynamicCache, StaticCache

        if self.cache_implementation == "static":
            return StaticCache(config=self.model.config, max_cache_len=max_len)
        return DynamicCache(config=self.model.config)

    def process_requests(
        self,
        requests: List[Request],
        generation_kwargs: Optional[Dict[str, Any]] = None,
        request_kwargs: Optional[Dict[str, Any]] = None,
    ) -> List[RequestResponse]:
        """Answers every question of every request as ONE batch.

        The contexts are prefilled once each, together (left-padded); every question row then
        continues from its request's context, with padding between context and question. The
        maskers count only keys a query may see, so a row selects what it would alone (sizes
        given as fractions use the padded key count).
        """
        generation = self._generation(generation_kwargs)
        options = dict(request_kwargs or {})
        encoded = []
        for request in requests:
            context_ids, questions = self._encode(request)
            context_ids = self._truncate(
                context_ids, options.get("max_context_length"), options.get("truncation", "head")
            )
            encoded.append((context_ids[0], [q[0] for q in questions]))
        device = self._input_device()
        pad = self.tokenizer.pad_token_id
        contexts, context_mask = _pad_left([c for c, _ in encoded], pad)
        rows = torch.tensor([r for r, (_, qs) in enumerate(encoded) for _ in qs])
        questions, question_mask = _pad_left([q for _, qs in encoded for q in qs], pad)
        contexts, context_mask = contexts.to(device), context_mask.to(device)
        rows = rows.to(device)
        static = self.cache_implementation == "static"
        if static:  # a static cache cannot drop batch rows: prefill each question row's context
            contexts, context_mask = contexts[rows], context_mask[rows]
            rows = torch.arange(len(rows), device=device)
        cache = self._new_cache(self._cache_len(contexts.shape[1] + questions.shape[1], generation))
        with torch.no_grad(), self._dense_mode():
            self.model(
                input_ids=contexts,
                attention_mask=context_mask,
                position_ids=_positions(context_mask),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        if not static:
            cache.batch_select_indices(rows)
        full = torch.cat([contexts[rows], questions.to(device)], dim=1)
        attention = torch.cat([context_mask[rows], question_mask.to(device)], dim=1)
        if self.setup == "A" and questions.shape[1] > 1:  # all but the last token dense
            with torch.no_grad(), self._dense_mode():
                self.model(
                    input_ids=full[:, contexts.shape[1] : -1],
                    attention_mask=attention[:, :-1],
                    position_ids=_positions(attention[:, :-1])[:, contexts.shape[1] :],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        with torch.no_grad(), self._request_state({}), self._sparse_mode_if_configured():
            out = self.model.generate(
                input_ids=full, attention_mask=attention, past_key_values=cache, **generation
            )
        texts = self.tokenizer.batch_decode(out[:, full.shape[1] :], skip_special_tokens=True)
        responses, start = [], 0
        for request, (_, qs) in zip(requests, encoded):
            answers = texts[start : start + len(qs)]
            start += len(qs)
            responses.append(
                RequestResponse(answers[0] if isinstance(request.questions, str) else answers)
            )
        return responses

    def _answer(
        self, context_ids: Tensor, question_ids: Tensor, cache: Any, generation: Dict
    ) -> str:
        full = torch.cat([context_ids, question_ids], dim=1)
        if self.setup == "A" and question_ids.shape[1] > 1:  # all but the last token dense
            with torch.no_grad(), self._dense_mode():
                self.model(
                    input_ids=question_ids[:, :-1],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        attention = torch.ones_like(full)
        with torch.no_grad(), self._request_state({}), self._sparse_mode_if_configured():
            out = self.model.generate(
                input_ids=full, attention_mask=attention, past_key_values=cache, **generation
            )
        return self.tokenizer.decode(out[0, full.shape[1] :], skip_special_tokens=True)

    @contextmanager
    def _sparse_mode_if_configured(self) -> Iterator[None]:
        if self.sparse_attention is None:
            yield
        else:
            with self.enable_sparse_mode():
                yield

    # ------------------------------------------------------------------------------------------
    # Lifecycle.
    def close(self) -> None:
        """Unregisters the attention function and releases the model reference (idempotent)."""
        if self._attention_name is not None:
            self._registry.unregister_attention_function(self._attention_name)
            self._attention_name = None
        if self._server is not None:
            self._server.clear_model(self.model_name, self.device, self.model_kwargs)
            self._server.clear_tokenizer(self.model_name, self.tokenizer_kwargs)
            self._server = None
        self.model = None

    def __enter__(self) -> "ModelAdapterHF":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _croppable(cache: Any) -> bool:
    """Whether the cache can be rolled back (sliding-window layers cannot)."""
    layers = getattr(cache, "layers", ())
    return hasattr(cache, "crop") and not any(hasattr(layer, "sliding_window") for layer in layers)


def crop_cache_to(cache: Any, length: int) -> None:
    """Rolls a croppable cache back to its first ``length`` tokens. A static layer only moves
    its write position back (in place: compiled graphs keep the tensor's address); the stale
    tail is hidden by the attention mask and overwritten by the next tokens."""
    from transformers.cache_utils import StaticLayer

    layers = getattr(cache, "layers", ())
    if layers and all(isinstance(layer, StaticLayer) for layer in layers):
        for layer in layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.fill_(length)
        return
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)  # negative: the number of tokens to drop


def _pad_left(sequences: List[Tensor], pad: int) -> Tuple[Tensor, Tensor]:
    """Stacks 1-D id tensors, left-padded, with their attention mask."""
    width = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, x in enumerate(sequences):
        ids[i, width - len(x) :] = x
        mask[i, width - len(x) :] = 1
    return ids, mask


def _positions(attention_mask: Tensor) -> Tensor:
    """Position ids that skip padding (as ``generate`` derives them)."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)
