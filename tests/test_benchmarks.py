from pathlib import Path

import pytest

from tasks.benchmarks import SOURCES, load_benchmark
from tasks.files import DataFileError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROWS = {("math500", "test"): 500, ("gsm8k", "test"): 1319, ("gsm8k", "train"): 7473,
        ("aime24", "test"): 30, ("amc23", "test"): 40}


@pytest.mark.parametrize("name,split", sorted(ROWS))
def test_real_sets_load_into_one_record_shape(name, split):
    records = load_benchmark(name, DATA, split)
    assert records.column_names == ["question", "answer", "source"]
    assert len(records) == ROWS[name, split]
    assert all(r["question"] and r["answer"] and r["source"] == name for r in records)


def test_gold_answers_are_normalised():
    assert load_benchmark("gsm8k", DATA, "test")[0]["answer"] == "18"  # text after '####'
    amc = load_benchmark("amc23", DATA)
    assert all(not a.endswith(".0") for a in amc["answer"])  # 27.0 -> 27
    assert "\\frac" in "".join(load_benchmark("math500", DATA)["answer"])


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "aime24.jsonl").write_text('{"problem": "p1", "answer": 1}\n{"problem": "p2", "answer": \n')
    with pytest.raises(DataFileError, match=r"aime24.jsonl:2: malformed JSON"):
        load_benchmark("aime24", tmp_path)


def test_missing_field_names_file_and_line(tmp_path):
    (tmp_path / "math500.jsonl").write_text('{"problem": "p", "answer": "1"}\n\n{"answer": "2"}\n')
    with pytest.raises(DataFileError, match=r"math500.jsonl:3: missing field 'problem'"):
        load_benchmark("math500", tmp_path)


def test_unknown_benchmark_and_split():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", DATA)
    with pytest.raises(ValueError, match="has no 'train' split"):
        load_benchmark("aime24", DATA, "train")
    assert set(SOURCES) == {"math500", "gsm8k", "aime24", "amc23"}
