"""RULER (by context length, and the 16K/32K builds by task): loaders and the official scoring.

Rows: ``context``, ``question``, ``answer_prefix``, ``answer`` (list of reference strings),
``task`` (e.g. ``niah_single_1``), optional ``max_new_tokens`` and ``context_length``.
Scoring: control characters are removed from the prediction; ``qa_*`` tasks score 1 when any
reference occurs in it (``string_match_part``), the others the fraction of references that
occur (``string_match_all``); case-insensitive; x100, rounded to 2 decimals.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark

_CONTROL = re.compile(r"[\x00-\x1f]")
RULER_TASKS = [
    "cwe",
    "fwe",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multiquery",
    "niah_multivalue",
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "qa_1",
    "qa_2",
    "vt",
]


def _references(answer: Any) -> List[str]:
    if isinstance(answer, str):
        answer = json.loads(answer) if answer.startswith("[") else [answer]
    return [str(a) for a in answer]


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean fraction of each row's references found in its prediction, x100."""
    total = sum(
        sum(r.lower() in p.lower() for r in refs) / len(refs)
        for p, refs in zip(predictions, references)
    )
    return round(100 * total / len(predictions), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of rows where any reference is found in the prediction, x100."""
    total = sum(
        max(float(r.lower() in p.lower()) for r in refs) for p, refs in zip(predictions, references)
    )
    return round(100 * total / len(predictions), 2)


def ruler_task_scores(rows: Sequence[Row]) -> Dict[str, Dict[str, float]]:
    """``{task: {"string_match": score}}`` over answered rows."""
    by_task: Dict[str, List[Row]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    scores = {}
    for task, task_rows in sorted(by_task.items()):
        predictions = [
            _CONTROL.sub("", str(r["predicted_answer"]).strip()).strip() for r in task_rows
        ]
        references = [_references(r["answer"]) for r in task_rows]
        match = string_match_part if task.split("_")[0] == "qa" else string_match_all
        scores[task] = {"string_match": match(predictions, references)}
    return scores


def ruler_metrics(rows: Sequence[Row]) -> Dict[str, Any]:
    """Per-task scores, their mean (``overall_score``) and the mean per ``context_length``."""
    task_scores = ruler_task_scores(rows)

    def mean(scores: Dict[str, Dict[str, float]]) -> float:
        values = [s["string_match"] for s in scores.values()]
        return round(sum(values) / len(values), 2) if values else 0.0

    by_length: Dict[str, List[Row]] = {}
    for row in rows:
        if row.get("context_length") not in (None, ""):
            by_length.setdefault(str(row["context_length"]), []).append(row)
    length_scores = {k: mean(ruler_task_scores(v)) for k, v in sorted(by_length.items())}
    return {
        "overall_score": mean(task_scores),
        "task_scores": task_scores,
        "context_length_scores": length_scores,
        "summary": {
            "total_tasks": len(task_scores),
            "total_samples": len(rows),
            "context_lengths": list(length_scores),
        },
    }


@register_benchmark("ruler")
class Ruler(Benchmark):
    """RULER by context length: subset ``4096`` holds every task at 4096 tokens."""

    all_datasets = ["4096", "8192", "16384", "32768"]
    benchmark_name = "ruler"
    huggingface_dataset_id = "simonjegou/ruler"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        row.setdefault("context_length", subset)
        return super()._prepare_row(row, subset)

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        return ruler_metrics(results)


class _RulerByTask(Benchmark):
    """RULER built at one context length, one subset per task."""

    all_datasets = list(RULER_TASKS)
    context_length = 0

    def _hub_location(self, subset: str) -> Tuple[Optional[str], str]:
        return subset, subset

    def _prepare_row(self, row: Row, subset: str) -> Row:
        row.setdefault("context_length", self.context_length)
        return super()._prepare_row(row, subset)

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        return ruler_metrics(results)


@register_benchmark("ruler16k")
class Ruler16K(_RulerByTask):
    benchmark_name = "ruler16k"
    huggingface_dataset_id = "xAlg-AI/att-hub-ruler-16k"
    context_length = 16384


@register_benchmark("ruler32k")
class Ruler32K(_RulerByTask):
    benchmark_name = "ruler32k"
    huggingface_dataset_id = "xAlg-AI/att-hub-ruler-32k"
    context_length = 32768
