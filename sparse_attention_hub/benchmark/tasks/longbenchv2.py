"""LongBench-v2 (multiple choice A-D): loader and the official answer extraction.

Rows: ``context``, ``question`` (or ``choice_A``..``choice_D`` with the bare question, which
are then formatted into it), ``answer`` (a letter), ``difficulty`` (easy/hard), ``length``
(short/medium/long). The answer is read from "The correct answer is (X)" (or without
parentheses); accuracy x100 overall and per difficulty and length class.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark


def extract_answer(response: str) -> Optional[str]:
    """The letter after "The correct answer is", with or without parentheses; None if absent."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response) or re.search(
        r"The correct answer is ([A-D])", response
    )
    return match.group(1) if match else None


def longbenchv2_scores(rows: Sequence[Row]) -> Dict[str, float]:
    """Accuracy x100 (1 decimal) overall and per class; empty classes are left out."""
    groups: Dict[str, List[int]] = {"overall": []}
    for row in rows:
        correct = int(extract_answer(str(row["predicted_answer"])) == row["answer"])
        groups["overall"].append(correct)
        difficulty = "easy" if row.get("difficulty") == "easy" else "hard"
        length = row.get("length") if row.get("length") in ("short", "medium") else "long"
        for key in (difficulty, length):
            groups.setdefault(key, []).append(correct)
    order = ["overall", "easy", "hard", "short", "medium", "long"]
    return {k: round(100 * sum(groups[k]) / len(groups[k]), 1) for k in order if groups.get(k)}


@register_benchmark("longbenchv2")
class LongBenchv2(Benchmark):
    """LongBench-v2, zero-shot and chain-of-thought prompt variants."""

    all_datasets = ["0shot", "cot"]
    benchmark_name = "longbenchv2"
    huggingface_dataset_id = "Xnhyacinth/LongBench-v2"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        if "choice_A" in row:
            choices = "\n".join(f"({c}) {row[f'choice_{c}']}" for c in "ABCD")
            row["question"] = (
                f"What is the correct answer to this question: {row['question']}\n"
                f"Choices:\n{choices}"
            )
        row["task"] = subset
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        by_task: Dict[str, List[Row]] = {}
        for row in results:
            by_task.setdefault(row["task"], []).append(row)
        task_scores = {task: longbenchv2_scores(rows) for task, rows in sorted(by_task.items())}
        overall = [s["overall"] for s in task_scores.values()]
        return {
            "overall_score": round(sum(overall) / len(overall), 1),
            "task_scores": task_scores,
            "summary": {"total_tasks": len(task_scores), "total_samples": len(results)},
        }
