"""The question stream of any task as plain records `{question, answer, source}`, and its step traces."""
from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from pydantic import BaseModel, field_validator

from configs.schema import TaskConfig, known_budgets
from tasks.arithmetic import gold_trace, lax_steps, problems
from tasks.benchmarks import SOURCES, load_benchmark
from tasks.files import read_jsonl
from tasks.format import render_trace, require_steps

CALCULATOR = re.compile(r"<<[^>]*>>")


def records(cfg: TaskConfig, split: str) -> list[dict]:
    """`train` or `eval` records of the configured task. Benchmarks without a train split (all but
    GSM8K) train on their test split: they are for evaluation, and training on them is the user's call."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'eval'")
    if cfg.name == "arithmetic":
        return [{"question": p.question, "answer": str(p.answer), "source": "arithmetic"} for p in problems(cfg, split)]
    files = SOURCES[cfg.name][0]
    rows = load_benchmark(cfg.name, cfg.data_dir, "train" if split == "train" and "train" in files else "test")
    return rows.to_list() if split == "train" else rows.select(range(min(cfg.eval_size, len(rows)))).to_list()


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int | str, epoch: int, size: int) -> tuple[int, ...]:
    """The seeded permutation of one epoch of `size` items: data position `epoch * size + k` reads item
    `epoch_order(...)[k]`, so a position alone says what it holds (resume needs only the position)."""
    order = list(range(size))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return tuple(order)


class TraceRecord(BaseModel):
    """A line of a step-trace file: what `accordion data` and `compress apply` write and
    `sft.data` trains on. `budget` is the `<COMP_xx>` the response opens with (None: none), `ratio` the
    measured ratio of its reasoning to the full trace's."""

    question: str
    answer: str
    response: str
    source: str = ""
    budget: int | None = None
    ratio: float | None = None

    _budget = field_validator("budget")(lambda value: known_budgets(value, auto=False))

    @field_validator("response")
    @classmethod
    def _is_a_step_trace(cls, response: str) -> str:
        require_steps(response)
        return response


def read_traces(path: str | Path) -> list[dict]:
    return read_jsonl(path, TraceRecord, what="a step-trace record")


def step_traces(cfg: TaskConfig, split: str) -> list[dict]:
    """Full step traces of the `train` or `eval` split as `TraceRecord`s: the built-in task's gold traces,
    or GSM8K's worked solutions as step traces (`gsm8k_trace`). The other benchmarks have no steps to cut."""
    if cfg.name == "arithmetic":
        return [TraceRecord(question=p.question, answer=str(p.answer), source="arithmetic",
                            response=gold_trace(p, lax_steps(p, cfg.lax_fraction, cfg.seed))).model_dump()
                for p in problems(cfg, split)]
    if cfg.name != "gsm8k":
        raise ValueError(f"task.name {cfg.name!r}: step traces come from the built-in task (arithmetic) or gsm8k only")
    files, question, gold = SOURCES["gsm8k"]
    rows = read_jsonl(Path(cfg.data_dir) / files["train" if split == "train" else "test"], required=(question, "answer"))
    if split == "eval":
        rows = rows[:cfg.eval_size]
    return [TraceRecord(question=row[question], answer=gold(row), response=gsm8k_trace(row["answer"]),
                        source="gsm8k").model_dump() for row in rows]


def gsm8k_trace(solution: str) -> str:
    """A GSM8K worked solution as a step trace: one step per line, its reasoning the line without the
    calculator notes (`<<48/2=24>>`), its summary what the line concludes: the text from the last
    calculator result on (`24 clips in May.`), or the whole line when it computes nothing."""
    body, _, final = solution.rpartition("####")
    steps = []
    for line in filter(str.strip, body.split("\n")):
        notes = list(CALCULATOR.finditer(line))
        reasoning = CALCULATOR.sub("", line).strip()
        summary = line[notes[-1].end():].strip() if notes else reasoning
        steps.append((reasoning, summary or reasoning))
    return render_trace(steps, f"the answer is \\boxed{{{final.strip().replace(',', '')}}}")
