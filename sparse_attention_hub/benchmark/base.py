"""Benchmark: load a dataset's rows, answer them with a model adapter, score, write results.

A row is a dict with at least ``context`` and ``question``; optional ``answer_prefix`` and
``max_new_tokens``; the ground-truth columns are the subclass's business. Rows that share a
context become ONE request (the adapter prefills the context once and answers each question).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..adapters.base import ModelAdapter, Request
from ..metric_logging import MicroMetricLogger
from .local_data import default_data_dir, load_subset
from .progress import progress
from .results import CONFIG, METRICS, RAW_RESULTS, write_json, write_raw_results

Row = Dict[str, Any]


class Benchmark(ABC):
    """A benchmark family; subclasses set the class attributes and ``post_run_evaluate``.

    Attributes:
        all_datasets: the subsets this benchmark offers.
        benchmark_name: the registry name.
        huggingface_dataset_id: the reference's HF dataset id ("" when generated locally).

    Args:
        subsets_to_run: subsets to run (None: all of ``all_datasets``).
        data_dir: folder with ``<subset>.jsonl|.json|.csv`` files (default
            ``$SAH_DATA_DIR/<benchmark_name>``); None and no variable: the HF ``datasets``
            library, if installed.
    """

    all_datasets: List[str] = []
    benchmark_name: str = ""
    huggingface_dataset_id: str = ""

    def __init__(
        self,
        subsets_to_run: Optional[List[str]] = None,
        data_dir: Optional[Union[str, Path]] = None,
    ) -> None:
        if not self.all_datasets:
            raise ValueError(f"{type(self).__name__} must define all_datasets")
        if not self.benchmark_name:
            raise ValueError(f"{type(self).__name__} must define benchmark_name")
        subsets = list(self.all_datasets) if subsets_to_run is None else list(subsets_to_run)
        self.validate_subsets(subsets)
        self.subsets_to_run = subsets
        self.data_dir = Path(data_dir) if data_dir else default_data_dir(self.benchmark_name)

    @classmethod
    def validate_subsets(cls, subsets: List[str]) -> None:
        """Raises ValueError naming the subsets that are not in ``all_datasets``."""
        invalid = [s for s in subsets if s not in cls.all_datasets]
        if invalid:
            raise ValueError(
                f"subsets_to_run has {invalid}, not datasets of {cls.benchmark_name!r}; "
                f"available: {cls.all_datasets}"
            )

    def get_available_datasets(self) -> List[str]:
        return list(self.all_datasets)

    # ------------------------------------------------------------------------------------------
    # Loading.
    def _hub_location(self, subset: str) -> Tuple[Optional[str], str]:
        """(config name, split) of ``subset`` in the reference's HF dataset."""
        return subset, "test"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        """Brings one dataset row to the common columns (default: adds ``task``)."""
        row.setdefault("task", subset)
        return row

    def _load_datasets(self, tokenizer: Any = None) -> List[Row]:
        """The rows of every subset to run. ``tokenizer`` (the adapter's) serves benchmarks
        that generate their data for a given token length."""
        rows: List[Row] = []
        for subset in self.subsets_to_run:
            config, split = self._hub_location(subset)
            for row in load_subset(
                self.data_dir, subset, self.huggingface_dataset_id, config, split
            ):
                rows.append(self._prepare_row(dict(row), subset))
        return rows

    # ------------------------------------------------------------------------------------------
    # Running.
    def _process_all_requests(
        self,
        adapter: ModelAdapter,
        rows: List[Row],
        generation_kwargs: Dict[str, Any],
        request_kwargs: Dict[str, Any],
    ) -> List[Row]:
        """Answers every row (grouped by context, in dataset order); returns copies of the rows
        with ``predicted_answer``. A row's ``max_new_tokens`` caps its request's generation
        (never written back into ``generation_kwargs``)."""
        groups: Dict[str, List[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row["context"], []).append(i)
        results = [dict(row) for row in rows]
        logger = MicroMetricLogger()
        for request_id, (context, indices) in enumerate(
            progress(groups.items(), desc=f"{self.benchmark_name} requests", total=len(groups))
        ):
            first = rows[indices[0]]
            generation = dict(generation_kwargs)
            limit = first.get("max_new_tokens")
            if limit not in (None, ""):
                limit = int(limit)
                generation["max_new_tokens"] = min(generation.get("max_new_tokens", limit), limit)
            request = Request(
                context=context,
                questions=[rows[i]["question"] for i in indices],
                answer_prefix=first.get("answer_prefix") or "",
            )
            logger.begin_request(request_id)
            answers = adapter.process_request(request, generation, request_kwargs).responses
            for i, answer in zip(indices, answers):
                results[i]["predicted_answer"] = answer
        return results

    def run_benchmark(
        self,
        adapter: ModelAdapter,
        result_dir: Union[str, Path],
        generation_kwargs: Optional[Dict[str, Any]] = None,
        request_kwargs: Optional[Dict[str, Any]] = None,
        run_config: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Loads, answers and scores; writes ``raw_results.csv``, ``metrics.json`` and, last,
        ``config.json`` (extended with ``run_config``) into ``result_dir``. Returns the metrics.

        ``request_kwargs["max_requests"]`` keeps only the first rows of the dataset.
        """
        generation_kwargs = dict(generation_kwargs or {})
        request_kwargs = dict(request_kwargs or {})
        path = Path(result_dir)
        path.mkdir(parents=True, exist_ok=True)
        rows = self._load_datasets(tokenizer=getattr(adapter, "tokenizer", None))
        if request_kwargs.get("max_requests") is not None:
            rows = rows[: int(request_kwargs["max_requests"])]
        if not rows:
            raise ValueError(f"{self.benchmark_name} subsets {self.subsets_to_run} have no rows")
        results = self._process_all_requests(adapter, rows, generation_kwargs, request_kwargs)
        metrics = self.post_run_evaluate(results)
        write_raw_results(path / RAW_RESULTS, results)
        write_json(path / METRICS, metrics)
        config = {
            "model_name": getattr(adapter, "model_name", None),
            "model_kwargs": getattr(adapter, "model_kwargs", {}),
            "tokenizer_kwargs": getattr(adapter, "tokenizer_kwargs", {}),
            "sparse_attention_config": getattr(adapter, "sparse_attention_config", None),
            "generation_kwargs": generation_kwargs,
            "request_kwargs": request_kwargs,
            "benchmark_name": self.benchmark_name,
            "subsets": self.subsets_to_run,
            "huggingface_dataset_id": self.huggingface_dataset_id,
            **(run_config or {}),
        }
        write_json(path / CONFIG, config)
        return metrics

    @abstractmethod
    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        """Scores the answered rows (each has ``predicted_answer``); JSON-ready metrics."""
