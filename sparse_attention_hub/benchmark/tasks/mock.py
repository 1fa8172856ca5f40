"""Mock benchmark: five short reading questions over three contexts (two share one), for
smoke tests of the pipeline. A prediction is correct when it contains a reference answer
(case-insensitive)."""

from __future__ import annotations

from typing import Any, Dict, List

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark

_LIGHTHOUSE = (
    "The lighthouse on Fenwick Point was built in 1872 from granite quarried on the island. "
    "Its keeper, Mara Lind, lit the lamp every evening for thirty years and kept a log of "
    "every ship that passed. The light was automated in 1961, and the keeper's cottage is now "
    "a small museum that displays her logbooks."
)
_BREAD = (
    "To bake the village loaf, mix flour, water, salt and a spoon of starter, then let the "
    "dough rest overnight in a cool pantry. In the morning, shape it, let it rise for two "
    "hours, and bake it in a hot oven for forty minutes until the crust sounds hollow."
)
_COMET = (
    "Astronomers named the comet Veyra after the observatory that first saw it. It returns to "
    "the inner solar system every seventy-six years, and its tail always points away from "
    "the Sun because the solar wind pushes the gas and dust outward."
)

SAMPLES: List[Row] = [
    {"context": _LIGHTHOUSE, "question": "When was the lighthouse built?", "answers": ["1872"]},
    {
        "context": _LIGHTHOUSE,
        "question": "Who kept the lighthouse?",
        "answers": ["Mara Lind", "Lind"],
    },
    {
        "context": _BREAD,
        "question": "How long does the loaf bake?",
        "answers": ["forty minutes", "40 minutes"],
    },
    {
        "context": _COMET,
        "question": "How often does the comet return?",
        "answers": ["seventy-six years", "76 years"],
    },
    {
        "context": _COMET,
        "question": "What pushes the comet's tail away from the Sun?",
        "answers": ["solar wind"],
    },
]


@register_benchmark("mock_benchmark")
class MockBenchmark(Benchmark):
    """Hard-coded data; needs no files."""

    all_datasets = ["reading_comprehension"]
    benchmark_name = "mock_benchmark"

    def _load_datasets(self, tokenizer: Any = None) -> List[Row]:
        return [
            {**sample, "task": "reading_comprehension", "sample_id": i + 1}
            for i, sample in enumerate(SAMPLES)
        ]

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        correct = [
            any(
                str(a).strip().lower() in str(r["predicted_answer"]).strip().lower()
                for a in r["answers"]
            )
            for r in results
        ]
        return {
            "accuracy": round(sum(correct) / len(results), 3),
            "correct_predictions": sum(correct),
            "total_samples": len(results),
            "sample_scores": [
                {"sample_id": r["sample_id"], "correct": c} for r, c in zip(results, correct)
            ],
        }
