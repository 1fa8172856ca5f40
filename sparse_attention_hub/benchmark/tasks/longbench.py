"""LongBench and LongBench-E: loader and the official THUDM scorers.

Rows: ``context``, ``question`` (or LongBench's original ``input``), ``answers`` (list),
``all_classes`` (classification tasks), ``length`` (words; LongBench-E buckets), optional
``answer_prefix`` / ``max_new_tokens``. Subsets ending in ``_e`` are LongBench-E: scored like
their base task, reported per length bucket (0-4k, 4-8k, 8k+).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Sequence

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark
from .metrics import (
    chinese_words,
    fuzz_ratio,
    normalize_zh_answer,
    qa_f1_score,
    rouge_l_f,
    token_f1,
)

STANDARD_TASKS = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
]
EXTENDED_TASKS = [
    f"{t}_e"
    for t in (
        "qasper",
        "multifieldqa_en",
        "hotpotqa",
        "2wikimqa",
        "gov_report",
        "multi_news",
        "trec",
        "triviaqa",
        "samsum",
        "passage_count",
        "passage_retrieval_en",
        "lcc",
        "repobench-p",
    )
]
#: Tasks whose prediction is cut to its first line before scoring (few-shot formats).
FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum", "lsht")
LENGTH_BUCKETS = ("0-4k", "4-8k", "8k+")


def count_score(prediction: str, ground_truth: str, **_: Any) -> float:
    """Share of the numbers in the prediction that equal the ground truth."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(ground_truth) for n in numbers) / len(numbers) if numbers else 0.0


def _retrieval(prediction: str, ground_truth: str, pattern: str) -> float:
    matches = re.findall(pattern, ground_truth)
    if not matches:
        raise ValueError(f"ground_truth {ground_truth!r} does not match {pattern!r}")
    return count_score(prediction, matches[0])


def retrieval_score(prediction: str, ground_truth: str, **_: Any) -> float:
    """Share of the numbers in the prediction that equal the paragraph id."""
    return _retrieval(prediction, ground_truth, r"Paragraph (\d+)")


def retrieval_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return _retrieval(prediction, ground_truth, r"段落(\d+)")


def code_sim_score(prediction: str, ground_truth: str, **_: Any) -> float:
    """Fuzzy ratio of the first prediction line that is not a comment or a code fence."""
    lines = prediction.lstrip("\n").split("\n")
    first = next((x for x in lines if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz_ratio(first, ground_truth) / 100


def classification_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """1/len(matches) when the ground-truth class is among the classes named in the
    prediction (classes contained in the ground truth are dropped)."""
    matches = [c for c in kwargs["all_classes"] if c in prediction]
    # The official loop removes from the list it iterates over, which skips the entry after
    # each removal; an explicit index reproduces it.
    k = 0
    while k < len(matches):
        term = matches[k]
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
        k += 1
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def rouge_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return rouge_l_f(prediction, ground_truth)


def rouge_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return rouge_l_f(" ".join(chinese_words(prediction)), " ".join(chinese_words(ground_truth)))


def qa_f1_en_score(prediction: str, ground_truth: str, **_: Any) -> float:
    return qa_f1_score(prediction, ground_truth)


def qa_f1_zh_score(prediction: str, ground_truth: str, **_: Any) -> float:
    """Token F1 over jieba words, each normalised (empty ones dropped)."""

    def words(text: str) -> List[str]:
        return [w for w in (normalize_zh_answer(t) for t in chinese_words(text)) if w]

    return token_f1(words(prediction), words(ground_truth))[0]


DATASET2METRIC: Dict[str, Callable[..., float]] = {
    "narrativeqa": qa_f1_en_score,
    "qasper": qa_f1_en_score,
    "multifieldqa_en": qa_f1_en_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_en_score,
    "2wikimqa": qa_f1_en_score,
    "musique": qa_f1_en_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_en_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}


def base_task(task: str) -> str:
    """The LongBench task a LongBench-E subset is scored as (``qasper_e`` -> ``qasper``)."""
    return task[: -len("_e")] if task.endswith("_e") else task


def score_one(task: str, prediction: str, answers: Sequence[str], all_classes: Any) -> float:
    """Best score of ``prediction`` over the ground truths, in [0, 1]."""
    dataset = base_task(task)
    if dataset not in DATASET2METRIC:
        raise ValueError(f"task must be a LongBench task {sorted(DATASET2METRIC)}, got {task!r}")
    if dataset in FIRST_LINE_TASKS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET2METRIC[dataset]
    return max([0.0] + [metric(prediction, truth, all_classes=all_classes) for truth in answers])


def scorer(
    task: str, predictions: Sequence[str], answers: Sequence[Sequence[str]], all_classes: Any
) -> float:
    """Mean best score x100, rounded to 2 decimals (the official ``scorer``)."""
    total = sum(score_one(task, p, a, all_classes) for p, a in zip(predictions, answers))
    return round(100 * total / len(predictions), 2)


def scorer_e(
    task: str,
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    lengths: Sequence[int],
    all_classes: Any,
) -> Dict[str, float]:
    """Mean best score x100 per length bucket (buckets without rows are left out)."""
    buckets: Dict[str, List[float]] = {b: [] for b in LENGTH_BUCKETS}
    for prediction, truths, length in zip(predictions, answers, lengths):
        bucket = "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"
        buckets[bucket].append(score_one(task, prediction, truths, all_classes))
    return {b: round(100 * sum(s) / len(s), 2) for b, s in buckets.items() if s}


def _as_list(value: Any) -> List[Any]:
    if isinstance(value, str):
        return json.loads(value) if value.startswith("[") else [value]
    return list(value) if value is not None else []


def longbench_metrics(rows: Sequence[Row]) -> Dict[str, Any]:
    """Per-task scores, ``standard_overall_score``, ``extended_overall_scores`` per bucket and
    ``overall_score`` over all of them."""
    by_task: Dict[str, List[Row]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    task_scores: Dict[str, Any] = {}
    standard: List[float] = []
    extended: Dict[str, List[float]] = {b: [] for b in LENGTH_BUCKETS}
    for task, task_rows in sorted(by_task.items()):
        predictions = [str(r["predicted_answer"]) for r in task_rows]
        answers = [[str(a) for a in _as_list(r["answers"])] for r in task_rows]
        all_classes = _as_list(task_rows[0].get("all_classes"))
        if task.endswith("_e"):
            lengths = [int(r["length"]) for r in task_rows]
            scores = scorer_e(task, predictions, answers, lengths, all_classes)
            task_scores[task] = scores
            for bucket, score in scores.items():
                extended[bucket].append(score)
        else:
            task_scores[task] = scorer(task, predictions, answers, all_classes)
            standard.append(task_scores[task])
    metrics: Dict[str, Any] = {"task_scores": task_scores}
    if standard:
        metrics["standard_overall_score"] = round(sum(standard) / len(standard), 2)
    extended_overall = {b: round(sum(s) / len(s), 2) for b, s in extended.items() if s}
    if extended_overall:
        metrics["extended_overall_scores"] = extended_overall
    everything = standard + [s for scores in extended.values() for s in scores]
    if everything:
        metrics["overall_score"] = round(sum(everything) / len(everything), 2)
    metrics["summary"] = {
        "total_tasks": len(task_scores),
        "standard_tasks": sum(not t.endswith("_e") for t in task_scores),
        "extended_tasks": sum(t.endswith("_e") for t in task_scores),
        "total_samples": len(rows),
    }
    return metrics


@register_benchmark("longbench")
class LongBench(Benchmark):
    """LongBench (21 tasks) and LongBench-E (13 ``_e`` tasks)."""

    all_datasets = STANDARD_TASKS + EXTENDED_TASKS
    benchmark_name = "longbench"
    huggingface_dataset_id = "Xnhyacinth/LongBench"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        if "question" not in row:
            row["question"] = row.get("input", "")
        row["task"] = subset
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        return longbench_metrics(results)
