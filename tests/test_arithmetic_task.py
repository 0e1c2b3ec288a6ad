import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.schema import TaskConfig
from tasks.arithmetic import gold_trace, lax_steps, make_problem, problems, verbosity_levels
from tasks.format import (
    BUDGETS, STEP_CLOSE, STEP_OPEN, THINK_CLOSE, THINK_OPEN, count_tokens, fold_context, fold_segments, parse_trace,
    reasoning_tokens, render_trace,
)

CFG = TaskConfig(min_steps=2, max_steps=12, train_size=300, eval_size=100, lax_fraction=0.3, seed=7)


def replay(question: str) -> int:
    """Recompute the answer from the question text alone."""
    x = int(re.match(r"x = (\d+) \.", question).group(1))
    for sign, b in re.findall(r"op \d+ : ([+-]) (\d+) \.", question):
        x = x + int(b) if sign == "+" else x - int(b)
    return x


def summaries(trace: str) -> list[str]:
    return [s.strip() for s in re.findall(rf"{STEP_OPEN}(.*?){STEP_CLOSE}", trace)]


def test_splits_are_reproducible_and_disjoint():
    assert problems(CFG, "train") == problems(CFG, "train")
    assert problems(CFG, "eval") == problems(CFG, "eval")
    assert not set(problems(CFG, "train")) & set(problems(CFG, "eval"))
    assert problems(CFG, "train") != problems(CFG.model_copy(update={"seed": 8}), "train")


def test_difficulty_is_controlled():
    for cfg in (CFG, CFG.model_copy(update={"min_steps": 5, "max_steps": 5})):
        counts = {len(p.ops) for p in problems(cfg, "train")}
        assert counts <= set(range(cfg.min_steps, cfg.max_steps + 1))
    assert {len(p.ops) for p in problems(CFG, "train")} == set(range(2, 13))


def test_every_answer_is_correct_and_in_the_trace():
    for p in problems(CFG, "train") + problems(CFG, "eval"):
        assert p.answer == replay(p.question)
        assert all(0 <= v <= 99 for v in p.values)
        trace = gold_trace(p, lax_steps(p, CFG.lax_fraction, CFG.seed))
        assert trace.endswith(f"\\boxed{{{p.answer}}}")


def test_faithful_summaries_carry_every_running_value():
    for p in problems(CFG, "eval"):
        trace = gold_trace(p, (False,) * len(p.ops))
        assert summaries(trace) == [f"after op {k} x = {v:02d}" for k, v in enumerate(p.values, 1)]
        # The digit-by-digit reasoning of each step ends in the value its summary carries.
        results = [int(r) for r in re.findall(r"so x = (\d+) \.", trace)]
        assert results == p.values


def test_lax_fraction_is_as_configured():
    for fraction in (0.0, 0.25, 0.5, 1.0):
        flags = [f for p in problems(CFG, "train") for f in lax_steps(p, fraction, CFG.seed)]
        assert abs(sum(flags) / len(flags) - fraction) < 0.03
        p = problems(CFG, "train")[0]
        lax = lax_steps(p, fraction, CFG.seed)
        assert [("x =" not in s) for s in summaries(gold_trace(p, lax))] == list(lax)


@pytest.mark.parametrize("lax_fraction", [0.0, 0.5])
def test_verbosity_ratios_within_five_points(lax_fraction):
    # The Extra-CoT filter: a compressed trace is kept for SFT when |measured - target| <= 0.05.
    for p in problems(CFG, "eval"):
        levels = verbosity_levels(p, lax_steps(p, lax_fraction, CFG.seed))
        full = reasoning_tokens(levels[100])
        for ratio, trace in levels.items():
            assert abs(reasoning_tokens(trace) / full - ratio / 100) <= 0.05, (ratio, trace)
            # Compression never touches the format, the summaries or the answer.
            assert summaries(trace) == summaries(levels[100])
            assert trace.split(THINK_CLOSE)[1] == levels[100].split(THINK_CLOSE)[1]


def test_budget_token_starts_the_response():
    p = problems(CFG, "eval")[0]
    trace = gold_trace(p, lax_steps(p, 0.0, 0), 40, budget=40)
    assert trace.startswith(f"<COMP_40> {THINK_OPEN}")
    assert fold_context(["a", "b"], budget=40) == f"<COMP_40> {THINK_OPEN} {STEP_OPEN} a {STEP_CLOSE} {STEP_OPEN} b {STEP_CLOSE}"


def test_fold_context_is_the_trace_without_reasoning():
    p = problems(CFG, "eval")[0]
    trace = gold_trace(p, (False,) * len(p.ops))
    context = fold_context(summaries(trace))
    assert count_tokens(context) == sum(count_tokens(s) for s in summaries(trace))
    assert "ones" not in context and "tens" not in context


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12), max_operand=st.integers(1, 99))
def test_random_problems_stay_in_range(seed, steps, max_operand):
    p = make_problem(random.Random(seed), steps, max_operand)
    assert len(p.ops) == steps and all(1 <= b <= max_operand for _, b in p.ops)
    assert p.answer == replay(p.question)
    for ratio in BUDGETS:
        assert reasoning_tokens(gold_trace(p, (False,) * steps, ratio)) > 0


@pytest.mark.parametrize("budget", [None, 40])
def test_parse_and_fold_segments_invert_render(budget):
    for p in problems(CFG, "eval")[:50]:
        trace = gold_trace(p, lax_steps(p, 0.5, 0), budget or 100, budget)
        steps, answer = parse_trace(trace)
        assert render_trace(steps, answer, budget) == trace
        pairs = fold_segments(steps, answer, budget)
        assert len(pairs) == len(p.ops) + 1
        assert fold_context([], budget) + "".join(seg for _, seg in pairs) == trace
        for k, (context, segment) in enumerate(pairs):
            assert context == fold_context([s for _, s in steps[:k]], budget)
            assert segment.count(STEP_CLOSE) == (k < len(p.ops))


@pytest.mark.parametrize("bad", [
    "<think> a <step> b </step> c </think> d",      # reasoning after the last summary
    "<think> a <step> b </step> <step> c </think> x",  # unclosed step
    "<think> a <step> b",                          # unfinished
    "<think> a <step> b </step> </think> d </step>",  # tag in the answer
    "a <step> b </step> </think> d",               # no <think>
])
def test_parse_trace_rejects_malformed(bad):
    assert parse_trace(bad) is None


def test_a_problem_space_too_small_for_a_held_out_split_is_an_error_not_a_hang():
    tiny = TaskConfig(min_steps=1, max_steps=1, max_operand=1, train_size=2000, eval_size=20)
    with pytest.raises(ValueError, match="task.eval_size 20: too few problems"):
        problems(tiny, "eval")


def test_the_one_budget_token_parser_reads_a_known_token_before_think():
    from tasks.format import split_budget

    assert split_budget(" <COMP_40> <think> op 1") == (40, " op 1")
    for text in ("<COMP_30> <think> x", "<COMP_40> x", "<think> x", "x <COMP_40> <think>"):
        assert split_budget(text) == (None, text)
