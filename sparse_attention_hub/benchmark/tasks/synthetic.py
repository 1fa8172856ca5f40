"""RULER-style synthetic tasks generated locally, at an exact token length for any tokenizer.

Tasks (the RULER names): ``niah_single_1..3`` (one needle; haystack of repeated noise /
generated essay; numbers or UUIDs as values), ``niah_multikey_1..3`` (distractor needles with
other keys; haystacks of essay or of needles only), ``niah_multivalue`` (four values for one
key), ``niah_multiquery`` (four keys asked at once), ``vt`` (variable tracking: a chain of
assignments hidden in noise), ``cwe`` (common words extraction from a numbered word list).
Text is generated from built-in word lists and a seeded RNG: no data files.

Exact length: a sample's ``context``, ``question`` and ``answer_prefix``, each tokenized
without special tokens (as the adapter tokenizes them, chat template aside), total exactly
``context_length`` tokens. The haystack is grown sentence by sentence, then word by word, then
padded one token at a time; every step re-tokenizes the whole context, so merges across piece
boundaries are accounted for.
"""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..base import Benchmark, Row
from ..benchmark_registry import register_benchmark
from .ruler import ruler_metrics

TASKS = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
)
#: Generation budget per task family (as in the reference's RULER builds).
MAX_NEW_TOKENS = {"niah": 128, "vt": 30, "cwe": 120}
#: Shortest supported context (the instruction, needles and question must fit).
MIN_CONTEXT_LENGTH = 64

_ADJECTIVES = (
    "quiet amber brave calm clever silver eager gentle golden hollow humble icy jolly "
    "kind lively lucky misty noble olive proud quick rapid rustic scarlet shy sleepy "
    "solid swift tall tender tiny velvet vivid wary wild windy wise young zealous"
).split()
_NOUNS = (
    "harbor meadow lantern falcon orchard river canyon pebble willow beacon cottage "
    "garden island kettle ladder mirror needle otter parrot pillar quarry rabbit saddle "
    "tunnel valley wagon badger candle dolphin ember forest glacier hammer jacket kitten "
    "lemon marble nectar pepper ribbon spider thistle umbrella violin walnut"
).split()
_VERBS = (
    "watched crossed carried painted followed found visited guarded mended opened "
    "counted borrowed praised measured gathered cleaned studied noticed pulled warmed"
).split()
_PLACES = (
    "near the old bridge|beside the mill|after the long winter|before the market opened|"
    "under a grey sky|along the northern road|at the edge of town|during the festival|"
    "in the early morning|behind the stone wall"
).split("|")
_NOISE = (
    "The road runs past the old mill.",
    "The wind is cold tonight.",
    "Rain falls on the quiet town.",
    "The bell rings at noon.",
    "Boats rest in the harbor.",
)
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
#: Words available after the last whole sentence (more tokens than any one sentence holds).
_TAIL_WORDS = 64
#: Pieces tried, in order, to add exactly one token at the end of a context.
_PADS = (" .", " -", "\n", " the", " a", " ,", " 0")


# ----------------------------------------------------------------------------------------------
# Token counting and fitting.
TokenCount = Callable[[str], int]


def token_counter(tokenizer: Any) -> TokenCount:
    """Number of tokens of a text, without special tokens (HF tokenizer interface)."""

    def count(text: str) -> int:
        if not text:
            return 0
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return count


def _largest(ok: Callable[[int], bool], limit: Optional[int] = None) -> int:
    """Largest n in [0, limit] with ok(n), assuming ok(0) and ok monotone (grows by doubling,
    then bisects; the result always satisfies ok)."""
    lo, hi = 0, 1
    while limit is None or hi <= limit:
        if not ok(hi):
            break
        lo, hi = hi, hi * 2
    else:
        if ok(limit):
            return limit
        hi = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _pad_to(text: str, budget: int, count: TokenCount) -> str:
    """Appends single-token pieces until ``text`` is exactly ``budget`` tokens."""
    n = count(text)
    while n < budget:
        for piece in _PADS:
            if count(text + piece) == n + 1:
                text, n = text + piece, n + 1
                break
        else:
            raise ValueError(
                f"cannot extend the context from {n} to {budget} tokens one token at a time "
                f"with this tokenizer (tried {list(_PADS)})"
            )
    return text


class _Stream:
    """A lazily generated, reproducible list of haystack sentences."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make
        self._items: List[str] = []

    def take(self, n: int) -> List[str]:
        while len(self._items) < n:
            self._items.append(self._make())
        return self._items[:n]


@dataclass
class _Layout:
    """What a needle-style sample puts around its haystack."""

    instruction: str
    haystack: _Stream
    inserts: List[Tuple[float, str]]  # (depth in [0, 1], sentence), in reading order
    question: str
    answer_prefix: str
    answer: List[str]
    #: Words after the last whole sentence continue the haystack (else noise words: a needle
    #: haystack's long words would leave many tokens to pad).
    tail_from_haystack: bool = True


def _place(sentences: List[str], inserts: Sequence[Tuple[float, str]]) -> List[str]:
    """``sentences`` with each insert before the sentence at ``round(depth * len)``; inserts at
    the same place keep their order."""
    placed = list(sentences)
    indices = [round(depth * len(sentences)) for depth, _ in inserts]
    for index, (_, sentence) in sorted(zip(indices, inserts), key=lambda x: x[0], reverse=True):
        placed.insert(index, sentence)
    return placed


def _fit_haystack(layout: _Layout, budget: int, count: TokenCount) -> str:
    """The context (instruction, haystack with the inserts) of exactly ``budget`` tokens."""

    def tail(n_sentences: int) -> List[str]:
        if layout.tail_from_haystack:
            return " ".join(layout.haystack.take(n_sentences + 8)[n_sentences:]).split()
        return " ".join(_NOISE * 8).split()

    def render(n_sentences: int, n_words: int = 0) -> str:
        body = _place(layout.haystack.take(n_sentences), layout.inserts)
        if n_words:
            body.append(" ".join(tail(n_sentences)[:n_words]))
        return f"{layout.instruction}\n\n{' '.join(body)}"

    minimum = count(render(0))
    if minimum > budget:
        raise ValueError(
            f"context_length leaves {budget} tokens for the context, but its instruction and "
            f"needles alone take {minimum}"
        )
    n = _largest(lambda k: count(render(k)) <= budget)
    w = _largest(lambda k: count(render(n, k)) <= budget, limit=_TAIL_WORDS)
    return _pad_to(render(n, w), budget, count)


# ----------------------------------------------------------------------------------------------
# Generated text.
def _essay_sentence(rng: random.Random) -> str:
    subject = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    adjective = rng.choice(_ADJECTIVES)
    obj = f"{'an' if adjective[0] in 'aeiou' else 'a'} {adjective} {rng.choice(_NOUNS)}"
    place = f" {rng.choice(_PLACES)}" if rng.random() < 0.6 else ""
    return f"{subject.capitalize()} {rng.choice(_VERBS)} {obj}{place}."


def _noise_stream() -> _Stream:
    sentences = itertools.cycle(_NOISE)
    return _Stream(lambda: next(sentences))


def _pseudo_words(rng: random.Random) -> Iterator[str]:
    """Distinct made-up words (two or three syllables)."""
    seen = set()
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3))))
        if word not in seen:
            seen.add(word)
            yield word


def _key_word(rng: random.Random) -> str:
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# ----------------------------------------------------------------------------------------------
# Task layouts.
@dataclass(frozen=True)
class _NeedleTask:
    haystack: str  # "noise", "essay" or "needles"
    key: str  # "word" or "uuid"
    value: str  # "number" or "uuid"
    keys: int = 1  # needles with distinct keys (the first ``queries`` are asked)
    values: int = 1  # values per asked key
    queries: int = 1


_NEEDLE_TASKS = {
    "niah_single_1": _NeedleTask("noise", "word", "number"),
    "niah_single_2": _NeedleTask("essay", "word", "number"),
    "niah_single_3": _NeedleTask("essay", "word", "uuid"),
    "niah_multikey_1": _NeedleTask("essay", "word", "number", keys=4),
    "niah_multikey_2": _NeedleTask("needles", "word", "number"),
    "niah_multikey_3": _NeedleTask("needles", "uuid", "uuid"),
    "niah_multivalue": _NeedleTask("essay", "word", "number", values=4),
    "niah_multiquery": _NeedleTask("essay", "word", "number", keys=4, queries=4),
}


def _needle_layout(spec: _NeedleTask, rng: random.Random) -> _Layout:
    nouns = "numbers" if spec.value == "number" else "UUIDs"

    def key() -> str:
        return _key_word(rng) if spec.key == "word" else _uuid(rng)

    def distractor_key() -> str:
        """A key that is none of the sample's needle keys (distractors may repeat)."""
        while True:
            k = key()
            if k not in keys:
                return k

    def value() -> str:
        return _number(rng) if spec.value == "number" else _uuid(rng)

    def needle(k: str, v: str) -> str:
        return f"One of the special magic {nouns} for {k} is: {v}."

    keys: List[str] = []
    while len(keys) < spec.keys:
        keys.append(distractor_key())
    inserts, answer = [], []
    for i, k in enumerate(keys):
        for _ in range(spec.values if i < spec.queries else 1):
            v = value()
            inserts.append((rng.random(), needle(k, v)))
            if i < spec.queries:
                answer.append(v)
    inserts.sort(key=lambda x: x[0])
    if spec.haystack == "noise":
        haystack = _noise_stream()
    elif spec.haystack == "essay":
        haystack = _Stream(lambda: _essay_sentence(rng))
    else:
        haystack = _Stream(lambda: needle(distractor_key(), value()))
    asked = _join(keys[: spec.queries])
    return _Layout(
        instruction=(
            f"A long text follows. Special magic {nouns} are hidden in it, each tied to a key. "
            f"Remember them: you will be asked for them at the end."
        ),
        haystack=haystack,
        inserts=inserts,
        question=f"What are all the special magic {nouns} for {asked} mentioned in the text?",
        answer_prefix=f"The special magic {nouns} for {asked} mentioned in the text are",
        answer=answer,
        tail_from_haystack=spec.haystack != "needles",
    )


def _vt_layout(rng: random.Random, hops: int = 4) -> _Layout:
    names: List[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    statements = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops + 1)
    ]
    depths = sorted(rng.random() for _ in statements)
    return _Layout(
        instruction=(
            "Memorize the variable assignments hidden in the text below; you will be asked "
            "to trace them."
        ),
        haystack=_noise_stream(),
        inserts=list(zip(depths, statements)),
        question=f"Which variables are assigned the value {value}, directly or through other "
        "variables?",
        answer_prefix=f"The variables assigned the value {value} are:",
        answer=names,
    )


def _cwe_context(
    rng: random.Random, budget: int, count: TokenCount, common: int = 10
) -> Tuple[str, List[str]]:
    """A numbered word list of exactly ``budget`` tokens in which ``common`` words appear more
    often than any other; returns (context, the common words)."""
    words = _pseudo_words(rng)
    common_words = [next(words) for _ in range(common)]
    others: List[str] = []
    salt = rng.getrandbits(64)
    instruction = "Below is a numbered list of words. Some of them appear many times."

    def render(n_others: int, freq_common: int, freq_other: int, singles: int = 0) -> str:
        while len(others) < n_others + singles:
            others.append(next(words))
        entries = common_words * freq_common + others[:n_others] * freq_other
        random.Random(f"{salt}-{n_others}-{freq_common}-{freq_other}").shuffle(entries)
        entries += others[n_others : n_others + singles]
        lines = [f"{i + 1}. {w}" for i, w in enumerate(entries)]
        return f"{instruction}\n" + "\n".join(lines)

    # Frequencies as RULER (common 30, others 3) where they fit; shorter lists get fewer
    # repetitions, with the common words taking half the budget, or all of it if they must.
    options = [(budget // share, freq_other) for share in (2, 1) for freq_other in (3, 1)]
    for limit, freq_other in options:
        freq_common = next(
            (f for f in range(30, freq_other, -1) if count(render(0, f, freq_other)) <= limit),
            None,
        )
        if freq_common is not None:
            break
    else:
        raise ValueError(f"context_length leaves {budget} tokens for cwe; too few for its list")
    n = _largest(lambda k: count(render(k, freq_common, freq_other)) <= budget)
    singles = _largest(lambda k: count(render(n, freq_common, freq_other, k)) <= budget)
    text = render(n, freq_common, freq_other, singles)
    return _pad_to(text, budget, count), common_words


# ----------------------------------------------------------------------------------------------
def generate_sample(
    task: str, tokenizer: Any, context_length: int, seed: int = 0, index: int = 0
) -> Row:
    """One sample of ``task`` whose context + question + answer prefix total exactly
    ``context_length`` tokens of ``tokenizer``. Deterministic in (task, length, seed, index)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if context_length < MIN_CONTEXT_LENGTH:
        raise ValueError(f"context_length must be >= {MIN_CONTEXT_LENGTH}, got {context_length}")
    rng = random.Random(f"{task}/{context_length}/{seed}/{index}")
    count = token_counter(tokenizer)
    if task == "cwe":
        question = "What are the 10 most common words in the list above?"
        answer_prefix = "The 10 most common words in the list are:"
        budget = context_length - count(question) - count(answer_prefix)
        context, answer = _cwe_context(rng, budget, count)
    else:
        layout = _vt_layout(rng) if task == "vt" else _needle_layout(_NEEDLE_TASKS[task], rng)
        question, answer_prefix, answer = layout.question, layout.answer_prefix, layout.answer
        budget = context_length - count(question) - count(answer_prefix)
        context = _fit_haystack(layout, budget, count)
    return {
        "context": context,
        "question": question,
        "answer_prefix": answer_prefix,
        "answer": answer,
        "task": task,
        "context_length": context_length,
        "max_new_tokens": MAX_NEW_TOKENS[task.split("_")[0]],
    }


@register_benchmark("synthetic_ruler")
class SyntheticRuler(Benchmark):
    """The synthetic tasks, generated for the adapter's tokenizer; subsets are context lengths
    in tokens (any integer >= 64; ``all_datasets`` lists the usual ones). Scored like RULER.

    Args:
        tasks: the tasks to generate (default: all of :data:`TASKS`).
        num_samples: samples per task and length.
        seed: generation seed.
    """

    all_datasets = ["4096", "8192", "16384", "32768"]
    benchmark_name = "synthetic_ruler"

    def __init__(
        self,
        subsets_to_run: Optional[List[str]] = None,
        tasks: Optional[Sequence[str]] = None,
        num_samples: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__(subsets_to_run)
        self.tasks = list(tasks) if tasks is not None else list(TASKS)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {list(TASKS)}, got {tasks}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed

    @classmethod
    def validate_subsets(cls, subsets: List[str]) -> None:
        invalid = [s for s in subsets if not (s.isdigit() and int(s) >= MIN_CONTEXT_LENGTH)]
        if invalid:
            raise ValueError(
                f"subsets_to_run must be context lengths (integers >= {MIN_CONTEXT_LENGTH}), "
                f"got {invalid}"
            )

    def _load_datasets(self, tokenizer: Any = None) -> List[Row]:
        if tokenizer is None:
            raise ValueError("synthetic_ruler needs a tokenizer (the adapter's) to build lengths")
        return [
            generate_sample(task, tokenizer, int(length), self.seed, i)
            for length in self.subsets_to_run
            for task in self.tasks
            for i in range(self.num_samples)
        ]

    def post_run_evaluate(self, results: List[Row]) -> Dict[str, Any]:
        return ruler_metrics(results)
