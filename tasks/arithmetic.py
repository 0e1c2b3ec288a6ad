"""The built-in task: a running value updated by a chain of additions and subtractions.

Each step needs the value left by the previous one, so a Fold-mode model can only succeed if
every summary carries the running value. Gold traces work each operation digit by digit; a
"lax" summary names the step but drops the value, as LLM-written summaries often do.

Compressed traces (for `<COMP_xx>` budgets) keep the highest-priority spans of the full trace,
in order, until the token budget is used, the way the Extra-CoT compressor keeps top-scored
tokens: summaries always, then the restated operation, the ones-digit fact, the tens-digit fact,
the rest of the working, the result, the labels, the narration. So 60 % still holds every fact the
answer needs, 40 % leaves the tens digit (and carry) to be done mentally, 20 % all of it. Numbers
are atomic spans, so a compressed trace never shows half a number.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from configs.schema import TaskConfig
from tasks.format import BUDGETS, count_tokens, render_trace

# Priority of a span when a trace is compressed: higher survives longer.
SUMMARY, OPERATION, ONES, TENS, WORKING, RESULT, LABEL, NARRATION = 8, 7, 6, 5, 4, 3, 2, 1
Span = tuple[str, int]
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Problem:
    """A start value and a chain of `(sign, operand)` operations; every running value stays in 0..99."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        """The running value after each operation."""
        out, x = [], self.start
        for sign, b in self.ops:
            x = x + b if sign == "+" else x - b
            out.append(x)
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def question(self) -> str:
        ops = " ".join(f"op {k} : {sign} {b} ." for k, (sign, b) in enumerate(self.ops, 1))
        return f"x = {self.start} . {ops} what is x ?"


def make_problem(rng: random.Random, n_steps: int, max_operand: int) -> Problem:
    """Draw a problem whose running value never leaves 0..99 (two digits keep the digit work short)."""
    x = rng.randint(0, 99)
    start, ops = x, []
    for _ in range(n_steps):
        signs = [s for s, ok in (("+", x + 1 <= 99), ("-", x - 1 >= 0)) if ok]
        sign = rng.choice(signs)
        room = 99 - x if sign == "+" else x
        b = rng.randint(1, min(max_operand, room))
        x = x + b if sign == "+" else x - b
        ops.append((sign, b))
    return Problem(start, tuple(ops))


def problems(cfg: TaskConfig, split: str) -> list[Problem]:
    """The seeded `train` or `eval` split; eval problems never occur in train."""
    if split == "train":
        return list(_stream(cfg.seed, cfg, cfg.train_size, exclude=set()))
    if split == "eval":
        train = set(_stream(cfg.seed, cfg, cfg.train_size, exclude=set()))
        return list(_stream(cfg.seed + HELDOUT_SEED_OFFSET, cfg, cfg.eval_size, exclude=train))
    raise ValueError(f"unknown split {split!r}: expected 'train' or 'eval'")


def _stream(seed: int, cfg: TaskConfig, size: int, exclude: set[Problem]) -> Iterator[Problem]:
    rng = random.Random(seed)
    produced = rejected = 0
    while produced < size:
        p = make_problem(rng, rng.randint(cfg.min_steps, cfg.max_steps), cfg.max_operand)
        if p in exclude:
            rejected += 1
            if rejected > 1000 * size:  # a small problem space the training split already covers
                raise ValueError(f"task.eval_size {size}: too few problems with {cfg.min_steps}-{cfg.max_steps} "
                                 f"operations and operands up to {cfg.max_operand} lie outside the {cfg.train_size} "
                                 f"training problems; raise task.max_operand or task.max_steps, or lower task.train_size")
            continue
        produced += 1
        yield p


def lax_steps(problem: Problem, lax_fraction: float, seed: int) -> tuple[bool, ...]:
    """Which gold summaries are lax; seeded per problem so a trace is reproducible on its own."""
    rng = random.Random(f"{seed}:{problem.start}:{problem.ops}")  # str seeds are stable across processes
    return tuple(rng.random() < lax_fraction for _ in problem.ops)


def summary(k: int, value: int, lax: bool) -> str:
    """A faithful summary carries the running value, always in two digits; a lax one only says the step happened.
    Two digits, because a trace that leaves the tens to be done mentally (`<COMP_40>`) otherwise has the model
    decide whether to write them: with `x = 9`, after RL 3.9-9.1 % of one-digit results came out one off against
    ~1 % of two-digit ones, most of the policy's accuracy loss; with `x = 09`, 1.1 %."""
    return f"after op {k} done" if lax else f"after op {k} x = {value:02d}"


def step_spans(k: int, x: int, sign: str, b: int) -> list[Span]:
    """Digit-by-digit working of `x sign b`, as prioritised spans (numbers are single spans)."""
    ones_x, ones_b, tens_x, tens_b = x % 10, b % 10, x // 10, b // 10
    if sign == "+":
        total = ones_x + ones_b
        digit, carry = total % 10, total // 10
        tens = tens_x + tens_b + carry
        ones = [("ones :", LABEL), (f"{ones_x} + {ones_b} = {total}", ONES),
                (", write", NARRATION), (str(digit), WORKING), ("carry", LABEL), (str(carry), WORKING)]
        tens_work = f"{tens_x} + {tens_b} + {carry} = {tens}"
    else:
        borrow = int(ones_x < ones_b)
        digit = ones_x + 10 * borrow - ones_b
        tens = tens_x - tens_b - borrow
        ones = [("ones :", LABEL), (f"{ones_x} - {ones_b}", WORKING), (": borrow", LABEL), (str(borrow), WORKING),
                (",", NARRATION), (f"{ones_x + 10 * borrow} - {ones_b} = {digit}", ONES)]
        tens_work = f"{tens_x} - {tens_b} - {borrow} = {tens}"
    result = 10 * tens + digit
    # The step opens by restating its operation word for word as the question gives it: a tiny model
    # learns that copy quickly, where finding op k's operand while writing `x sign b` it learns slowly.
    return [
        (f"op {k} : {sign} {b} .", OPERATION), (f"{x} {sign} {b}", WORKING), (".", NARRATION),
        *ones, (". tens :", LABEL), (tens_work, TENS),
        (". so x =", NARRATION), (str(result), RESULT), (".", NARRATION),
    ]


def trace_spans(problem: Problem, lax: tuple[bool, ...]) -> list[tuple[list[Span], str]]:
    """Per step: the reasoning spans and the summary."""
    xs = [problem.start, *problem.values]
    return [
        (step_spans(k, xs[k - 1], sign, b), summary(k, xs[k], lax[k - 1]))
        for k, (sign, b) in enumerate(problem.ops, 1)
    ]


def answer_text(problem: Problem) -> str:
    return f"the answer is \\boxed{{{problem.answer}}}"


def gold_trace(problem: Problem, lax: tuple[bool, ...], ratio: int = 100, budget: int | None = None) -> str:
    """The gold response at `ratio` % of the full reasoning tokens (summaries included, tags excluded);
    the answer segment is never compressed."""
    steps = trace_spans(problem, lax)
    kept = kept_spans(steps, ratio)
    rendered = [
        (" ".join(t for j, (t, _) in enumerate(spans) if (i, j) in kept), summ)
        for i, (spans, summ) in enumerate(steps)
    ]
    return render_trace(rendered, answer_text(problem), budget)


def kept_spans(steps: list[tuple[list[Span], str]], ratio: int) -> set[tuple[int, int]]:
    """`(step, span)` indices of the reasoning spans kept at `ratio` %: highest priority first and, within a
    priority, evenly across steps, so every step is compressed alike; the last span kept may overshoot the
    budget by less than it would fall short without it. Summaries are always kept (they count)."""
    full = sum(count_tokens(s) for spans, summ in steps for s in [*(t for t, _ in spans), summ])
    keep_budget = round(full * ratio / 100) - sum(count_tokens(summ) for _, summ in steps)
    # Rank spans: priority first, then the i-th span of that priority across all steps, then step order.
    ranked = []
    for step_idx, (spans, _) in enumerate(steps):
        seen: dict[int, int] = {}
        for span_idx, (text, prio) in enumerate(spans):
            nth = seen.get(prio, 0)
            seen[prio] = nth + 1
            ranked.append((-prio, nth, step_idx, span_idx, text))
    kept: set[tuple[int, int]] = set()
    for _, _, step_idx, span_idx, text in sorted(ranked):
        cost = count_tokens(text)
        if cost >= 2 * keep_budget:
            break  # strictly by rank: no stray low-priority fragments filling the last few tokens
        keep_budget -= cost  # a span that overshoots is kept when that lands nearer the target
        kept.add((step_idx, span_idx))
        if keep_budget <= 0:
            break
    return kept


def span_levels(problem: Problem, lax: tuple[bool, ...]) -> list[tuple[list[tuple[str, int]], str]]:
    """Per step of the full gold trace: each reasoning span with the smallest budget ratio at which it
    survives (a larger ratio keeps a superset: the same ranking, read further), and the summary (kept at
    every ratio). What the compressor learns to rank by."""
    steps = trace_spans(problem, lax)
    kept = {ratio: kept_spans(steps, ratio) for ratio in BUDGETS}
    return [([(text, min(r for r in BUDGETS if (i, j) in kept[r])) for j, (text, _) in enumerate(spans)], summ)
            for i, (spans, summ) in enumerate(steps)]


def verbosity_levels(problem: Problem, lax: tuple[bool, ...]) -> dict[int, str]:
    """The same trace at each budget ratio (20/40/60/80/100 %)."""
    return {ratio: gold_trace(problem, lax, ratio) for ratio in BUDGETS}
