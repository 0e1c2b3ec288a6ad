"""Trajectories as one self-contained HTML page of step-summary outlines (`accordion view`).

Each trajectory reads as an accordion: its step summaries are the outline and each step's reasoning is
folded under its summary (native `<details>`, so a page of 1,000 trajectories needs no script to open
one), Fold and Unfold trajectories of the same question side by side. The page loads nothing from the
network and runs one small inline script, the filters. Model text is untrusted: Jinja escapes all of
it, and the page's Content-Security-Policy lets only that script run (pinned by its hash), so markup
that slipped through escaping would still not execute.
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from tasks.format import BUDGET_TOKENS, fold_context

MODES = ("fold", "unfold")
_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _csp_source(script: str) -> Markup:
    """The Content-Security-Policy source that allows exactly this inline script (base64: nothing to escape)."""
    return Markup("'sha256-" + base64.b64encode(hashlib.sha256(str(script).encode()).digest()).decode() + "'")


def _short(x: float) -> str:
    return f"{x:.3g}"


_ENV.filters.update(csp_source=_csp_source, short=_short)


def render_view(records: list[dict[str, Any]], title: str) -> str:
    """The page for `evals.traces` records (only `id`, `question`, `mode`, `steps` and `final` are required)."""
    cards = [_card(r) for r in records]
    keys = {c["budget_key"] for c in cards}
    budgets = sorted((k for k in keys if k.isdigit()), key=int) + sorted(k for k in keys if not k.isdigit())
    return _ENV.get_template("view.html.j2").render(
        title=title, groups=_groups(cards), budgets=budgets, total=len(cards),
        questions=len({c["question"] for c in cards}), accuracy=_accuracies(cards, budgets),
        unknown=any(c["correct"] is None for c in cards))


def write_view(records: list[dict[str, Any]], out: Path, title: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_view(records, title), encoding="utf-8")
    return out


def _card(r: dict[str, Any]) -> dict[str, Any]:
    """One trajectory as the template shows it: every field it reads, defaulted, plus what is derived."""
    steps = [{"reasoning": s["reasoning"], "summary": s["summary"], **_versions(s), "segment": s.get("segment")}
             for s in r["steps"]]
    chosen = r.get("chosen")
    return {
        "id": r["id"], "question": r["question"], "answer": r.get("answer"), "mode": r["mode"],
        "source": r.get("source"), "step": r.get("step"), "correct": r.get("correct"),
        "correct_key": {True: "1", False: "0"}.get(r.get("correct"), "?"),
        "budget": r.get("budget"), "budget_key": "none" if r.get("budget") is None else str(r["budget"]),
        "chosen": chosen, "greedy": r.get("greedy"), "status": r.get("status"), "reason": r.get("reason"),
        "reward": r.get("reward"), "components": r.get("components") or {},
        "reasoning_tokens": r.get("reasoning_tokens"), "peak_context": r.get("peak_context"),
        "unfold_context": r.get("unfold_context"), "segments": [_versions(s) for s in r.get("segments") or []],
        "steps": steps, "final": r["final"],
        # What the next Fold segment would be generated after: the summaries so far, none of the reasoning.
        "context": fold_context([s["summary"] for s in steps if s["summary"] is not None],
                                chosen if chosen in BUDGET_TOKENS else None),
    }


def _versions(segment: dict[str, Any]) -> dict[str, Any]:
    """A segment's policy versions; `interrupted`: a weight update arrived while it was generating (its
    last token is from newer weights than its first)."""
    version, last = segment.get("version"), segment.get("last_version")
    return {"version": version, "last_version": last,
            "interrupted": version is not None and last is not None and last > version}


def _groups(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards by question, in order of first appearance, with one column per mode present (Fold first)."""
    by_question: dict[str, dict[str, list]] = {}
    for c in cards:
        by_question.setdefault(c["question"], {}).setdefault(c["mode"], []).append(c)
    return [{"question": question, "answer": next((c["answer"] for m in modes.values() for c in m
                                                    if c["answer"] is not None), None),
             "columns": [(mode, modes[mode]) for mode in MODES if mode in modes]}
            for question, modes in by_question.items()]


def _accuracies(cards: list[dict[str, Any]], budgets: list[str]) -> list[dict[str, Any]]:
    """Trajectory count and accuracy of each mode, and of each budget where a mode has several (a budget
    sweep: one figure over them would mean nothing), over the sampled ones whose correctness is known (the
    report's accuracy: greedy trajectories are shown, not counted)."""
    out = []
    for mode in MODES:
        keys = [k for k in budgets if any(c["mode"] == mode and c["budget_key"] == k for c in cards)]
        for key in keys if len(keys) > 1 else [None]:
            of = [c for c in cards if c["mode"] == mode and key in (None, c["budget_key"])]
            known = [c["correct"] for c in of if c["correct"] is not None and not c["greedy"]]
            out.append({"label": ("Fold" if mode == "fold" else "Unfold") + ("" if key is None else f", budget {key}"),
                        "count": len(of), "known": len(known), "accuracy": sum(known) / len(known) if known else None})
    return out
