import json
from pathlib import Path

import pytest

from configs.schema import RewardConfig
from rewards.answer import equivalent, extract_answer, gold_answer, last_boxed
from rewards.scorer import Scorer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("text,expected", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("nested \\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("\\fbox{42} is it", "42"),
    ("the answer is \\boxed 7.", "7"),
    ("unclosed \\boxed{3", None),
    ("no box here", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extraction_order_and_fallback():
    assert extract_answer("She makes 9 * 2 = 18 dollars.\n#### 1,080") == "1,080"
    assert extract_answer("#### 5 then \\boxed{6}") == "6"  # \boxed wins
    assert extract_answer("the total is 42 apples") is None
    assert extract_answer("the total is 1,234.5 apples", number_fallback=True) == "1,234.5"
    assert extract_answer("\\boxed{}", number_fallback=True) is None
    assert gold_answer(27.0) == "27" and gold_answer(0.5) == "0.5" and gold_answer(1234567.0) == "1234567"
    assert gold_answer("Work... #### 18") == "18" and gold_answer(" \\frac{1}{2} ") == "\\frac{1}{2}"


@pytest.mark.parametrize("pred,gold", [
    ("27", "27.0"), ("27.0", "27"), ("0.5", "\\frac{1}{2}"), ("\\dfrac{3}{4}", "3/4"),
    ("50\\%", "50"), ("1,234", "1234"), ("1{,}000", "1000"), ("11,111,111,100", "11,\\! 111,\\! 111,\\! 100"),
    ("x = 3", "3"), ("5 \\text{ cm}", "5"), ("\\$18", "18"), ("90^\\circ", "90"),
    ("[1,2)", "[1, 2)"), ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\text{(C)}", "C"), ("-2+7i", "-2 + 7i"), ("2\\sqrt{113}", "\\sqrt{452}"),
])
def test_equivalent(pred, gold):
    assert equivalent(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("26", "27"), ("-5", "5"), ("(1,2)", "[1,2]"), ("0.5", "\\frac{1}{3}"), ("x = 4", "3"), ("12", "1,234"),
])
def test_not_equivalent(pred, gold):
    assert not equivalent(pred, gold)


def _math500():
    return [json.loads(line) for line in open(DATA / "math500.jsonl", encoding="utf-8")]


def _accuracy(scorer, pairs):
    scored = scorer.score([{"response": response, "answer": gold} for response, gold in pairs])
    assert not any(item["timed_out"] for item in scored)
    return sum(item["correct"] for item in scored) / len(scored)


@pytest.fixture(scope="module")
def scorer():
    with Scorer(RewardConfig(timeout_s=10)) as s:
        yield s


def test_math500_solutions_match_their_own_answers(scorer):
    assert _accuracy(scorer, [(row["solution"], row["answer"]) for row in _math500()]) >= 0.99


def test_math500_solutions_do_not_match_other_answers(scorer):
    # Pair each solution with the next problem whose answer is a different string (a plain
    # rotation would pair many `4`s with `4`s, which are rightly equal).
    rows = _math500()
    pairs = []
    for i, row in enumerate(rows):
        other = next(rows[(i + k) % len(rows)] for k in range(1, len(rows))
                     if rows[(i + k) % len(rows)]["answer"].strip() != row["answer"].strip())
        pairs.append((row["solution"], other["answer"]))
    assert _accuracy(scorer, pairs) <= 0.01


def test_gsm8k_worked_answers_match_their_final_line(scorer):
    rows = [json.loads(line) for line in open(DATA / "gsm8k_test.jsonl", encoding="utf-8")]
    pairs = [(row["answer"], row["answer"].rsplit("####", 1)[1].strip()) for row in rows]
    assert _accuracy(scorer, pairs) == 1.0
