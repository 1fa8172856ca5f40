"""InfiniteBench: loader and the official per-task scorers (``compute_scores.py`` rules).

Rows: ``context``, ``question``, ``answer`` (the label: a list of strings; for ``code_debug``
and ``longbook_choice_eng`` ``[option text, letter]``, built from an ``options`` column when
present; numbers for ``code_run`` / ``math_find``), optional ``answer_prefix`` /
``max_new_tokens``. Each task's score is the mean over its rows, in [0, 1].
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Sequence, Union

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark
from .metrics import qa_f1_score

Label = Union[str, int, float, List[Any]]


def first_int_match(prediction: str) -> str:
    """The first run of digits in the prediction ("" if none)."""
    return next((item for item in re.split("[^0-9]", prediction) if item), "")


def _first(label: Label) -> Any:
    return label[0] if isinstance(label, list) else label


def _replace(text: str, characters: Sequence[str]) -> str:
    for c in characters:
        text = text.replace(c, " ")
    return text


def _single_spaces(text: str) -> str:
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def score_kv_retrieval(prediction: str, label: Label) -> bool:
    words = _replace(prediction, ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]).split()
    return _first(label) in words


def score_first_int(prediction: str, label: Label) -> bool:
    """passkey and number_string: the first integer equals the label."""
    return _first(label) == first_int_match(prediction)


def score_code_run(prediction: str, label: Label) -> bool:
    words = _replace(prediction.strip(), ["\n", ".", "`", "'", '"', ":"]).split()
    try:
        return bool(words) and int(words[-1]) == _first(label)
    except ValueError:
        return False


def score_code_debug(prediction: str, label: Label) -> bool:
    """The last standalone letter A-J, else the option/function name at the start or after an
    answer prefix."""
    fn_name, letter = label[0], label[1]
    prediction = prediction.strip()
    match = re.search(r"\b[A-J]\b(?!.*\b[A-J]\b)", prediction)
    if match and match.group(0) == letter:
        return True
    prediction = _single_spaces(
        _replace(prediction.strip(), ["\n", "`", "'", '"', "-", "*", "Option", "option"])
    )
    if prediction.startswith(letter) or prediction.startswith(fn_name):
        return True
    for prefix in ("answer is:", "is:", "answer:", "correct option is:"):
        idx = prediction.find(prefix)
        if idx == -1:
            continue
        if len(prediction) < idx + len(prefix) + 1:
            return False
        rest = prediction[idx + len(prefix) + 1 :]
        return rest.startswith(letter) or rest.startswith(fn_name)
    return False


def score_math_find(prediction: str, label: Label) -> bool:
    """The first number in the prediction equals the label (an int label needs an integer)."""
    label = _first(label)
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        raise TypeError(f"math_find label must be int or float, got {type(label).__name__}")
    first = re.search(r"\d+\.\d+|\d+", prediction)
    if first is None:
        return False
    text = first.group(0)
    if isinstance(label, int):
        return "." not in text and int(text) == label
    return float(text) == label


def score_longdialogue_qa_eng(prediction: str, label: Label) -> bool:
    prediction = prediction.strip().upper()
    return any(item.upper() in prediction for item in label)


def score_longbook_choice_eng(prediction: str, label: Label) -> bool:
    """The last standalone letter A-D, the first character, an answer prefix, or the first
    standalone letter, checked against the label's letter or option text."""
    prediction = prediction.strip()
    match = re.search(r"\b[A-D]\b(?!.*\b[A-D]\b)", prediction)
    if match and match.group(0) in label:
        return True
    if prediction == "":
        return False
    if prediction[0] in "ABCD":
        return prediction[0] in label
    if prediction in label:
        return True
    prediction = _single_spaces(
        _replace(prediction, ["\n", '"', "'", ".", ",", "?", "!", "{", "}"])
    )
    for prefix in ("answer is:", "answer:", "answer is", "option is"):
        idx = prediction.find(prefix)
        if idx == -1:
            continue
        if len(prediction) < idx + len(prefix) + 1:
            return False
        rest = prediction[idx + len(prefix) + 1 :]
        return any(rest.startswith(s) for s in label)
    for word in prediction.split():
        if word in "ABCD":
            return word in label
    return False


def score_longbook_qa_eng(prediction: str, label: Label) -> float:
    return max([0.0] + [qa_f1_score(prediction, truth) for truth in label])


SCORERS: Dict[str, Callable[[str, Label], Union[bool, float]]] = {
    "passkey": score_first_int,
    "number_string": score_first_int,
    "kv_retrieval": score_kv_retrieval,
    "code_run": score_code_run,
    "code_debug": score_code_debug,
    "math_find": score_math_find,
    "longbook_qa_eng": score_longbook_qa_eng,
    "longdialogue_qa_eng": score_longdialogue_qa_eng,
    "longbook_choice_eng": score_longbook_choice_eng,
}


def score_one(task: str, prediction: str, label: Label) -> float:
    if task not in SCORERS:
        raise ValueError(f"task must be one of {sorted(SCORERS)}, got {task!r}")
    return float(SCORERS[task](prediction, label))


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def normalize_label(task: str, answer: Any, options: Any = None) -> Label:
    """The scorer's label from a dataset row (JSON text decoded, numbers parsed, the option
    letter added for the multiple-choice tasks)."""
    if isinstance(answer, str) and answer.startswith("["):
        answer = json.loads(answer)
    answer = answer if isinstance(answer, list) else [answer]
    if task in ("code_run", "math_find"):
        return [_number(a) for a in answer]
    if task in ("code_debug", "longbook_choice_eng") and options:
        if isinstance(options, str):
            options = json.loads(options)
        if not (len(answer) == 2 and answer[1] in ("A", "B", "C", "D")):
            return [answer[0], "ABCD"[list(options).index(answer[0])]]
    return [str(a) for a in answer]


@register_benchmark("infinite_bench")
class InfiniteBench(Benchmark):
    """InfiniteBench (the 9 English tasks of the reference)."""

    all_datasets = list(SCORERS)
    benchmark_name = "infinite_bench"
    huggingface_dataset_id = "MaxJeblick/InfiniteBench"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        row["task"] = subset
        row["answer"] = normalize_label(subset, row["answer"], row.get("options"))
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        by_task: Dict[str, List[float]] = {}
        for row in results:
            by_task.setdefault(row["task"], []).append(
                score_one(row["task"], str(row["predicted_answer"]), row["answer"])
            )
        task_scores = {t: round(sum(s) / len(s), 4) for t, s in sorted(by_task.items())}
        return {
            "overall_score": round(sum(task_scores.values()) / len(task_scores), 4),
            "task_scores": task_scores,
            "summary": {"total_tasks": len(task_scores), "total_samples": len(results)},
        }
