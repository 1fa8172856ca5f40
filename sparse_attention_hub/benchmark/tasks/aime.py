"""AIME 2024 / 2025: loaders and answer extraction (an integer in 0..999).

Rows: ``context`` (the problem), ``question``, ``answer`` (integer or its text), optional
``answer_prefix`` / ``max_new_tokens``. The answer is the last number of the last
``\\boxed{...}``, else "answer is N", else the last 0..999 number of the last non-empty line,
else the last 0..999 number anywhere.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark

_ANSWER_PATTERNS = (
    r"(?:answer|solution)\s*(?:is|:)\s*(\d+)",
    r"(?:the\s+)?answer\s*(?:is|:)\s*(\d+)",
    r"(?:therefore|thus|so)\s*(?:the\s+)?(?:answer|solution)\s*(?:is|:)\s*(\d+)",
)


def extract_boxed_answer(text: str) -> str:
    """Content of the last ``\\boxed{...}`` (braces may nest; "" if none)."""
    found = ""
    for match in re.finditer(r"\\?boxed\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found = text[start:i].strip()
                break
    return found


def extract_numerical_answer(text: str) -> str:
    """The predicted AIME answer as digits ("" when none is found)."""
    numbers = re.findall(r"\d+", extract_boxed_answer(text))
    if numbers:
        return numbers[-1]
    for pattern in _ANSWER_PATTERNS:
        matches = re.findall(pattern, text, re.IGNORECASE)
        if matches and 0 <= int(matches[-1]) <= 999:
            return matches[-1]
    for line in reversed(text.strip().split("\n")):
        if line.strip():
            numbers = re.findall(r"\b\d+\b", line)
            if numbers and int(numbers[-1]) <= 999:
                return str(int(numbers[-1]))
    for number in reversed(re.findall(r"\b\d+\b", text)):
        if int(number) <= 999:
            return str(int(number))
    return ""


def _reference(answer: Any) -> str:
    text = str(answer).strip()
    return str(int(text)) if text.isdigit() else text


def aime_metrics(rows: List[Row], task: str) -> Dict[str, Any]:
    """Accuracy, extraction success rate and the failures."""
    extracted = [extract_numerical_answer(str(r["predicted_answer"])) for r in rows]
    correct = [e != "" and str(int(e)) == _reference(r["answer"]) for e, r in zip(extracted, rows)]
    accuracy = sum(correct) / len(rows)
    extraction = sum(e != "" for e in extracted) / len(rows)
    return {
        "overall_score": round(accuracy, 4),
        "accuracy": round(accuracy, 4),
        "extraction_success_rate": round(extraction, 4),
        "correct_answers": sum(correct),
        "total_problems": len(rows),
        "extraction_failures": sum(e == "" for e in extracted),
        "task_scores": {
            task: {"accuracy": round(accuracy, 4), "extraction_success_rate": round(extraction, 4)}
        },
        "summary": {"total_tasks": 1, "total_samples": len(rows)},
    }


class _Aime(Benchmark):
    def _hub_location(self, subset: str) -> Tuple[Optional[str], str]:
        return None, "test"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        row["task"] = subset
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        return aime_metrics(results, self.benchmark_name)


@register_benchmark("aime2024")
class AIME2024(_Aime):
    all_datasets = ["aime2024"]
    benchmark_name = "aime2024"
    huggingface_dataset_id = "xAlg-AI/att-hub-aime2024"


@register_benchmark("aime2025")
class AIME2025(_Aime):
    all_datasets = ["aime2025"]
    benchmark_name = "aime2025"
    huggingface_dataset_id = "xAlg-AI/att-hub-aime2025"
