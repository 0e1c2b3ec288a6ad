"""The main job's `report.json` and the tables printed from evaluation results.

    {"wall_s", "precision", "cpu",
     "sft":      {"unfold_accuracy", "fold_accuracy", "*_greedy", "*_peak_context", "wall_s"},
     "rl_evals": [{"step", "unfold_accuracy", "fold_accuracy", ...}, ...],
     "final":    {"unfold_accuracy", "fold_accuracy", "unfold_peak_context", "fold_peak_context", ...,
                  "auto": {"accuracy", "reasoning_tokens", "ratio", "chosen", ...}},
     "budgets":  {"20": {"accuracy", "reasoning_tokens", "ratio", ...}, ...,
                  "auto": {..., "chosen", "chosen_accuracy"}},
     "harder":   {"steps", "unfold_accuracy", "fold_accuracy", ...},
     "protocol": {"final": {...}, "periodic": {...}, "budgets": {...}, "harder": {...}},
     "targets":  {name: {"value", "target", "met", "stderr"}}}

Accuracies are means over sampled trajectories (`protocol` says how many, at which temperature). Policy mode
(`<COMP_AUTO>`) is in `budgets` on the sweep's protocol and, after RL in policy mode, in `final` on the final
one, where its targets (tokens and accuracy against Fold at `<COMP_100>`) are judged. A target
on accuracies carries the standard error of its value (`stderr`), so that "not met" by less than the noise reads
as such.
"""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The main job's targets, checked on what the report holds (a part that was not run is left out)."""
    out: dict[str, dict[str, Any]] = {}

    def check(name: str, value: float, low: float = -math.inf, high: float = math.inf,
              stderr: float | None = None) -> None:
        # Judged on the value as shown: 0.98 - 0.97 is 0.01000000000000001, a 1-point loss that must meet "<= 0.01".
        shown = round(value, 4)
        if math.isinf(low):
            target = f"<= {high:.2f}"
        elif math.isinf(high):
            target = f">= {low:.2f}"
        else:
            target = f"{(low + high) / 2:.2f} +- {(high - low) / 2:.2f}"
        out[name] = {"value": shown, "target": target, "met": low <= shown <= high}
        if stderr is not None:
            out[name]["stderr"] = round(stderr, 4)

    if {"unfold_accuracy", "fold_accuracy"} <= set(report.get("sft", {})):
        sft = report["sft"]
        n = _samples(sft.get("protocol"))
        check("sft_unfold_accuracy", sft["unfold_accuracy"], low=0.95, stderr=_stderr(n, sft["unfold_accuracy"]))
        check("sft_gap", sft["unfold_accuracy"] - sft["fold_accuracy"], low=0.30,
              stderr=_stderr(n, sft["unfold_accuracy"], sft["fold_accuracy"]))
    last = [e for e in report.get("rl_evals", []) if "fold_accuracy" in e][-2:]
    if len(last) == 2:
        widest = max(last, key=lambda e: abs(e["unfold_accuracy"] - e["fold_accuracy"]))
        check("rl_gap_last_two", abs(widest["unfold_accuracy"] - widest["fold_accuracy"]), high=0.02,
              stderr=_stderr(_samples(widest), widest["unfold_accuracy"], widest["fold_accuracy"]))
        lowest = min(last, key=lambda e: e["unfold_accuracy"])
        check("rl_unfold_last_two", lowest["unfold_accuracy"], low=0.95,
              stderr=_stderr(_samples(lowest), lowest["unfold_accuracy"]))
    if pair := _policy_pair(report):
        auto, full, measured = pair
        check("auto_tokens_vs_100", auto["reasoning_tokens"] / max(full["reasoning_tokens"], 1e-9), high=0.40)
        check("auto_accuracy_loss", full["accuracy"] - auto["accuracy"], high=0.01,
              stderr=_stderr(_samples(report.get("protocol", {}).get(measured)), full["accuracy"], auto["accuracy"]))
    budgets = report.get("budgets", {})
    for key in ("20", "40", "60", "80"):
        if "ratio" in budgets.get(key, {}):
            target = int(key) / 100
            check(f"ratio_{key}", budgets[key]["ratio"], round(target - 0.1, 4), round(target + 0.1, 4))
    return out


def _policy_pair(report: dict[str, Any]) -> tuple[dict, dict, str] | None:
    """Policy mode's cell, its `<COMP_100>` reference and the part of the report both come from: the final
    evaluation's (Fold at `<COMP_100>` and at `<COMP_AUTO>`, the final protocol) where it has them, else the
    budget sweep's."""
    final, budgets = report.get("final", {}), report.get("budgets", {})
    if "auto" in final and "fold_accuracy" in final:
        return final["auto"], {k: final[f"fold_{k}"] for k in ("accuracy", "reasoning_tokens")}, "final"
    if "auto" in budgets and "100" in budgets:
        return budgets["auto"], budgets["100"], "budgets"
    return None


def _samples(protocol: dict[str, Any] | None) -> int | None:
    """Sampled trajectories per cell of an evaluation (`questions` x `samples`), None when not recorded."""
    return protocol["questions"] * protocol["samples"] if protocol and {"questions", "samples"} <= set(protocol) else None


def _stderr(samples: int | None, *accuracies: float) -> float | None:
    """The binomial standard error of one accuracy, or of a difference of accuracies measured on separate
    samples, over `samples` trajectories each. It takes a question's samples as independent, and they are
    not (a hard question fails in most of them), so the true error is somewhat larger."""
    return math.sqrt(sum(p * (1 - p) for p in accuracies) / samples) if samples else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def modes_table(rows: list[tuple[str, dict[str, Any]]], title: str) -> Table:
    """One row per evaluation of both modes (after SFT, each RL evaluation, final, harder)."""
    table = Table(title=title, title_justify="left")
    for column in ("", "Unfold", "Fold", "gap", "Unfold greedy", "Fold greedy", "peak ctx U / F"):
        table.add_column(column, justify="left" if not column else "right")
    for label, m in rows:
        gap = None if "fold_unfold_gap" not in m else 100 * m["fold_unfold_gap"]
        table.add_row(label, _pct(m.get("unfold_accuracy")), _pct(m.get("fold_accuracy")), _num(gap),
                      _pct(m.get("unfold_accuracy_greedy")), _pct(m.get("fold_accuracy_greedy")),
                      f"{_num(m.get('unfold_peak_context'), 0)} / {_num(m.get('fold_peak_context'), 0)}")
    return table


def cells_table(cells: dict[str, dict[str, Any]], title: str) -> Table:
    """One row per cell (a budget of the sweep, or a mode@budget of `accordion eval`)."""
    table = Table(title=title, title_justify="left")
    for column in ("", "accuracy", "pass@k", "greedy", "reasoning tok", "r-hat", "peak ctx", "tok/s", "chosen"):
        table.add_column(column, justify="left" if column in ("", "chosen") else "right", no_wrap=column == "")
    for name, m in cells.items():
        right = m.get("chosen_accuracy", {})
        chosen = " ".join(f"{b}:{100 * share:.0f}%" + (f" ({100 * right[b]:.0f}% right)" if b in right else "")
                          for b, share in m.get("chosen", {}).items() if share >= 0.01)  # report.json has all
        table.add_row(name, _pct(m.get("accuracy")), _pct(m.get("pass_at_k")), _pct(m.get("accuracy_greedy")),
                      _num(m.get("reasoning_tokens")), _num(m.get("ratio"), 2), _num(m.get("peak_context"), 0),
                      _num(m.get("tokens_per_s"), 0), chosen)
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    protocol = report.get("protocol", {}).get("final", {})
    rows = []
    if "sft" in report:
        rows.append(("after SFT", report["sft"]))
    evals = report.get("rl_evals", [])
    rows += [(f"RL step {e['step']}" + (" (final)" if e.get("final") else f" ({e['questions']} q x {e['samples']})"), e)
             for e in evals]
    if "final" in report and not any(e.get("final") for e in evals):
        rows.append(("final", report["final"]))
    if "harder" in report:
        rows.append((f"harder ({report['harder']['steps'][0]}-{report['harder']['steps'][1]} ops)", report["harder"]))
    console.print(modes_table(rows, f"Accuracy, mean of {protocol.get('samples', '?')} samples per question at "
                                    f"temperature {protocol.get('temperature', '?')} ({report.get('precision', '?')}, "
                                    f"{report.get('cpu', '?')})"))
    cells = dict(report.get("budgets", {}))
    title = "Budgets, Fold mode (r-hat: reasoning tokens / same model's <COMP_100> length)"
    if "auto" in report.get("final", {}):
        cells["auto (final)"] = report["final"]["auto"]
        title += (f"; auto (final): on the final evaluation's {protocol.get('questions', '?')} questions x "
                  f"{protocol.get('samples', '?')} samples, where policy mode's targets are judged")
    if cells:
        console.print(cells_table(cells, title))
    if report.get("targets"):
        table = Table(title="Targets", title_justify="left")
        for column in ("", "value", "+- stderr", "target", "met"):
            table.add_column(column)
        for name, t in report["targets"].items():
            table.add_row(name, str(t["value"]), str(t.get("stderr", "")), t["target"],
                          "[green]yes[/]" if t["met"] else "[red]no[/]")
        console.print(table)
