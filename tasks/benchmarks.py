"""Loaders for the real benchmark sets (MATH-500, GSM8K, AIME24, AMC23) into one record shape:
`question`, `answer` (the gold final answer as text) and `source`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tasks.files import read_jsonl

# name -> (file per split, question field, function from a row to the gold answer text)
SOURCES: dict[str, tuple[dict[str, str], str, Callable[[dict], str]]] = {
    "math500": ({"test": "math500.jsonl"}, "problem", lambda row: str(row["answer"])),
    "gsm8k": (
        {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"},
        "question",
        lambda row: row["answer"].rsplit("####", 1)[1].strip(),
    ),
    "aime24": ({"test": "aime24.jsonl"}, "problem", lambda row: str(row["answer"])),
    # AMC answers are stored as floats (27.0) while models answer 27.
    "amc23": ({"test": "amc23.jsonl"}, "problem", lambda row: _integral(row["answer"])),
}


def _integral(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def load_benchmark(name: str, data_dir: str | Path, split: str = "test"):
    """Records `{question, answer, source}` of benchmark `name` read from `data_dir`, as a `datasets.Dataset`."""
    import datasets  # slow to import: not at module level, so the CLI's help stays fast

    if name not in SOURCES:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {sorted(SOURCES)}")
    files, question_field, gold = SOURCES[name]
    if split not in files:
        raise ValueError(f"benchmark {name!r} has no {split!r} split: it has {sorted(files)}")
    path = Path(data_dir) / files[split]
    read_jsonl(path, required=(question_field,))  # `datasets` reports a malformed line without saying which one
    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    # A fresh table rather than `map`: map would keep `answer`'s old type (AMC's floats).
    return datasets.Dataset.from_dict({
        "question": rows[question_field],
        "answer": [gold(row) for row in rows],
        "source": [name] * len(rows),
    })

