"""The question stream of any task as plain records `{question, answer, source}`."""
from __future__ import annotations

import functools
import random

from configs.schema import TaskConfig
from tasks.arithmetic import problems
from tasks.benchmarks import SOURCES, load_benchmark


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
