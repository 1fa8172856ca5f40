"""LooGLE: loader and the LooGLE automatic metrics that run offline.

Rows: ``context``, ``question``, ``answer`` (text; for ``shortdep_cloze`` a dict literal
``{"<mask-0>": "name", ...}``), optional ``answer_prefix`` / ``max_new_tokens``.

- ``shortdep_cloze``: exact / partial match of the predicted dict. Model output is parsed
  with ``ast.literal_eval`` (literals only; the reference uses ``eval``); unparsable output
  scores 0.
- other tasks: BLEU-1/4 and ROUGE-1/2/L recall, plus METEOR when ``nltk`` and its WordNet data
  are installed (never downloaded). BERTScore, which needs a model download, is left out.
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark
from .metrics import bleu, rouge_scores


def parse_dict(text: Any) -> Optional[Dict[Any, Any]]:
    """A dict from a dict or its literal text; None if the text is not a dict literal."""
    if isinstance(text, dict):
        return text
    try:
        value = ast.literal_eval(str(text).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def exact_match(reference: Any, hypothesis: Any) -> Tuple[int, int]:
    """(keys whose predicted value equals the reference, keys in the reference); (0, 1) when
    either side does not parse."""
    ref, hyp = parse_dict(reference), parse_dict(hypothesis)
    if ref is None or hyp is None:
        return 0, 1
    return sum(hyp.get(k) == v for k, v in ref.items()), len(ref)


def partial_match(reference: Any, hypothesis: Any) -> Tuple[int, int]:
    """(keys whose predicted value shares a word with the reference, keys in the reference)."""
    ref = parse_dict(reference)
    if ref is None:
        raise ValueError(f"reference must be a dict literal, got {str(reference)[:80]!r}")
    hyp = parse_dict(hypothesis)
    if hyp is None:
        return 0, len(ref)
    hits = sum(
        key in hyp and bool(set(str(ref[key]).split()) & set(str(hyp[key]).split())) for key in ref
    )
    return hits, len(ref)


def _meteor_function() -> Any:
    """NLTK's ``single_meteor_score`` when nltk and WordNet are installed, else None."""
    try:
        import nltk
        from nltk.translate.meteor_score import single_meteor_score

        nltk.data.find("corpora/wordnet")
    except (ImportError, LookupError):
        return None
    return single_meteor_score


def generation_scores(reference: str, hypothesis: str, meteor: Any = None) -> Dict[str, float]:
    """BLEU-1/4, ROUGE-1/2/L recall (0 when the text is empty) and, if given, METEOR."""
    ref_words = reference.replace("\n", " ").split()
    hyp_words = hypothesis.replace("\n", " ").split()
    scores = {"bleu1": bleu(ref_words, hyp_words, 1), "bleu4": bleu(ref_words, hyp_words, 4)}
    try:
        rouge = rouge_scores(hypothesis, reference)
        scores.update({k: rouge[k]["r"] for k in ("rouge-1", "rouge-2", "rouge-l")})
    except ValueError:
        scores.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    if meteor is not None:
        scores["meteor"] = float(meteor(set(ref_words), set(hyp_words)))
    return scores


def loogle_task_scores(task: str, rows: Sequence[Row]) -> Dict[str, float]:
    if task == "shortdep_cloze":
        result = {}
        for name, match in (("exact_match", exact_match), ("partial_match", partial_match)):
            pairs = [match(r["answer"], r["predicted_answer"]) for r in rows]
            result[name] = round(sum(p[0] for p in pairs) / sum(p[1] for p in pairs), 4)
        return result
    meteor = _meteor_function()
    per_row = [
        generation_scores(str(r["answer"]), str(r["predicted_answer"]), meteor) for r in rows
    ]
    return {k: sum(s[k] for s in per_row) / len(per_row) for k in per_row[0]}


@register_benchmark("loogle")
class Loogle(Benchmark):
    """LooGLE short- and long-dependency tasks."""

    all_datasets = ["shortdep_qa", "longdep_qa", "shortdep_cloze", "longdep_summarization"]
    benchmark_name = "loogle"
    huggingface_dataset_id = "simonjegou/loogle"

    def _prepare_row(self, row: Row, subset: str) -> Row:
        row["task"] = subset
        return row

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        """Per-task metrics; ``overall_score`` averages the cloze exact match and the other
        tasks' BLEU-1 (the reference's fallback when BERTScore is absent)."""
        by_task: Dict[str, List[Row]] = {}
        for row in results:
            by_task.setdefault(row["task"], []).append(row)
        task_scores = {
            task: loogle_task_scores(task, rows) for task, rows in sorted(by_task.items())
        }
        primary = [
            s["exact_match"] if task == "shortdep_cloze" else s["bleu1"]
            for task, s in task_scores.items()
        ]
        return {
            "overall_score": round(sum(primary) / len(primary), 4),
            "task_scores": task_scores,
            "summary": {"total_tasks": len(task_scores), "total_samples": len(results)},
        }
