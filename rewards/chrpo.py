"""Sequence rewards over plain data: the Accordion binary reward and the CHRPO budget reward.

A reward function takes a `Rollout` (what happened) and `Coefficients` (how much each part is
worth) and returns a `Reward` with its parts for logging. Pick one by name from `REWARDS`.
Nothing here knows about configs, Ray or tokenizers.

CHRPO (Extra-CoT, REFERENCE.md §2; the paper does not publish the formula, this one is ours).
With c the chosen ratio (the budget token, 0.2..1), r̂ the measured ratio (reasoning tokens /
reference full length) and e = |r̂ − c|:

    ℓ(e)    = (e/b)²       if e ≤ b        Huber loss with its knee at the band b,
            = 2e/b − 1     otherwise       scaled so that ℓ(b) = 1
    cal     = max(w_cal · (1 − ℓ(e)), −cal_floor)     ≥ 0 inside the band, falls outside it
    comp    = w_comp · min(max(1 − r̂, 0), κ)          shorter reasoning earns more, up to κ
    miss    = λ_under · (1 − c) + λ_over · c           failing at a short budget costs more

    reward  = R_correct + cal + comp    answered and correct
            = −miss                     answered and wrong
            = −P_format                 unfinished or malformed

    control = R_correct + w_comp · min(1 − c, κ)  if correct; −miss if wrong; −P_format if not answered
              (policy mode only: the reward of the ratio-choice token, which chose c but does not
              control how well the reasoning then kept to it, so no calibration term)

`RewardConfig` (`configs/schema.py`) accepts only coefficients with which the orderings hold for every
input: correct beats wrong (cal_floor < R_correct, so a correct reward is > 0 ≥ −λ_over ≥ −miss), and
unanswered is lowest (P_format > λ_under ≥ miss).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from tasks.format import THINK_CLOSE, parse_trace, split_budget

Status = Literal["answered", "unfinished", "malformed"]
STATUSES: tuple[Status, ...] = ("answered", "unfinished", "malformed")


@dataclass(frozen=True)
class Rollout:
    """One finished trajectory, reduced to what rewards read.

    `chosen`: the budget ratio in (0, 1] the response was generated under (fixed mode) or picked
    (policy mode); None without a budget. `measured`: r̂ = reasoning tokens / reference length;
    None when the reference length is unknown. `policy`: the model chose the ratio itself."""

    correct: bool
    status: Status = "answered"
    chosen: float | None = None
    measured: float | None = None
    policy: bool = False


@dataclass(frozen=True)
class Coefficients:
    """Weights of the CHRPO terms (module docstring); `RewardConfig` documents each one and checks them."""

    correct: float = 1.0
    calib_weight: float = 0.2
    calib_band: float = 0.1
    calib_floor: float = 0.4
    compress_weight: float = 0.5
    compress_cap: float = 0.6
    under_penalty: float = 0.5
    over_penalty: float = 0.1
    format_penalty: float = 1.0


@dataclass(frozen=True)
class Reward:
    """`total`: the sequence reward. `control`: the ratio-choice token's reward (policy mode) or None.
    `components`: the named terms, for logging."""

    total: float
    control: float | None = None
    components: dict[str, float] = field(default_factory=dict)


def huber_band(error: float, band: float) -> float:
    """ℓ(e): Huber loss with its knee at `band`, scaled so ℓ(band) = 1 (quadratic inside, linear outside)."""
    e = abs(error) / band
    return e * e if e <= 1 else 2 * e - 1


def miss_penalty(chosen: float, coef: Coefficients) -> float:
    """What a wrong answer costs after choosing ratio `chosen`: λ_under at 0, λ_over at 1, linear between."""
    return coef.under_penalty * (1 - chosen) + coef.over_penalty * chosen


def chrpo_reward(r: Rollout, coef: Coefficients) -> Reward:
    """The CHRPO reward of the module docstring. Needs `chosen` and `measured` when answered.
    Components (same keys every time, 0 where a term does not apply): format, correct,
    calibration, compression, miss (≤ 0), and the ratios themselves when known."""
    parts = {"format": 0.0, "correct": 0.0, "calibration": 0.0, "compression": 0.0, "miss": 0.0}
    parts |= {k: v for k, v in (("ratio", r.measured), ("chosen", r.chosen)) if v is not None}
    if r.status != "answered":
        total = -coef.format_penalty
        return Reward(total, total if r.policy else None, parts)
    if r.chosen is None or r.measured is None:
        raise ValueError("chrpo needs the chosen budget ratio and the measured ratio (budget and ref_len)")
    parts["format"] = 1.0
    if not r.correct:
        parts["miss"] = total = -miss_penalty(r.chosen, coef)
        return Reward(total, total if r.policy else None, parts)
    parts["correct"] = coef.correct
    parts["calibration"] = max(coef.calib_weight * (1 - huber_band(r.measured - r.chosen, coef.calib_band)),
                               -coef.calib_floor)
    parts["compression"] = coef.compress_weight * min(max(1 - r.measured, 0.0), coef.compress_cap)
    control = coef.correct + coef.compress_weight * min(1 - r.chosen, coef.compress_cap)
    return Reward(coef.correct + parts["calibration"] + parts["compression"], control if r.policy else None, parts)


def accordion_reward(r: Rollout, coef: Coefficients) -> Reward:
    """Accordion's reward: 1 for a correct final answer in a well-formed, finished trace, else 0."""
    answered = r.status == "answered"
    total = float(answered and r.correct)
    return Reward(total, None, {"format": float(answered), "correct": total})


REWARDS: dict[str, Callable[[Rollout, Coefficients], Reward]] = {
    "accordion": accordion_reward,
    "chrpo": chrpo_reward,
}


def trace_status(response: str) -> Status:
    """The format check: `answered` if the step tags parse (`tasks.format.parse_trace`), `unfinished`
    if `</think>` never came (the generation stopped inside the reasoning), else `malformed`."""
    if parse_trace(response) is not None:
        return "answered"
    return "unfinished" if THINK_CLOSE not in response else "malformed"


def chosen_ratio(response: str) -> float | None:
    """The ratio a policy-mode response picked with its first token (`<COMP_40>` -> 0.4), or None."""
    budget, _ = split_budget(response)
    return None if budget is None else budget / 100
