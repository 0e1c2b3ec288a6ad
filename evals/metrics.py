"""Evaluation metrics over plain data: one `Outcome` per evaluated trajectory in, one dict per cell out.

A cell is one request shape (mode x budget) evaluated on the same questions. Accuracy is the mean over
the sampled trajectories (Accordion's protocol: k samples per question at temperature 1.0, avg@k);
greedy decoding is reported beside it, never instead of it. The measured ratio r-hat of a budget cell is
each sampled trajectory's reasoning tokens over its question's reference length: the mean reasoning
tokens of the same model's `<COMP_100>` samples in the same mode (Extra-CoT's definition).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import fmean


@dataclass(frozen=True)
class Outcome:
    """One evaluated trajectory, reduced to what metrics read."""

    question: int
    """Index of the question in the evaluated set."""
    greedy: bool
    correct: bool
    status: str
    """'answered', 'unfinished' or 'malformed' (`actors.fold`)."""
    reasoning_tokens: int
    """Tokens inside `<think>...</think>`, format tokens excluded (`tasks.format.reasoning_tokens`)."""
    generated_tokens: int
    peak_context: int
    """The most KV one of its segments held: prompt + segment tokens."""
    chosen: int | None = None
    """Policy mode: the budget ratio the model picked."""


def reference_lengths(outcomes: list[Outcome]) -> dict[int, float]:
    """Per question, the mean reasoning tokens of its sampled trajectories (of a `<COMP_100>` cell)."""
    by_question: dict[int, list[int]] = {}
    for o in outcomes:
        if not o.greedy:
            by_question.setdefault(o.question, []).append(o.reasoning_tokens)
    return {q: fmean(tokens) for q, tokens in by_question.items()}


def cell_metrics(outcomes: list[Outcome], seconds: float, reference: dict[int, float] | None = None) -> dict:
    """accuracy (avg@k), pass_at_k, accuracy_greedy, answered, reasoning_tokens, generated_tokens,
    peak_context (means over sampled trajectories), tokens_per_s (all generated tokens of the cell,
    greedy included, over `seconds`), ratio (with `reference`), and in policy mode chosen (the share of
    each picked budget) and chosen_accuracy (the accuracy of the samples that picked it: a policy's loss
    is either its choice or how it reasons under the budget it chose)."""
    sampled = [o for o in outcomes if not o.greedy]
    greedy = [o for o in outcomes if o.greedy]
    out: dict = {}
    if sampled:
        by_question: dict[int, bool] = {}
        for o in sampled:
            by_question[o.question] = by_question.get(o.question, False) or o.correct
        out |= {
            "accuracy": fmean(o.correct for o in sampled),
            "pass_at_k": fmean(by_question.values()),
            "answered": fmean(o.status == "answered" for o in sampled),
            "reasoning_tokens": fmean(o.reasoning_tokens for o in sampled),
            "generated_tokens": fmean(o.generated_tokens for o in sampled),
            "peak_context": fmean(o.peak_context for o in sampled),
        }
        if reference:
            known = [o for o in sampled if reference.get(o.question)]
            if known:
                out["ratio"] = fmean(o.reasoning_tokens / reference[o.question] for o in known)
        picks = Counter(o.chosen for o in sampled if o.chosen is not None)
        if picks:
            out["chosen"] = {str(b): n / len(sampled) for b, n in sorted(picks.items())}
            out["chosen_accuracy"] = {str(b): fmean(o.correct for o in sampled if o.chosen == b) for b in sorted(picks)}
    if greedy:
        out["accuracy_greedy"] = fmean(o.correct for o in greedy)
        out["peak_context_greedy"] = fmean(o.peak_context for o in greedy)
    out["tokens_per_s"] = sum(o.generated_tokens for o in outcomes) / seconds if seconds > 0 else 0.0
    return out


def by_mode(cells: dict[str, dict], keys: tuple[str, ...] = ("accuracy", "accuracy_greedy", "peak_context",
                                                             "reasoning_tokens")) -> dict[str, float]:
    """`{"fold": {...}, "unfold": {...}}` -> `{"fold_accuracy": ..., "unfold_accuracy": ..., ...}` (the
    report's flat shape), with `fold_unfold_gap` = Unfold minus Fold accuracy when both are there."""
    flat = {f"{mode}_{key}": metrics[key] for mode, metrics in cells.items() for key in keys if key in metrics}
    if "fold_accuracy" in flat and "unfold_accuracy" in flat:
        flat["fold_unfold_gap"] = flat["unfold_accuracy"] - flat["fold_accuracy"]
    return flat
