"""MicroMetricLogger: sampled per-attention-call metrics written to ``micro_metrics.jsonl``.

One JSON object per line (the reference format, plus identifiers in ``metadata``)::

    {"timestamp": "2025-01-01T12:00:00.000000", "metric": "research_attention_density",
     "value": 0.1, "metadata": {"layer_idx": 3, "request_id": 0, "question_id": 1, "step": 0,
     "q_len": 12, "kv_len": 4108}, "location": "...ResearchAttention.custom_attention"}

``step`` counts the forward passes of one question (0: the question tokens in setup B, then one
per generated token); ``q_len``/``kv_len`` are the call's query and key counts.

Unlike the reference, whether an attention call is recorded (``sampling_factor``,
``max_records``) is decided BEFORE anything is computed: an unsampled call costs a few Python
operations and no device work or host sync; the dense reference of the output error runs only
for sampled calls.
"""

from __future__ import annotations

import atexit
import json
import random
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Union

from .attention_metrics import DENSITY, OUTPUT_ERROR, attention_density, attention_output_error

FILE_NAME = "micro_metrics.jsonl"
#: ``location`` of the records made from ``ResearchAttention.observer`` events.
ATTENTION_LOCATION = (
    "sparse_attention_hub.sparse_attention.research_attention.base.ResearchAttention"
    ".custom_attention"
)
#: The metrics computed from observer events, in the order they are recorded.
_ATTENTION_METRICS: Dict[str, Callable[[Dict[str, Any]], float]] = {
    DENSITY: attention_density,
    OUTPUT_ERROR: attention_output_error,
}


@dataclass
class LogEvent:
    """One record of ``micro_metrics.jsonl``."""

    timestamp: datetime
    metric: str
    value: Any
    metadata: Dict[str, Any]
    location: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "timestamp": self.timestamp.isoformat(),
                "metric": self.metric,
                "value": self.value,
                "metadata": self.metadata,
                "location": self.location,
            }
        )


class MicroMetricLogger:
    """Process-wide (singleton, as in the reference) logger of micro metrics.

    Typical use: ``configure_logging(result_dir, "all", sampling_factor=0.1)``, then
    ``with logger.attached(adapter): ...`` around the requests, then ``flush()``.
    """

    _instance: Optional["MicroMetricLogger"] = None
    _registered_metrics: Dict[str, type] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> "MicroMetricLogger":
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._initialized = False
            cls._instance = instance
        return cls._instance

    def __init__(
        self,
        log_path: Optional[str] = None,
        flush_every: int = 1000,
        enabled_metrics: Union[List[str], str, None] = None,
        max_records: Optional[int] = None,
        sampling_factor: float = 1.0,
    ) -> None:
        if not self._initialized:
            self._initialized = True
            self.log_path: Optional[Path] = None
            self.flush_every = flush_every
            self.enabled_metrics: Set[str] = set()
            self.max_records: Optional[int] = None
            self.sampling_factor = 1.0
            self._rng = random.Random(0)
            self._pending: List[LogEvent] = []
            self._taken = 0
            self._context: Dict[str, Any] = {}
            self.begin_request(0)
            atexit.register(self.flush)
        if log_path is not None:
            self.configure_logging(log_path, enabled_metrics, max_records, sampling_factor)

    # ------------------------------------------------------------------------------------------
    # Registration (class level, as in the reference).
    @classmethod
    def register_metric(cls, identifier: str, dtype: type) -> None:
        """Declares a metric name that may be enabled and logged."""
        cls._registered_metrics[identifier] = dtype

    @classmethod
    def get_registered_metrics(cls) -> Dict[str, type]:
        return dict(cls._registered_metrics)

    # ------------------------------------------------------------------------------------------
    # Configuration.
    def configure_logging(
        self,
        log_path: Union[str, Path],
        enabled_metrics: Union[List[str], str, None] = None,
        max_records: Optional[int] = None,
        sampling_factor: float = 1.0,
        seed: int = 0,
        append: bool = False,
    ) -> None:
        """Starts logging to ``<log_path>/micro_metrics.jsonl``.

        Args:
            enabled_metrics: metric names, ``"all"`` (every registered metric) or None (none).
            max_records: at most this many records (lines) are taken; None: no limit.
            sampling_factor: probability in [0, 1] that an attention call is recorded.
            seed: seed of the sampling decisions (runs are reproducible).
            append: keep the file's earlier records (default: start it afresh, so a re-run
                does not duplicate lines).
        """
        if not 0.0 <= sampling_factor <= 1.0:
            raise ValueError(f"sampling_factor must be in [0, 1], got {sampling_factor}")
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records must be None or >= 0, got {max_records}")
        self.flush()
        self.log_path = Path(log_path)
        self.log_path.mkdir(parents=True, exist_ok=True)
        if not append:
            (self.log_path / FILE_NAME).write_text("")
        self.enable_metrics(enabled_metrics)
        self.max_records = max_records
        self.sampling_factor = sampling_factor
        self._rng = random.Random(seed)
        self._taken = 0
        self._context = {}
        self.begin_request(0)

    def enable_metrics(self, metrics: Union[List[str], str, None] = None) -> None:
        """Enables registered metrics (``"all"``, a list, or None for none)."""
        registered = set(self._registered_metrics)
        if metrics == "all":
            self.enabled_metrics = registered
            return
        wanted = set(metrics or ())
        unknown = wanted - registered
        if unknown:
            raise ValueError(
                f"enabled_metrics has unregistered names {sorted(unknown)}; "
                f"registered: {sorted(registered)}"
            )
        self.enabled_metrics = wanted

    def is_metric_enabled(self, identifier: str) -> bool:
        return identifier in self.enabled_metrics

    def get_enabled_metrics(self) -> Set[str]:
        return set(self.enabled_metrics)

    def is_logging_configured(self) -> bool:
        return self.log_path is not None

    def disable(self) -> None:
        """Flushes and stops logging (nothing is recorded until the next configuration)."""
        self.flush()
        self.log_path = None
        self.enabled_metrics = set()

    # ------------------------------------------------------------------------------------------
    # Identifiers.
    def set_context(self, **fields: Any) -> None:
        """Extra metadata fields added to every following record."""
        self._context.update(fields)

    def begin_request(self, request_id: int) -> None:
        """The following records belong to request ``request_id``; questions count from 0."""
        self._request_id = request_id
        self._question_id = -1
        self._step = -1
        self._first_layer: Optional[int] = None

    def next_question(self) -> None:
        """The following records belong to the next question of the request; steps restart."""
        self._question_id += 1
        self._step = -1
        self._first_layer = None

    # ------------------------------------------------------------------------------------------
    # Recording.
    def _remaining(self) -> Optional[int]:
        return None if self.max_records is None else self.max_records - self._taken

    def sample(self) -> bool:
        """Decides whether the next value(s) are recorded, before they are computed: logging
        configured, record cap not reached, and a draw under ``sampling_factor``."""
        if self.log_path is None or not self.enabled_metrics:
            return False
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return False
        return self.sampling_factor >= 1.0 or self._rng.random() < self.sampling_factor

    def log(
        self,
        identifier: str,
        value: Any,
        metadata: Optional[Dict[str, Any]] = None,
        location: Optional[str] = None,
    ) -> None:
        """Records ``value`` (already computed: call :meth:`sample` first to skip the work).

        ``location`` defaults to the caller's ``module.function``. Records past ``max_records``
        are dropped.
        """
        if self.log_path is None:
            warnings.warn(f"metric {identifier!r} not logged: call configure_logging() first")
            return
        if identifier not in self.enabled_metrics:
            warnings.warn(f"metric {identifier!r} not logged: it is not enabled")
            return
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return
        if location is None:
            frame = sys._getframe(1)
            location = f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}"
        self._taken += 1
        self._pending.append(
            LogEvent(
                datetime.now(), identifier, value, {**self._context, **(metadata or {})}, location
            )
        )
        if len(self._pending) >= self.flush_every:
            self.flush()

    def observe(self, event: Dict[str, Any]) -> None:
        """``ResearchAttention.observer``: counts the step, then records the enabled attention
        metrics of this call only if it is sampled."""
        layer = event.get("layer_idx")
        if self._first_layer is None:
            self._first_layer = layer
        if layer == self._first_layer:
            self._step += 1
        if not self.sample():
            return
        names = [name for name in _ATTENTION_METRICS if name in self.enabled_metrics]
        remaining = self._remaining()
        if remaining is not None:
            names = names[:remaining]
        metadata = {
            "layer_idx": layer,
            "request_id": self._request_id,
            "question_id": max(self._question_id, 0),
            "step": self._step,
            "q_len": int(event["queries"].shape[2]),
            "kv_len": int(event["keys"].shape[2]),
        }
        for name in names:
            self.log(name, _ATTENTION_METRICS[name](event), metadata, ATTENTION_LOCATION)

    def flush(self) -> None:
        """Appends the pending records to the file."""
        if not self._pending or self.log_path is None:
            return
        with open(self.log_path / FILE_NAME, "a", encoding="utf-8") as f:
            f.writelines(event.to_json() + "\n" for event in self._pending)
        self._pending.clear()

    # ------------------------------------------------------------------------------------------
    # Wiring into an adapter.
    @contextmanager
    def attached(self, adapter: Any) -> Iterator[None]:
        """Within this block, ``adapter``'s sparse attention reports to this logger, and each
        ``model.generate`` call (one per question) starts a new question id. Nothing is
        attached when the adapter is dense or no metric is enabled."""
        attention = getattr(adapter, "sparse_attention", None)
        if attention is None or not self.enabled_metrics or self.log_path is None:
            yield
            return
        model = adapter.model
        previous_observer = attention.observer
        shadowed = model.__dict__.get("generate")
        original = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            self.next_question()
            return original(*args, **kwargs)

        attention.observer = self.observe
        model.__dict__["generate"] = generate
        try:
            yield
        finally:
            attention.observer = previous_observer
            if shadowed is None:
                del model.__dict__["generate"]
            else:
                model.__dict__["generate"] = shadowed
            self.flush()


MicroMetricLogger.register_metric(DENSITY, float)
MicroMetricLogger.register_metric(OUTPUT_ERROR, float)
