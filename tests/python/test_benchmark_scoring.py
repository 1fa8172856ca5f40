"""Official scoring rules of each benchmark family on hand-made fixtures with known answers
(values worked out by hand in the comments), and the local-file loaders."""

import json
import math

import pytest

from sparse_attention_hub.benchmark import create_benchmark_instance
from sparse_attention_hub.benchmark.local_data import read_rows
from sparse_attention_hub.benchmark.tasks import (
    aime,
    infinite_bench,
    longbench,
    longbenchv2,
    loogle,
    ruler,
)
from sparse_attention_hub.benchmark.tasks.metrics import (
    bleu,
    fuzz_ratio,
    normalize_answer,
    qa_f1_score,
    rouge_l_f,
    rouge_scores,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
# Shared text metrics.
def test_normalize_and_token_f1():
    assert normalize_answer("The Eiffel-Tower, in  Paris!") == "eiffeltower in paris"
    # pred {eiffel, tower, paris} vs {eiffel, tower}: p = 2/3, r = 1 -> F1 = 0.8
    assert qa_f1_score("The Eiffel Tower, Paris", "eiffel tower") == pytest.approx(0.8)
    assert qa_f1_score("", "eiffel") == 0.0


def test_rouge_follows_the_rouge_package():
    # one sentence each: LCS the-cat-on-the-mat, as word sets {the, cat, on, mat}: 4/5 both ways
    assert rouge_l_f("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8)
    # summary level: the union of LCS words over hypothesis sentences covers every word
    assert rouge_l_f("a c d. b e", "a b c. d e") == pytest.approx(1.0)
    # word sets (exclusive=True): "a a b" has 2 distinct words, both matched
    assert rouge_l_f("a b", "a a b") == pytest.approx(1.0)
    scores = rouge_scores("the cat the cat on the mat", "the cat is on the mat")
    assert scores["rouge-1"]["r"] == pytest.approx(4 / 5)  # {the, cat, on, mat} of 5
    assert scores["rouge-2"]["r"] == pytest.approx(3 / 5)  # the-cat, on-the, the-mat of 5
    assert rouge_l_f("", "the cat") == 0.0 and rouge_l_f("...", "the cat") == 0.0
    with pytest.raises(ValueError, match="must both contain text"):
        rouge_scores("", "x")


def test_fuzz_ratio_and_bleu():
    # difflib matches "itt" and "n": 2 * 4 / 13 = 0.615 -> 62
    assert fuzz_ratio("kitten", "sitting") == 62
    assert fuzz_ratio("same", "same") == 100 and fuzz_ratio("", "x") == 0
    ref = "the cat is on the mat".split()
    hyp = "the cat the cat on the mat".split()
    assert bleu(ref, hyp, 1) == pytest.approx(5 / 7)  # clipped the 2, cat 1, on 1, mat 1
    assert bleu(ref, hyp, 2) == pytest.approx(3 / 6)  # the-cat 1, on-the 1, the-mat 1
    assert bleu(ref, "the cat".split(), 1) == pytest.approx(math.exp(1 - 6 / 2))  # brevity
    assert bleu(ref, "dog".split(), 1) == 0.0 and bleu(ref, [], 1) == 0.0


# ----------------------------------------------------------------------------------------------
# LongBench / LongBench-E.
def test_longbench_metric_functions():
    assert longbench.count_score("3 paragraphs, 3 unique, 5 total", "3") == pytest.approx(2 / 3)
    assert longbench.retrieval_score("Paragraph 7 and 12", "Paragraph 7") == 0.5
    assert longbench.code_sim_score("```python\n    return x + 1\n", "    return x + 1") == 1.0
    # the official loop drops "A" and then skips "AB" (remove while iterating): 1 / 2
    assert longbench.classification_score("ABC", "ABC", all_classes=["A", "AB", "ABC"]) == 0.5
    assert longbench.classification_score("Location", "Number", all_classes=["Location"]) == 0.0
    # trec keeps the first line only: one class named -> 1.0 (two lines would give 0.5)
    classes = ["Location", "Number"]
    assert longbench.score_one("trec", "Location\nNumber", ["Location"], classes) == 1.0
    assert longbench.score_one("lcc", "x", ["a", "x"], None) == 1.0  # best ground truth
    with pytest.raises(ValueError, match="task must be a LongBench task"):
        longbench.score_one("nope", "x", ["x"], None)


def test_longbench_and_longbench_e_from_local_files(tmp_path):
    write_jsonl(
        tmp_path / "qasper.jsonl",
        [
            {"context": "c1", "input": "q1", "answers": ["eiffel tower"], "length": 10},
            {"context": "c1", "input": "q2", "answers": ["paris"], "length": 10},
        ],
    )
    write_jsonl(
        tmp_path / "trec_e.jsonl",
        [
            {
                "context": f"c{i}",
                "input": "q",
                "answers": ["Location"],
                "all_classes": classes,
                "length": length,
            }
            for i, (length, classes) in enumerate(
                [(1000, ["Location", "Number"]), (5000, ["Location"]), (9000, ["Location"])]
            )
        ],
    )
    bench = create_benchmark_instance("longbench", ["qasper", "trec_e"], data_dir=tmp_path)
    rows = bench._load_datasets()
    assert [r["question"] for r in rows] == ["q1", "q2", "q", "q", "q"]
    assert {r["task"] for r in rows} == {"qasper", "trec_e"}
    predictions = ["The Eiffel Tower, Paris", "Paris", "Location Number", "Location", "Number"]
    for row, prediction in zip(rows, predictions):
        row["predicted_answer"] = prediction
    metrics = bench.post_run_evaluate(rows)
    # qasper: (0.8 + 1) / 2 = 90; trec_e: 0-4k 0.5, 4-8k 1.0, 8k+ 0.0
    assert metrics["task_scores"] == {
        "qasper": 90.0,
        "trec_e": {"0-4k": 50.0, "4-8k": 100.0, "8k+": 0.0},
    }
    assert metrics["standard_overall_score"] == 90.0
    assert metrics["extended_overall_scores"] == {"0-4k": 50.0, "4-8k": 100.0, "8k+": 0.0}
    assert metrics["overall_score"] == 60.0  # mean of 90, 50, 100, 0
    assert metrics["summary"]["extended_tasks"] == 1


def test_chinese_tasks_need_jieba(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_jieba(name, *args, **kwargs):
        if name == "jieba":
            raise ImportError("no jieba")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jieba)
    with pytest.raises(ImportError, match="needs the `jieba` package"):
        longbench.score_one("multifieldqa_zh", "北京", ["北京"], None)


# ----------------------------------------------------------------------------------------------
def test_ruler_string_match():
    assert ruler.string_match_all(["A b", "c"], [["a", "x"], ["C"]]) == 75.0
    assert ruler.string_match_part(["A b", "c"], [["x", "b"], ["z"]]) == 50.0
    rows = [
        {
            "task": "niah_single_1",
            "answer": ["123"],
            "predicted_answer": "1\x0023",
            "context_length": 4096,
        },
        {
            "task": "qa_1",
            "answer": '["Paris", "France"]',
            "predicted_answer": " france ",
            "context_length": 4096,
        },
        {"task": "vt", "answer": ["AB", "CD"], "predicted_answer": "AB", "context_length": 8192},
    ]
    metrics = ruler.ruler_metrics(rows)
    assert metrics["task_scores"] == {
        "niah_single_1": {"string_match": 100.0},  # control character removed
        "qa_1": {"string_match": 100.0},
        "vt": {"string_match": 50.0},
    }
    assert metrics["overall_score"] == pytest.approx(83.33)
    assert metrics["context_length_scores"] == {"4096": 100.0, "8192": 50.0}


def test_ruler_loaders_add_the_context_length(tmp_path):
    write_jsonl(
        tmp_path / "4096.jsonl", [{"context": "c", "question": "q", "answer": ["x"], "task": "vt"}]
    )
    write_jsonl(tmp_path / "cwe.jsonl", [{"context": "c", "question": "q", "answer": ["x"]}])
    (row,) = create_benchmark_instance("ruler", ["4096"], data_dir=tmp_path)._load_datasets()
    assert row["task"] == "vt" and row["context_length"] == "4096"
    (row,) = create_benchmark_instance("ruler16k", ["cwe"], data_dir=tmp_path)._load_datasets()
    assert row["task"] == "cwe" and row["context_length"] == 16384


# ----------------------------------------------------------------------------------------------
def test_infinite_bench_scorers():
    score = infinite_bench.score_one
    assert score("passkey", "The pass key is 71432. Remember", ["71432"]) == 1.0
    assert score("passkey", "It is 7143", ["71432"]) == 0.0
    assert score("kv_retrieval", 'The value is "abc-123".', ["abc-123"]) == 1.0
    assert score("code_run", "The output is: 42", [42]) == 1.0
    assert score("code_run", "no number", [42]) == 0.0
    assert score("code_debug", "The answer is (C)", ["foo_bar", "C"]) == 1.0
    assert score("code_debug", "answer is: foo_bar", ["foo_bar", "C"]) == 1.0
    assert score("code_debug", "answer is: baz", ["foo_bar", "C"]) == 0.0
    assert score("math_find", "The largest number is 12.", [12]) == 1.0
    assert score("math_find", "12.5 it is", [12]) == 0.0
    assert score("math_find", "3.5 it is", [3.5]) == 1.0
    assert score("longdialogue_qa_eng", "I think it was John.", ["JOHN"]) == 1.0
    assert score("longbook_choice_eng", "The answer is B", ["the red door", "B"]) == 1.0
    assert score("longbook_choice_eng", "A", ["the red door", "B"]) == 0.0
    assert score(
        "longbook_qa_eng", "The Eiffel Tower, Paris", ["x", "eiffel tower"]
    ) == pytest.approx(0.8)
    with pytest.raises(TypeError, match="math_find label must be int or float, got str"):
        score("math_find", "1", ["1"])


def test_infinite_bench_labels_and_metrics(tmp_path):
    label = infinite_bench.normalize_label
    assert label("code_debug", ["foo"], ["bar", "foo", "baz", "qux"]) == ["foo", "B"]
    assert label("math_find", '["12"]') == [12] and label("code_run", "7") == [7]
    write_jsonl(
        tmp_path / "passkey.jsonl",
        [
            {"context": "c", "question": "q", "answer": ["1"]},
            {"context": "d", "question": "q", "answer": ["2"]},
        ],
    )
    bench = create_benchmark_instance("infinite_bench", ["passkey"], data_dir=tmp_path)
    rows = bench._load_datasets()
    rows[0]["predicted_answer"], rows[1]["predicted_answer"] = "1", "3"
    assert bench.post_run_evaluate(rows)["task_scores"] == {"passkey": 0.5}


def test_longbenchv2_extraction_and_breakdown(tmp_path):
    assert longbenchv2.extract_answer("The correct answer is (B)") == "B"
    assert longbenchv2.extract_answer("**The correct answer is C**") == "C"
    assert longbenchv2.extract_answer("I think B") is None
    write_jsonl(
        tmp_path / "0shot.jsonl",
        [
            {
                "context": "c",
                "question": "q?",
                "choice_A": "a",
                "choice_B": "b",
                "choice_C": "c",
                "choice_D": "d",
                "answer": answer,
                "difficulty": difficulty,
                "length": length,
            }
            for answer, difficulty, length in [("A", "easy", "short"), ("B", "hard", "long")]
        ],
    )
    bench = create_benchmark_instance("longbenchv2", ["0shot"], data_dir=tmp_path)
    rows = bench._load_datasets()
    assert "(C) c" in rows[0]["question"] and rows[0]["question"].startswith("What is the correct")
    rows[0]["predicted_answer"] = "The correct answer is (A)"
    rows[1]["predicted_answer"] = "The correct answer is (A)"
    metrics = bench.post_run_evaluate(rows)
    assert metrics["task_scores"]["0shot"] == {
        "overall": 50.0,
        "easy": 100.0,
        "hard": 0.0,
        "short": 100.0,
        "long": 0.0,
    }
    assert metrics["overall_score"] == 50.0


def test_aime_extraction():
    assert aime.extract_boxed_answer("so \\boxed{\\frac{1}{2}} and") == "\\frac{1}{2}"
    assert aime.extract_numerical_answer("first \\boxed{5}, final \\boxed{033}") == "033"
    assert aime.extract_numerical_answer("Thus the answer is 204.") == "204"
    assert aime.extract_numerical_answer("We get 7 cases\nthen 1234 and 56") == "56"
    assert aime.extract_numerical_answer("only 1234") == ""
    rows = [
        {"answer": "33", "predicted_answer": "\\boxed{033}"},
        {"answer": 7, "predicted_answer": "no idea"},
    ]
    metrics = aime.aime_metrics(rows, "aime2024")
    assert metrics["accuracy"] == 0.5 and metrics["extraction_success_rate"] == 0.5
    assert metrics["extraction_failures"] == 1


def test_loogle_cloze_never_executes_model_output(tmp_path):
    reference = "{'<mask-0>': 'Alice', '<mask-1>': 'Bob Smith'}"
    assert loogle.exact_match(reference, "{'<mask-0>': 'Alice', '<mask-1>': 'Smith'}") == (1, 2)
    assert loogle.partial_match(reference, "{'<mask-0>': 'Alice', '<mask-1>': 'Smith'}") == (2, 2)
    marker = tmp_path / "executed"
    attack = f"__import__('pathlib').Path({str(marker)!r}).touch() or {{}}"
    assert loogle.exact_match(reference, attack) == (0, 1)
    assert loogle.partial_match(reference, attack) == (0, 2)
    assert not marker.exists()
    scores = loogle.generation_scores("the cat is on the mat", "the cat the cat on the mat")
    assert scores["bleu1"] == pytest.approx(5 / 7) and scores["rouge-1"] == pytest.approx(0.8)
    assert loogle.generation_scores("ref", "")["rouge-l"] == 0.0


def test_zero_scrolls_split_and_mock(tmp_path):
    text = "DOCUMENT BODY\nQuestion: what?\nAnswer:"
    write_jsonl(
        tmp_path / "default.jsonl",
        [{"input": text, "document_end_index": 14, "query_end_index": 30, "task": "qasper"}],
    )
    bench = create_benchmark_instance("zero_scrolls", data_dir=tmp_path)
    (row,) = bench._load_datasets()
    assert (row["context"], row["question"], row["answer_prefix"]) == (
        "DOCUMENT BODY\n",
        "Question: what?\n",
        "Answer:",
    )
    row["predicted_answer"] = "abcd"
    assert bench.post_run_evaluate([row])["task_stats"]["qasper"]["avg_response_length"] == 4.0
    mock = create_benchmark_instance("MOCK_BENCHMARK")
    rows = mock._load_datasets()
    assert len(rows) == 5 and len({r["context"] for r in rows}) == 3
    for row in rows:
        row["predicted_answer"] = f"It is {row['answers'][0].upper()}."
    assert mock.post_run_evaluate(rows)["accuracy"] == 1.0


def test_local_files_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text('context,answers\n"x, y","[""1"", ""2""]"\n')
    assert read_rows(tmp_path / "a.csv") == [{"context": "x, y", "answers": ["1", "2"]}]
    (tmp_path / "b.json").write_text(json.dumps([{"context": "c"}]))
    assert read_rows(tmp_path / "b.json") == [{"context": "c"}]
    bench = create_benchmark_instance("loogle", ["longdep_qa"], data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="has no longdep_qa"):
        bench._load_datasets()
    with pytest.raises(ValueError, match="subsets_to_run has \\['nope'\\]"):
        create_benchmark_instance("loogle", ["nope"])
    with pytest.raises(ValueError, match="benchmark_name 'nope' is not registered"):
        create_benchmark_instance("nope")
