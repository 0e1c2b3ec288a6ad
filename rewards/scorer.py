"""`Scorer`: scores batches of responses — format check, hang-proof answer check, reward.

An item is a dict with at least `response` (the whole Unfold-equivalent text in the
`tasks.format` shape) and `answer` (the gold). Optional: `budget` (ratio 20..100, or "auto"
for policy mode), `ref_len` (the model's own full-budget reasoning length for this question),
`reasoning_tokens` (a generator's exact count; else counted with `tasks.format.reasoning_tokens`),
`mode` ("fixed" / "policy"; default from `budget`), `status` ("answered" / "unfinished" /
"malformed", from the generator, which knows about length limits), `chosen` (the ratio 20..100 a
policy-mode response picked, when its text no longer starts with the choice token).

The returned item is the input plus `pred`, `correct`, `reward`, `control_reward`, `components`,
`status` (the one the reward used), `timed_out` and `check_s` (wall time of the answer check). Only the answer check runs in the sandbox;
extraction and the format check are linear scans and run here, so a timed-out item still reports
its `pred` and gets the reward of a wrong answer with its real format status. A prediction longer
than `max_answer_chars` is judged wrong without a check: no real answer is that long.
"""
from __future__ import annotations

from typing import Any

from configs.schema import RewardConfig
from rewards.answer import equivalent, extract_answer, gold_answer
from rewards.chrpo import REWARDS, STATUSES, Coefficients, Rollout, chosen_ratio, trace_status
from rewards.sandbox import Outcome, Sandbox
from tasks.format import BUDGETS, THINK_CLOSE, parse_trace, reasoning_tokens

REQUIRED = ("response", "answer")


class ItemError(ValueError):
    """An item the scorer cannot use; the message names the field."""


class Scorer:
    """Owns a `Sandbox` of `cfg.processes` verifier processes; `close()` (or `with`) ends them."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self._reward = REWARDS[cfg.name]
        self._coef = Coefficients(**{name: getattr(cfg, name) for name in Coefficients.__dataclass_fields__})
        self._sandbox = Sandbox(equivalent, cfg.processes, cfg.timeout_s, cfg.memory_mb)

    def validate(self, item: Any) -> None:
        """Raise `ItemError` naming the first problem of `item` (before any work is done)."""
        if not isinstance(item, dict):
            raise ItemError(f"expected a JSON object, got {type(item).__name__}")
        missing = [k for k in REQUIRED if k not in item]
        if missing:
            raise ItemError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(item["response"], str):
            raise ItemError(f"response: expected text, got {type(item['response']).__name__}")
        if not isinstance(item["answer"], (str, int, float)) or isinstance(item["answer"], bool):
            raise ItemError(f"answer: expected text or a number, got {type(item['answer']).__name__}")
        budget = item.get("budget")
        if budget is not None and budget != "auto" and budget not in BUDGETS:
            raise ItemError(f"budget: expected one of {list(BUDGETS)} or 'auto', got {budget!r}")
        if item.get("mode", "fixed") not in ("fixed", "policy"):
            raise ItemError(f"mode: expected 'fixed' or 'policy', got {item['mode']!r}")
        if budget == "auto" and item.get("mode") == "fixed":
            raise ItemError("mode: 'fixed' needs a budget ratio, not 'auto'")
        if "chosen" in item and item["chosen"] not in BUDGETS:
            raise ItemError(f"chosen: expected one of {list(BUDGETS)}, got {item['chosen']!r}")
        if item.get("status", "answered") not in STATUSES:
            raise ItemError(f"status: expected one of {list(STATUSES)}, got {item['status']!r}")
        ref_len = item.get("ref_len")
        if ref_len is not None and (not isinstance(ref_len, (int, float)) or ref_len <= 0):
            raise ItemError(f"ref_len: expected a positive number, got {ref_len!r}")
        tokens = item.get("reasoning_tokens", 0)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ItemError(f"reasoning_tokens: expected a count, got {tokens!r}")
        if self.cfg.name == "chrpo":
            if budget is None:
                raise ItemError("budget: required by the chrpo reward")
            if ref_len is None:
                raise ItemError("ref_len: required by the chrpo reward")

    def score(self, items: list[dict]) -> list[dict]:
        """Score `items` (validated first: a bad one raises `ItemError` with its index, nothing scored)."""
        for i, item in enumerate(items):
            try:
                self.validate(item)
            except ItemError as err:
                raise ItemError(f"item {i}: {err}") from None
        preds = [extract_answer(_answer_part(it["response"]), self.cfg.number_fallback) for it in items]
        golds = [gold_answer(it["answer"]) for it in items]
        todo = [i for i, (p, g) in enumerate(zip(preds, golds)) if p and g and len(p) <= self.cfg.max_answer_chars]
        outcomes = dict(zip(todo, self._sandbox.map([(preds[i], golds[i]) for i in todo])))
        return [self._finish(item, preds[i], outcomes.get(i)) for i, item in enumerate(items)]

    def stats(self) -> dict[str, float]:
        """Sandbox counters (calls, timeouts, crashes, restarts, max_call_s, alive) for metrics."""
        return self._sandbox.stats()

    def close(self) -> None:
        self._sandbox.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _finish(self, item: dict, pred: str | None, outcome: Outcome | None) -> dict:
        correct = outcome is not None and outcome.value is True
        rollout = _rollout(item, correct)
        reward = self._reward(rollout, self._coef)
        return {**item, "pred": pred, "correct": correct, "reward": reward.total,
                "control_reward": reward.control, "components": reward.components,
                "status": rollout.status, "timed_out": outcome is not None and outcome.timed_out,
                "check_s": 0.0 if outcome is None else round(outcome.seconds, 4)}


def _answer_part(response: str) -> str:
    """The final answer segment: what follows `</think>` (the whole text when there is none, so
    plain worked solutions can be checked too)."""
    parsed = parse_trace(response)
    if parsed is not None:
        return parsed[1]
    return response.rsplit(THINK_CLOSE, 1)[-1]


def _rollout(item: dict, correct: bool) -> Rollout:
    response, budget = item["response"], item.get("budget")
    policy = item.get("mode", "policy" if budget == "auto" else "fixed") == "policy"
    status = item.get("status", "answered")
    if status == "answered":
        status = trace_status(response)
    if policy:
        chosen = item["chosen"] / 100 if "chosen" in item else chosen_ratio(response)
        if chosen is None:
            status = "malformed"  # policy mode without a valid ratio-choice token
    else:
        chosen = None if budget is None else budget / 100
    measured = None
    if item.get("ref_len"):
        tokens = item["reasoning_tokens"] if "reasoning_tokens" in item else reasoning_tokens(response)
        measured = tokens / item["ref_len"]
    return Rollout(correct=correct, status=status, chosen=chosen, measured=measured, policy=policy)
