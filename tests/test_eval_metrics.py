"""Evaluation metrics and the report's target checks: pure functions, hand-computed values."""
import math

import pytest

from evals.metrics import Outcome, by_mode, cell_metrics, reference_lengths
from evals.report import targets


def outcome(q, correct, tokens=10, greedy=False, chosen=None, status="answered", peak=50):
    return Outcome(q, greedy, correct, status, tokens, tokens + 2, peak, chosen)


def test_accuracy_is_the_mean_over_samples_and_greedy_is_reported_beside_it():
    outcomes = [outcome(0, True), outcome(0, False), outcome(1, False), outcome(1, False),
                outcome(0, True, greedy=True), outcome(1, True, greedy=True)]
    m = cell_metrics(outcomes, seconds=2.0)
    assert m["accuracy"] == 0.25  # avg@k: 1 of 4 samples
    assert m["pass_at_k"] == 0.5  # question 0 has a correct sample, question 1 none
    assert m["accuracy_greedy"] == 1.0  # greedy alone would hide the sampled policy's 25 %
    assert m["tokens_per_s"] == 6 * 12 / 2.0


def test_ratio_is_measured_against_the_same_questions_full_length_samples():
    full = [outcome(0, True, tokens=100), outcome(0, True, tokens=80), outcome(1, True, tokens=50),
            outcome(1, True, tokens=999, greedy=True)]  # greedy does not set the reference
    reference = reference_lengths(full)
    assert reference == {0: 90.0, 1: 50.0}
    short = [outcome(0, True, tokens=36), outcome(1, True, tokens=20)]
    assert cell_metrics(short, 1.0, reference)["ratio"] == pytest.approx((36 / 90 + 20 / 50) / 2)


def test_policy_cells_report_the_share_and_accuracy_of_each_chosen_budget():
    m = cell_metrics([outcome(0, True, chosen=40), outcome(0, False, chosen=40), outcome(1, False, chosen=100),
                      outcome(1, True, chosen=20)], 1.0)
    assert m["chosen"] == {"20": 0.25, "40": 0.5, "100": 0.25}
    assert m["chosen_accuracy"] == {"20": 1.0, "40": 0.5, "100": 0.0}


def test_by_mode_flattens_and_computes_the_gap():
    flat = by_mode({"unfold": {"accuracy": 0.9, "peak_context": 190.0}, "fold": {"accuracy": 0.3, "peak_context": 99.0}})
    assert flat["fold_unfold_gap"] == pytest.approx(0.6)
    assert flat["unfold_peak_context"] == 190.0 and flat["fold_accuracy"] == 0.3


def test_targets_are_checked_on_what_the_report_holds():
    report = {
        "sft": {"unfold_accuracy": 0.97, "fold_accuracy": 0.40},
        "rl_evals": [{"step": 10, "unfold_accuracy": 0.96, "fold_accuracy": 0.90},
                     {"step": 20, "unfold_accuracy": 0.97, "fold_accuracy": 0.96},
                     {"step": 30, "unfold_accuracy": 0.97, "fold_accuracy": 0.975}],
        "budgets": {"40": {"ratio": 0.37, "accuracy": 0.9, "reasoning_tokens": 40},
                    "20": {"ratio": 0.33, "accuracy": 0.1, "reasoning_tokens": 30},
                    "100": {"accuracy": 0.97, "reasoning_tokens": 100},
                    "auto": {"accuracy": 0.965, "reasoning_tokens": 38}},
    }
    t = targets(report)
    assert t["sft_unfold_accuracy"]["met"] and t["sft_gap"]["met"]
    assert t["rl_gap_last_two"]["met"] and t["rl_gap_last_two"]["value"] == pytest.approx(0.01)
    assert t["auto_tokens_vs_100"]["met"] and t["auto_accuracy_loss"]["met"]
    assert t["ratio_40"]["met"] and not t["ratio_20"]["met"]
    assert "ratio_60" not in t and targets({}) == {}


def test_accuracy_targets_carry_the_standard_error_of_their_protocol():
    report = {
        "sft": {"unfold_accuracy": 0.9, "fold_accuracy": 0.5, "protocol": {"questions": 100, "samples": 4}},
        "rl_evals": [{"step": 20, "unfold_accuracy": 0.9, "fold_accuracy": 0.8, "questions": 25, "samples": 4},
                     {"step": 40, "unfold_accuracy": 0.96, "fold_accuracy": 0.95, "questions": 200, "samples": 8}],
        "budgets": {"100": {"accuracy": 0.9, "reasoning_tokens": 100}, "auto": {"accuracy": 0.9, "reasoning_tokens": 40}},
        "protocol": {"budgets": {"questions": 50, "samples": 2}},
    }
    t = targets(report)
    assert t["sft_unfold_accuracy"]["stderr"] == pytest.approx(0.015)  # sqrt(0.9 * 0.1 / 400)
    assert t["sft_gap"]["stderr"] == pytest.approx(0.0292, abs=1e-4)  # sqrt((0.09 + 0.25) / 400)
    # The wider gap (step 20) is the value judged, so its 100 samples give the error; the lower Unfold too.
    assert t["rl_gap_last_two"]["value"] == pytest.approx(0.1) and t["rl_gap_last_two"]["stderr"] == pytest.approx(0.05)
    assert t["rl_unfold_last_two"]["stderr"] == pytest.approx(0.03)
    assert t["auto_accuracy_loss"]["stderr"] == pytest.approx(0.0424, abs=1e-4)  # sqrt(2 * 0.09 / 100)
    assert "stderr" not in t["auto_tokens_vs_100"]
    report["protocol"] = {}
    assert "stderr" not in targets(report)["auto_accuracy_loss"]


def test_policy_targets_are_judged_on_the_final_protocol_where_it_measured_the_policy():
    # The sweep (200 x 2) says a 2-point loss; the final evaluation (200 x 8) measured both cells with 4x the samples.
    report = {"budgets": {"100": {"accuracy": 0.96, "reasoning_tokens": 150}, "auto": {"accuracy": 0.94, "reasoning_tokens": 60}},
              "final": {"fold_accuracy": 0.97, "fold_reasoning_tokens": 148,
                        "auto": {"accuracy": 0.965, "reasoning_tokens": 58}},
              "protocol": {"budgets": {"questions": 200, "samples": 2}, "final": {"questions": 200, "samples": 8}}}
    t = targets(report)
    assert t["auto_accuracy_loss"]["value"] == pytest.approx(0.005) and t["auto_accuracy_loss"]["met"]
    assert t["auto_accuracy_loss"]["stderr"] == pytest.approx(math.sqrt((0.97 * 0.03 + 0.965 * 0.035) / 1600), abs=1e-4)
    assert t["auto_tokens_vs_100"]["value"] == pytest.approx(58 / 148, abs=1e-4)
    del report["final"]["auto"]  # no policy cell in the final evaluation: the sweep's pair
    assert targets(report)["auto_accuracy_loss"]["value"] == pytest.approx(0.02)


def test_a_target_is_judged_on_the_value_as_shown_not_on_float_noise():
    # 0.98 - 0.97 = 0.01000000000000001 and 0.6 - 0.1 = 0.49999999999999994: both sit exactly on their bound.
    t = targets({"budgets": {"100": {"accuracy": 0.98, "reasoning_tokens": 100},
                             "auto": {"accuracy": 0.97, "reasoning_tokens": 40},
                             "60": {"ratio": 0.5, "accuracy": 0.9, "reasoning_tokens": 50},
                             "40": {"ratio": 0.5001, "accuracy": 0.9, "reasoning_tokens": 50}}})
    assert t["auto_accuracy_loss"] == {"value": 0.01, "target": "<= 0.01", "met": True}
    assert t["ratio_60"]["met"] and not t["ratio_40"]["met"]
