"""`accordion bench async`: pairs of arms in alternating order, pooled into one figure."""
import pytest

from benches.async_rl import arm_order, pool


def arm(trained, train_s, eval_s):
    return {"trained": trained, "train_s": train_s, "run_s": train_s + eval_s, "eval_s": eval_s}


def test_pairs_alternate_which_arm_runs_first():
    assert [arm_order(["sync", "async"], pair) for pair in range(3)] == [["sync", "async"], ["async", "sync"],
                                                                          ["sync", "async"]]


def test_pairs_pool_trajectories_and_seconds_not_ratios():
    pairs = [{"sync": arm(1280, 50.0, 2.0), "async": arm(1280, 25.0, 1.0), "ratio": 2.0},
             {"sync": arm(1280, 70.0, 2.0), "async": arm(1280, 50.0, 1.0), "ratio": 1.4}]
    result = pool(pairs)
    assert result["sync_samples_per_s"] == pytest.approx(2560 / 120)
    assert result["async_samples_per_s"] == pytest.approx(2560 / 75)
    assert result["ratio"] == pytest.approx(120 / 75)  # 1.6, not the mean of 2.0 and 1.4
    assert result["ratio_with_eval"] == pytest.approx(124 / 77)
    assert (result["sync_eval_s"], result["async_train_s"], result["pairs"]) == (4.0, 75.0, pairs)
