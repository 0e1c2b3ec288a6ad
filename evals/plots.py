"""What the model learned, as PNG plots: pure functions from plain data to one file each.

    gap.png             Fold vs Unfold held-out accuracy (%) over RL steps, the Accordion paper's signature
                        figure: step 0 is the model after SFT, solid lines are sampled accuracy (avg@k), thin
                        dashed lines greedy, the shaded band the gap, rings the final (full-protocol) evaluation.
                        Data: report `sft` and `rl_evals` (`evals.jsonl`, `Trainer.evaluate`).
    budgets.png         Accuracy (%) vs mean reasoning tokens of each `<COMP_k>` budget of the final sweep,
                        with the measured ratio r-hat beside each point, and `<COMP_AUTO>` as a star with the
                        mix of budgets it chose. Data: report `budgets` (`evals.metrics.cell_metrics`).
    chosen_budgets.png  Policy mode: share of each budget the model chose in its training rollouts, stacked,
                        per RL step, and the mean chosen budget. Data: history `rollout/chosen_share_<k>`.
    rewards.png         Reward per RL step: the mean and each component (`rewards.chrpo`: format, correct,
                        calibration, compression, miss), and on a second panel the ratios in [0, 1] (`ratio`
                        measured, `chosen`). Data: history `reward/*` (`cluster.train.rollout_metrics`).

A history is `{metric name: [(step, value), ...]}` (`cluster.tracking.Tracker.history`). A plot with nothing
to show returns None and writes nothing. Figures are built on `matplotlib.figure.Figure` with the Agg canvas,
so pyplot's global state (and backend) is never touched and nothing is left open.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

SIZE, DPI = (8, 5), 120
"""Every plot is 960 x 600 px."""
BUDGETS = ("20", "40", "60", "80", "100")
COLOURS = {"unfold": "tab:blue", "fold": "tab:orange"}
COMPONENTS = ("format", "correct", "calibration", "compression", "miss")
RATIOS = {"ratio": "measured ratio r-hat", "chosen": "chosen budget ratio"}
History = dict[str, list[tuple[int, float]]]


def _figure(title: str, ylabels: tuple[str, ...], xlabel: str = "RL step") -> tuple[Figure, list[Axes]]:
    """A fixed-size figure with one gridded panel per y label, sharing the x axis."""
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    heights = [3] + [1.3] * (len(ylabels) - 1)
    axes = list(fig.subplots(len(ylabels), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0])
    fig.suptitle(title)
    for ax, ylabel in zip(axes, ylabels):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    if xlabel == "RL step":
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    return fig, axes


def _save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)  # no bbox_inches="tight": the pixel size stays fixed
    fig.clear()
    return out


def _style(n: int, size: float = 4) -> dict[str, Any]:
    """Markers while the points can be told apart (and so that a single point shows)."""
    return {"marker": "o", "markersize": size} if n <= 40 else {}


def _protocol_text(p: dict | None) -> str:
    if not p:
        return ""
    text = f"mean of {p.get('samples', '?')} samples at T={p.get('temperature', '?')}"
    return text + (f", {p['questions']} questions" if "questions" in p else "")


def gap_curve(sft: dict | None, rl_evals: list[dict], out: Path, protocol: dict | None = None) -> Path | None:
    """Fold vs Unfold held-out accuracy over RL steps (after SFT at step 0). `protocol`: the final (and
    after-SFT) evaluation's {samples, temperature, questions}; periodic evaluations say their own size."""
    plotted = {"fold_accuracy", "unfold_accuracy"}
    after_sft = [{**sft, "step": 0}] if sft and plotted & set(sft) else []
    points = after_sft + sorted((e for e in rl_evals if plotted & set(e)), key=lambda e: e["step"])
    if not points:
        return None
    periodic = {(e["questions"], e["samples"]) for e in rl_evals if not e.get("final") and "questions" in e}
    subtitle = "; ".join([_protocol_text(protocol)] * bool(protocol) +
                         [f"periodic evals {q} q x {s} samples" for q, s in sorted(periodic)])
    fig, (ax,) = _figure("Fold vs Unfold held-out accuracy over RL" + (f"\n{subtitle}" if subtitle else ""),
                         ("held-out accuracy (%)",))
    sampled = {"linewidth": 2, **_style(len(points))}
    greedy = {"linewidth": 1, "linestyle": "--", "alpha": 0.7, **_style(len(points), 2.5)}
    for mode in ("unfold", "fold"):
        for key, label, style in ((f"{mode}_accuracy", mode.capitalize(), sampled),
                                  (f"{mode}_accuracy_greedy", f"{mode.capitalize()} greedy", greedy)):
            series = [(p["step"], 100 * p[key]) for p in points if key in p]
            if series:
                ax.plot(*zip(*series), color=COLOURS[mode], label=label, **style)
    both = [p for p in points if "fold_accuracy" in p and "unfold_accuracy" in p]
    if both:
        ax.fill_between([p["step"] for p in both], [100 * p["unfold_accuracy"] for p in both],
                        [100 * p["fold_accuracy"] for p in both], color="tab:red", alpha=0.15,
                        label="gap (Unfold - Fold)")
        first, last = both[0], both[-1]
        ax.annotate(f"gap {100 * (first['unfold_accuracy'] - first['fold_accuracy']):.1f} pts",
                    (first["step"], 50 * (first["unfold_accuracy"] + first["fold_accuracy"])),
                    textcoords="offset points", xytext=(8, 0), va="center", fontsize="small")
        if len(both) > 1:  # the last numbers, under the lower curve: a closed gap leaves no room between them
            ax.annotate(f"Unfold {100 * last['unfold_accuracy']:.1f}% / Fold {100 * last['fold_accuracy']:.1f}%\n"
                        f"gap {100 * (last['unfold_accuracy'] - last['fold_accuracy']):.1f} pts",
                        (last["step"], 100 * min(last["unfold_accuracy"], last["fold_accuracy"])),
                        textcoords="offset points", xytext=(0, -14), ha="right", va="top", fontsize="small")
    for p in (p for p in points if p.get("final")):
        ys = [100 * p[k] for k in ("unfold_accuracy", "fold_accuracy") if k in p]
        ax.scatter([p["step"]] * len(ys), ys, s=140, facecolors="none", edgecolors="black", linewidths=1.5, zorder=3,
                   label=f"final eval ({p.get('questions', '?')} q x {p.get('samples', '?')} samples)")
    if after_sft:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "after SFT" if x == 0 else f"{x:g}"))
    ax.set_ylim(0, 105)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, out)


def pareto(budgets: dict[str, dict], out: Path, protocol: dict | None = None) -> Path | None:
    """Accuracy vs mean reasoning tokens, one point per `<COMP_k>` budget, `auto` as a star."""
    fixed = [(k, budgets[k]) for k in BUDGETS if {"accuracy", "reasoning_tokens"} <= set(budgets.get(k, {}))]
    auto = budgets.get("auto", {})
    if not fixed and not {"accuracy", "reasoning_tokens"} <= set(auto):
        return None
    subtitle = _protocol_text(protocol)
    fig, (ax,) = _figure("Accuracy vs reasoning length per budget (Fold mode)" + (f"\n{subtitle}" if subtitle else ""),
                         ("held-out accuracy (%)",), "mean reasoning tokens per trajectory (tokens)")
    if fixed:
        xs, ys = [m["reasoning_tokens"] for _, m in fixed], [100 * m["accuracy"] for _, m in fixed]
        ax.plot(xs, ys, "o-", color="tab:blue", linewidth=2, label="fixed budget <COMP_k>, sampled")
        for (k, m), x, y in zip(fixed, xs, ys):
            ratio = f", r-hat {m['ratio']:.2f}" if "ratio" in m else ""
            ax.annotate(f"COMP_{k}{ratio}", (x, y), textcoords="offset points", xytext=(-4, 7), ha="right",
                        fontsize="small")
        greedy = [(m["reasoning_tokens"], 100 * m["accuracy_greedy"]) for _, m in fixed if "accuracy_greedy" in m]
        if greedy:
            ax.plot(*zip(*greedy), "o--", color="tab:blue", linewidth=1, markersize=3, alpha=0.5,
                    label="fixed budget, greedy")
    if {"accuracy", "reasoning_tokens"} <= set(auto):
        mix = " ".join(f"{k}:{100 * share:.0f}%" for k, share in auto.get("chosen", {}).items())
        ratio = f", r-hat {auto['ratio']:.2f}" if "ratio" in auto else ""
        ax.scatter([auto["reasoning_tokens"]], [100 * auto["accuracy"]], marker="*", s=320, color="tab:red",
                   edgecolors="black", zorder=3, label=f"<COMP_AUTO>{ratio}" + (f"\nchose {mix}" if mix else ""))
        if "accuracy_greedy" in auto:
            ax.scatter([auto["reasoning_tokens"]], [100 * auto["accuracy_greedy"]], marker="*", s=160,
                       facecolors="none", edgecolors="tab:red", label="<COMP_AUTO>, greedy")
    ax.set_ylim(0, 105)
    ax.set_xlim(left=0)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out)


def chosen_budgets(history: History, out: Path) -> Path | None:
    """Stacked shares of the budgets the model picked in policy mode (`<COMP_AUTO>` rollouts) per RL step."""
    keys = {k: f"rollout/chosen_share_{k}" for k in BUDGETS}
    shares = {k: dict(history[key]) for k, key in keys.items() if history.get(key)}
    if not shares:
        return None
    steps = sorted({s for series in shares.values() for s in series})
    stacks = [[100 * series.get(s, 0.0) for s in steps] for series in shares.values()]
    mean = [sum(int(k) * stack[i] / 100 for k, stack in zip(shares, stacks)) for i in range(len(steps))]
    if len(steps) == 1:  # an area needs two x values: widen a single step to a visible band
        steps, stacks, mean = [steps[0] - 0.5, steps[0] + 0.5], [s * 2 for s in stacks], mean * 2
    fig, (ax,) = _figure("Budgets the model chose in policy mode (<COMP_AUTO> training rollouts)",
                         ("share of rollouts (%)",))
    colours = colormaps["viridis"]([i / (len(BUDGETS) - 1) for i in range(len(BUDGETS))])
    ax.stackplot(steps, stacks, labels=[f"COMP_{k}" for k in shares], alpha=0.85,
                 colors=[colours[BUDGETS.index(k)] for k in shares])
    ax.plot(steps, mean, color="black", linewidth=2, linestyle="--", label="mean chosen budget (% of full)")
    ax.set_ylim(0, 100)
    ax.set_xlim(steps[0], steps[-1])
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return _save(fig, out)


def reward_components(history: History, out: Path) -> Path | None:
    """Mean reward and its components per RL step; the ratios (`reward/ratio`, `reward/chosen`) below."""
    names = [k[len("reward/"):] for k in history if k.startswith("reward/") and history[k]]
    top = [n for n in ("mean", *COMPONENTS) if n in names] + sorted(set(names) - {"mean", "std", *COMPONENTS, *RATIOS})
    bottom = [n for n in RATIOS if n in names]
    if not top and not bottom:
        return None
    panels = (("reward per trajectory (points)",) if top else ()) + (("ratio (0-1)",) if bottom else ())
    fig, axes = _figure("Reward and its components over RL (means over the step's rollouts)", panels)
    for ax, group in zip(axes, [g for g in (top, bottom) if g]):
        for name in group:
            steps, values = zip(*history[f"reward/{name}"])
            thick = {"linewidth": 2.5, "color": "black"} if name == "mean" else {"linewidth": 1.5}
            ax.plot(steps, values, label=RATIOS.get(name, name), **thick, **_style(len(steps)))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    if bottom:  # r-hat can pass 1 (longer than the reference): never clip it
        axes[-1].set_ylim(0, max(1.05, *(1.05 * v for n in bottom for _, v in history[f"reward/{n}"])))
    return _save(fig, out)


def write_plots(report: dict[str, Any], history: History | None, out_dir: Path) -> list[Path]:
    """gap.png, budgets.png, chosen_budgets.png, rewards.png in `out_dir`, for whatever data exists."""
    history, protocol = history or {}, report.get("protocol") or {}
    sft = report.get("sft")
    final_protocol = protocol.get("final") or (sft or {}).get("protocol")
    written = [gap_curve(sft, report.get("rl_evals", []), out_dir / "gap.png", final_protocol),
               pareto(report.get("budgets", {}), out_dir / "budgets.png", protocol.get("budgets")),
               chosen_budgets(history, out_dir / "chosen_budgets.png"),
               reward_components(history, out_dir / "rewards.png")]
    return [p for p in written if p is not None]
