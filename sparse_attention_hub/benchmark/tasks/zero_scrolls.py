"""ZeroSCROLLS: loader (the prompt is cut into context, question and answer prefix) and the
reference's statistics. The public test set has no ground truth, so nothing is scored.

Rows: ``input``, ``document_end_index``, ``query_end_index``, optional ``task`` (the
ZeroSCROLLS task of the row, e.g. ``gov_report``).
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark


@register_benchmark("zero_scrolls")
class ZeroScrolls(Benchmark):
    """ZeroSCROLLS, every task in one ``default`` subset."""

    all_datasets = ["default"]
    benchmark_name = "zero_scrolls"
    huggingface_dataset_id = "simonjegou/zero_scrolls"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        text, doc_end, query_end = (
            row["input"],
            int(row["document_end_index"]),
            int(row["query_end_index"]),
        )
        row["context"] = text[:doc_end]
        row["question"] = text[doc_end:query_end]
        row["answer_prefix"] = text[query_end:].strip()
        row.setdefault("task", subset)
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        by_task: Dict[str, List[str]] = {}
        for row in results:
            by_task.setdefault(row["task"], []).append(str(row["predicted_answer"]))
        task_stats = {
            task: {
                "num_samples": len(answers),
                "avg_response_length": round(sum(map(len, answers)) / len(answers), 2),
            }
            for task, answers in sorted(by_task.items())
        }
        return {
            "task_stats": task_stats,
            "summary": {
                "total_tasks": len(task_stats),
                "total_samples": len(results),
                "note": "ZeroSCROLLS has no public ground truth; responses are not scored",
            },
        }
