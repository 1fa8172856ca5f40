"""Synthetic RULER-style tasks: exact token lengths for real tokenizers built here (word-level,
byte-level BPE, sentencepiece-style BPE), answers present, deterministic, scored like RULER."""

import re
from collections import Counter

import pytest

pytest.importorskip("transformers")
from test_adapter_hf import make_tokenizer  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from sparse_attention_hub.benchmark import SyntheticRuler, create_benchmark_instance  # noqa: E402
from sparse_attention_hub.benchmark.tasks import synthetic  # noqa: E402
from sparse_attention_hub.benchmark.tasks.synthetic import TASKS, generate_sample  # noqa: E402


def corpus():
    import random

    rng = random.Random(0)
    texts = [synthetic._essay_sentence(rng) for _ in range(300)] + list(synthetic._NOISE) * 20
    texts += [
        f"One of the special magic numbers for {w} is: {rng.randint(10**6, 10**7)}."
        for w in synthetic._NOUNS
    ]
    texts += ["VAR ABCDE = 12345. Below is a numbered list of words. 1. kalo\n2. temi"] * 5
    return texts


def train_bpe(pre_tokenizer, decoder, vocab_size):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module", params=["word_level", "byte_bpe", "metaspace_bpe"])
def tokenizer(request):
    if request.param == "word_level":
        return make_tokenizer()
    if request.param == "byte_bpe":
        return train_bpe(
            pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), 600
        )
    return train_bpe(pre_tokenizers.Metaspace(), decoders.Metaspace(), 400)


def n_tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [400, 901])
@pytest.mark.parametrize("task", TASKS)
def test_exact_length_and_answers_present(tokenizer, task, length):
    sample = generate_sample(task, tokenizer, length, seed=1, index=2)
    total = sum(n_tokens(tokenizer, sample[k]) for k in ("context", "question", "answer_prefix"))
    assert total == length
    assert sample["task"] == task and sample["context_length"] == length
    assert all(str(answer) in sample["context"] for answer in sample["answer"])
    assert sample["max_new_tokens"] == {"niah": 128, "vt": 30, "cwe": 120}[task.split("_")[0]]
    assert sample == generate_sample(task, tokenizer, length, seed=1, index=2)


def test_samples_differ_by_index_and_seed():
    tok = make_tokenizer()
    a = generate_sample("niah_single_2", tok, 300, seed=0, index=0)
    assert a["answer"] != generate_sample("niah_single_2", tok, 300, seed=0, index=1)["answer"]
    assert a["answer"] != generate_sample("niah_single_2", tok, 300, seed=1, index=0)["answer"]


def test_needle_counts_and_keys():
    tok = make_tokenizer()
    multivalue = generate_sample("niah_multivalue", tok, 400)
    assert len(multivalue["answer"]) == 4 and len(set(multivalue["answer"])) == 4
    multiquery = generate_sample("niah_multiquery", tok, 400)
    keys = re.findall(r"[a-z]+-[a-z]+", multiquery["question"])
    assert len(multiquery["answer"]) == 4 and len(set(keys)) == 4
    for key, value in zip(keys, multiquery["answer"]):
        assert f"for {key} is: {value}." in multiquery["context"]
    multikey = generate_sample("niah_multikey_3", tok, 600)
    (value,) = multikey["answer"]
    (key,) = re.findall(r"for ([0-9a-f-]{36}) mentioned", multikey["question"])
    assert multikey["context"].count(f"for {key} is:") == 1
    assert f"for {key} is: {value}." in multikey["context"]
    assert multikey["context"].count("One of the special magic UUIDs") > 3  # needle haystack


def test_variable_tracking_chain_in_order():
    sample = generate_sample("vt", make_tokenizer(), 500)
    names = sample["answer"]
    value = re.search(r"value (\d+)", sample["question"]).group(1)
    positions = [sample["context"].index(f"VAR {names[0]} = {value}.")]
    positions += [
        sample["context"].index(f"VAR {names[i]} = VAR {names[i - 1]}.") for i in range(1, 5)
    ]
    assert len(set(names)) == 5 and positions == sorted(positions)


def test_common_words_are_the_most_frequent(tokenizer):
    sample = generate_sample("cwe", tokenizer, 900)
    words = Counter(re.findall(r"^\d+\. (\w+)$", sample["context"], flags=re.M))
    common = set(sample["answer"])
    assert len(common) == 10
    least_common = min(words[w] for w in common)
    assert all(count < least_common for w, count in words.items() if w not in common)


def test_errors_name_the_argument():
    tok = make_tokenizer()
    with pytest.raises(ValueError, match="task must be one of"):
        generate_sample("qa_1", tok, 512)
    with pytest.raises(ValueError, match="context_length must be >= 64, got 32"):
        generate_sample("vt", tok, 32)
    with pytest.raises(ValueError, match="needles alone take"):
        generate_sample("niah_multikey_3", tok, 80)


def test_benchmark_generates_and_scores_like_ruler():
    bench = create_benchmark_instance(
        "synthetic_ruler", ["200", "300"], tasks=["niah_single_1", "vt"], num_samples=2
    )
    assert isinstance(bench, SyntheticRuler)
    rows = bench._load_datasets(tokenizer=make_tokenizer())
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        row["predicted_answer"] = " ".join(row["answer"]) if row["task"] == "vt" else "nothing"
    metrics = bench.post_run_evaluate(rows)
    assert metrics["task_scores"] == {
        "niah_single_1": {"string_match": 0.0},
        "vt": {"string_match": 100.0},
    }
    assert metrics["overall_score"] == 50.0
    assert metrics["context_length_scores"] == {"200": 50.0, "300": 50.0}
    with pytest.raises(ValueError, match="needs a tokenizer"):
        bench._load_datasets()
    with pytest.raises(ValueError, match="context lengths"):
        SyntheticRuler(["4k"])
    with pytest.raises(ValueError, match="tasks must be a non-empty subset"):
        SyntheticRuler(["512"], tasks=["fwe"])
