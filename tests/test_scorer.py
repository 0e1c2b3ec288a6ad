import json

import pytest

from benches.reward import adversarial
from cli import main as accordion
from configs.schema import RewardConfig
from rewards.scorer import ItemError, Scorer
from tasks.format import render_trace

HANG = "10^{10^{10^{10}}}"


def trace(answer, budget=None, reasoning="a b c d"):
    return render_trace([(reasoning, "s")], f"so the answer is \\boxed{{{answer}}}", budget)


@pytest.fixture(scope="module")
def chrpo():
    with Scorer(RewardConfig(name="chrpo", timeout_s=0.5)) as scorer:
        yield scorer


def test_chrpo_items_end_to_end(chrpo):
    items = [
        {"response": trace("\\frac{1}{2}", 40), "answer": "0.5", "budget": 40, "ref_len": 10},
        {"response": trace("7", 40), "answer": "0.5", "budget": 40, "ref_len": 10},
        {"response": trace(HANG, 20), "answer": 3, "budget": "auto", "ref_len": 10},
        {"response": "<COMP_60> <think> a b <step> s", "answer": "3", "budget": "auto", "ref_len": 10},
        {"response": trace("3"), "answer": "3", "budget": "auto", "ref_len": 10, "chosen": 80,
         "reasoning_tokens": 8, "status": "unfinished"},
    ]
    right, wrong, hang, cut, told = chrpo.score(items)
    assert right["correct"] and right["pred"] == "\\frac{1}{2}" and right["status"] == "answered"
    assert right["components"]["ratio"] == pytest.approx(0.5)  # "a b c d" + "s" = 5 tokens of 10
    assert right["reward"] > 1 and right["control_reward"] is None
    assert not wrong["correct"] and wrong["reward"] < 0
    assert hang["timed_out"] and hang["pred"] == HANG and not hang["correct"]
    assert hang["reward"] == hang["control_reward"] == pytest.approx(-(0.5 * 0.8 + 0.1 * 0.2))
    assert cut["status"] == "unfinished" and cut["reward"] == -1.0
    assert told["status"] == "unfinished" and told["components"] == {
        "format": 0.0, "correct": 0.0, "calibration": 0.0, "compression": 0.0, "miss": 0.0,
        "ratio": 0.8, "chosen": 0.8}


@pytest.mark.parametrize("item,message", [
    ({"answer": "1"}, "missing field"),
    ({"response": 3, "answer": "1"}, "response: expected text"),
    ({"response": "x", "answer": "1", "budget": 30, "ref_len": 5}, "budget: expected one of"),
    ({"response": "x", "answer": "1", "budget": 40}, "ref_len: required"),
    ({"response": "x", "answer": "1", "budget": "auto", "mode": "fixed", "ref_len": 5}, "mode: 'fixed'"),
])
def test_bad_items_are_named(chrpo, item, message):
    with pytest.raises(ItemError, match=message):
        chrpo.score([{"response": trace("1", 20), "answer": "1", "budget": 20, "ref_len": 9}, item])


def test_adversarial_answers_each_finish_within_the_limit_and_no_process_is_lost():
    # Two of each adversarial kind; the full 1,000 run is `accordion bench reward`.
    items = adversarial(32, seed=1)
    with Scorer(RewardConfig(timeout_s=1.0)) as scorer:
        scored = scorer.score(items)
        stats = scorer.stats()
    assert len(scored) == 32 and not any(item["correct"] for item in scored)
    # The spec is 1.5x the limit (met in the full run); the slack here is for a CI machine whose
    # scheduler wakes the killing loop late. A missing or serialized kill still fails it.
    assert stats["timeouts"] >= 10 and stats["max_call_s"] <= 1.0 * 2
    assert stats["alive"] == 2


def test_score_command_skips_bad_lines_by_number(tmp_path, capsys):
    good = {"response": trace("1,000"), "answer": "1000"}
    lines = [json.dumps(good), "{not json", json.dumps({"response": "x"}), "",
             json.dumps({**good, "answer": "999"})]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert accordion(["score", "--in", str(src), "--out", str(out), "reward.name=accordion"]) == 0
    err = capsys.readouterr().err
    assert f"{src}:2: malformed JSON" in err and f"{src}:3: missing field(s) answer (skipped)" in err
    assert "2 lines scored, 2 skipped: accuracy 50.0%" in err and "lines/s" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False] and rows[1]["answer"] == "999"
    assert {"pred", "correct", "reward", "components", "timed_out"} <= rows[0].keys()

    assert accordion(["score", "--in", str(src), "--out", str(out), "--strict", "reward.name=accordion"]) == 2
    assert f"{src}:2: malformed JSON" in capsys.readouterr().err
