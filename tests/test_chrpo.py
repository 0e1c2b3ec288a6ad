import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from configs import ConfigError, load_config
from rewards.chrpo import (
    REWARDS,
    Coefficients,
    Rollout,
    accordion_reward,
    chosen_ratio,
    chrpo_reward,
    huber_band,
    trace_status,
)
from tasks.format import render_trace

C = Coefficients()
ratios = st.sampled_from([0.2, 0.4, 0.6, 0.8, 1.0])
measured = st.floats(0.0, 5.0, allow_nan=False)
policy = st.booleans()
bad_status = st.sampled_from(["unfinished", "malformed"])
relaxed = settings(deadline=None)  # pure arithmetic; no per-example deadline on a shared CI machine


def reward(correct=True, status="answered", chosen=0.4, r=0.4, pol=False):
    return chrpo_reward(Rollout(correct, status, chosen, r, pol), C)


def test_hand_computed_values():
    # correct, on target at 40 %: 1 + w_cal + w_comp * min(0.6, κ) = 1 + 0.2 + 0.3
    assert reward(r=0.4).total == pytest.approx(1.5)
    # at the band edge the calibration term is exactly 0; compression 0.5 * 0.5
    assert reward(r=0.5).components["calibration"] == pytest.approx(0.0)
    assert reward(r=0.5).total == pytest.approx(1.25)
    # far off: the calibration term bottoms out at -calib_floor; r̂ > 1 earns no compression
    assert reward(chosen=0.2, r=3.0).total == pytest.approx(1 - 0.4)
    # wrong: λ_under * (1 - c) + λ_over * c
    assert reward(correct=False, chosen=0.2).total == pytest.approx(-(0.5 * 0.8 + 0.1 * 0.2))
    assert reward(correct=False, chosen=1.0).total == pytest.approx(-0.1)
    assert reward(status="unfinished").total == -1.0
    assert huber_band(0.05, 0.1) == pytest.approx(0.25) and huber_band(0.3, 0.1) == pytest.approx(5.0)


@relaxed
@given(ratios, measured, ratios, measured, policy)
def test_correct_always_beats_incorrect(c1, r1, c2, r2, pol):
    win, lose = reward(True, chosen=c1, r=r1, pol=pol), reward(False, chosen=c2, r=r2, pol=pol)
    assert win.total > lose.total
    if pol:
        assert win.control > lose.control


@relaxed
@given(ratios, ratios, st.floats(0.0, 2.0))
def test_closer_calibration_scores_higher(c1, c2, r):
    # Same measured ratio (so the same compression), chosen ratios at different distances from it.
    c_near, c_far = sorted((c1, c2), key=lambda c: abs(r - c))
    (e_near, near), (e_far, far) = ((abs(r - c), reward(chosen=c, r=r)) for c in (c_near, c_far))
    assert near.total >= far.total
    if e_far - e_near > 1e-9 and far.components["calibration"] > -C.calib_floor:
        assert near.total > far.total
    for e, out in ((e_near, near), (e_far, far)):
        # A tolerance on both sides: at e == band, floating point puts the term a hair either side of 0.
        assert (out.components["calibration"] >= -1e-9) == (e <= C.calib_band + 1e-9)


@relaxed
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(-0.3, 0.3))
def test_stronger_compression_scores_higher_up_to_the_cap(a, b, offset):
    # Same calibration error (chosen - r̂ fixed), different r̂: shorter is better until 1 - r̂ > κ.
    r1, r2 = sorted((a, b))
    short, long_ = reward(chosen=r1 + offset, r=r1), reward(chosen=r2 + offset, r=r2)
    assert short.total >= long_.total - 1e-12
    if r1 < r2 and 1 - r2 < C.compress_cap:
        assert short.total > long_.total
    assert short.components["compression"] <= C.compress_weight * C.compress_cap + 1e-12


@relaxed
@given(ratios, ratios, measured, policy)
def test_failing_at_a_shorter_budget_costs_more(c1, c2, r, pol):
    assume(c1 != c2)
    shorter, longer = reward(False, chosen=min(c1, c2), r=r, pol=pol), reward(False, chosen=max(c1, c2), r=r, pol=pol)
    assert shorter.total < longer.total
    if pol:
        assert shorter.control < longer.control


@relaxed
@given(bad_status, ratios, measured, st.booleans(), ratios, measured, policy)
def test_unfinished_or_malformed_scores_lowest(status, c1, r1, correct, c2, r2, pol):
    bad = reward(correct, status=status, chosen=c1, r=r1, pol=pol)
    answered = reward(correct=False, chosen=c2, r=r2, pol=pol)
    assert bad.total < answered.total
    if pol:
        assert bad.control < answered.control


@relaxed
@given(ratios, ratios, measured)
def test_control_reward_rewards_the_choice_not_the_calibration(c1, c2, r):
    # Policy mode only; correct choices: a shorter choice earns more (up to κ), whatever r̂ was.
    assert reward(chosen=c1, r=r).control is None
    a, b = reward(chosen=c1, r=r, pol=True), reward(chosen=c1, r=r + 1, pol=True)
    assert a.control == b.control
    if c1 < c2 and 1 - c2 < C.compress_cap:
        assert reward(chosen=c1, r=r, pol=True).control > reward(chosen=c2, r=r, pol=True).control


@relaxed
@given(ratios, measured, st.booleans(), st.sampled_from(["answered", "unfinished", "malformed"]), policy)
def test_rewards_are_finite_with_the_same_components_every_time(c, r, correct, status, pol):
    out = chrpo_reward(Rollout(correct, status, c, r, pol), C)
    assert math.isfinite(out.total)
    assert {"format", "correct", "calibration", "compression", "miss"} <= out.components.keys()


def test_accordion_reward_is_binary_on_finished_traces():
    assert accordion_reward(Rollout(True), C).total == 1.0
    assert accordion_reward(Rollout(False), C).total == 0.0
    assert accordion_reward(Rollout(True, "unfinished"), C).total == 0.0
    assert accordion_reward(Rollout(True, "malformed"), C).total == 0.0
    assert set(REWARDS) == {"accordion", "chrpo"}


def test_chrpo_needs_the_ratios():
    with pytest.raises(ValueError, match="budget and ref_len"):
        chrpo_reward(Rollout(True, chosen=None, measured=0.3), C)


@pytest.mark.parametrize("override,message", [
    ("reward.calib_floor=1.0", "calib_floor"),
    ("reward.over_penalty=0.6", "under_penalty"),
    ("reward.format_penalty=0.3", "format_penalty"),
    ("reward.calib_band=0", "calib_band"),
])
def test_coefficients_that_break_an_ordering_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_format_check_and_ratio_choice():
    trace = render_trace([("a b", "s")], "so \\boxed{3}", 40)
    assert trace_status(trace) == "answered"
    assert trace_status("<think> a b <step> s </step> and then") == "unfinished"
    assert trace_status("<think> a <step> s <step> t </step> </think> x") == "malformed"
    assert chosen_ratio(trace) == 0.4
    assert chosen_ratio("<COMP_30> <think>") is None and chosen_ratio("<think>") is None


@st.composite
def valid_coefficients(draw):
    correct = draw(st.floats(0.1, 5.0))
    under = draw(st.floats(0.01, 3.0))
    return Coefficients(
        correct=correct, calib_weight=draw(st.floats(0.0, 2.0)), calib_band=draw(st.floats(0.01, 1.0)),
        calib_floor=draw(st.floats(0.0, 0.99)) * correct, compress_weight=draw(st.floats(0.0, 2.0)),
        compress_cap=draw(st.floats(0.0, 1.0)), under_penalty=under, over_penalty=draw(st.floats(0.0, 0.99)) * under,
        format_penalty=under + draw(st.floats(0.01, 3.0)))


@relaxed
@given(valid_coefficients(), ratios, measured, ratios, measured, bad_status, policy)
def test_orderings_hold_for_every_accepted_coefficient_set(coef, c1, r1, c2, r2, status, pol):
    win = chrpo_reward(Rollout(True, "answered", c1, r1, pol), coef)
    lose = chrpo_reward(Rollout(False, "answered", c2, r2, pol), coef)
    bad = chrpo_reward(Rollout(True, status, c1, r1, pol), coef)
    assert win.total > lose.total > bad.total
    if pol:
        assert win.control > lose.control > bad.control
