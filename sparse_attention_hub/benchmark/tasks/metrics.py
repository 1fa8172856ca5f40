"""Text-matching scores shared by the benchmark scorers, written to reproduce the official
implementations the benchmarks report with (stated per function), without their packages.

``rouge_scores`` follows the ``rouge`` package 1.0.1 (pltrdy, default ``exclusive=True``),
``fuzz_ratio`` ``fuzzywuzzy.fuzz.ratio`` (its pure-Python difflib path), ``bleu`` NLTK's
``sentence_bleu`` with one n-gram order and no smoothing. Chinese word segmentation needs
``jieba`` (optional: only the Chinese LongBench tasks use it).
"""

from __future__ import annotations

import difflib
import math
import re
import string
from collections import Counter
from typing import Dict, List, Sequence, Set, Tuple

_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛"
    "〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lower case, no ASCII or CJK punctuation, no whitespace."""
    punctuation = set(string.punctuation + _ZH_PUNCTUATION)
    return "".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


def token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> Tuple[float, float, float]:
    """(F1, precision, recall) of the multiset overlap of two token lists."""
    common = Counter(prediction) & Counter(ground_truth)
    same = sum(common.values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall), precision, recall


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 after :func:`normalize_answer` (LongBench / InfiniteBench QA)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())[0]


def chinese_words(text: str) -> List[str]:
    """jieba's precise-mode segmentation (raises ImportError naming the package if missing)."""
    try:
        import jieba
    except ImportError as error:
        raise ImportError(
            "scoring Chinese tasks needs the `jieba` package (pip install jieba)"
        ) from error
    return list(jieba.cut(text, cut_all=False))


# ----------------------------------------------------------------------------------------------
# ROUGE (rouge 1.0.1 semantics: sentences split on ".", words on " ", sets of n-grams).
def _sentences(text: str) -> List[str]:
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _words(sentences: Sequence[str]) -> List[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _ngrams(words: Sequence[str], n: int) -> Set[Tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _lcs_words(x: Sequence[str], y: Sequence[str]) -> Set[str]:
    """The words of ``x`` on one longest common subsequence of x and y (the package's
    backtracking order: diagonal on a match, else up when strictly longer, else left)."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            if x[i - 1] == y[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words, i, j = set(), len(x), len(y)
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _f(precision: float, recall: float) -> float:
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_scores(hypothesis: str, reference: str) -> Dict[str, Dict[str, float]]:
    """ROUGE-1, -2 and -L (summary level) ``{"f", "p", "r"}`` of one hypothesis.

    Raises:
        ValueError: if either text has no sentence (as the package does).
    """
    hyp, ref = _sentences(hypothesis), _sentences(reference)
    if not hyp or not ref:
        raise ValueError("hypothesis and reference must both contain text")
    scores = {}
    for n in (1, 2):
        h, r = _ngrams(_words(hyp), n), _ngrams(_words(ref), n)
        overlap = len(h & r)
        p = overlap / len(h) if h else 0.0
        rc = overlap / len(r) if r else 0.0
        scores[f"rouge-{n}"] = {"f": _f(p, rc), "p": p, "r": rc}
    union: Set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence.split(" "), hyp_sentence.split(" "))
    p, rc = len(union) / len(set(_words(hyp))), len(union) / len(set(_words(ref)))
    scores["rouge-l"] = {"f": _f(p, rc), "p": p, "r": rc}
    return scores


def rouge_l_f(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F, 0 when the package would fail (empty text): LongBench's ``rouge_score``."""
    try:
        return rouge_scores(prediction, ground_truth)["rouge-l"]["f"]
    except ValueError:
        return 0.0


# ----------------------------------------------------------------------------------------------
def fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio``: round(100 * difflib similarity); equal strings 100, one
    empty string 0."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def bleu(reference: Sequence[str], hypothesis: Sequence[str], n: int) -> float:
    """NLTK ``sentence_bleu([reference], hypothesis, weights=<1 at order n>)``: brevity
    penalty times the clipped n-gram precision; 0 when no unigram matches."""

    def counts(tokens: Sequence[str], k: int) -> Counter:
        return Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))

    def clipped(k: int) -> Tuple[int, int]:
        hyp, ref = counts(hypothesis, k), counts(reference, k)
        return sum(min(c, ref[g]) for g, c in hyp.items()), max(1, sum(hyp.values()))

    if clipped(1)[0] == 0:
        return 0.0
    matched, total = clipped(n)
    c, r = len(hypothesis), len(reference)
    penalty = 1.0 if c > r else math.exp(1 - r / c)
    return penalty * matched / total
