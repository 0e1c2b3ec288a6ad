"""The report plots: each is a real, non-blank PNG of the fixed size; missing data writes nothing."""
from __future__ import annotations

from PIL import Image, ImageStat

from evals.plots import chosen_budgets, gap_curve, pareto, reward_components, write_plots

SIZE = (960, 600)

SFT = {"unfold_accuracy": 0.92, "unfold_accuracy_greedy": 1.0, "fold_accuracy": 0.29, "fold_accuracy_greedy": 0.95,
       "protocol": {"questions": 200, "samples": 8, "temperature": 1.0}}
RL_EVALS = [
    {"step": 10, "unfold_accuracy": 0.88, "unfold_accuracy_greedy": 0.97, "fold_accuracy": 0.70, "questions": 32,
     "samples": 4, "auto": {"accuracy": 0.52, "chosen": {"20": 0.5, "100": 0.5}}},
    {"step": 20, "unfold_accuracy": 0.87, "fold_accuracy": 0.80, "fold_accuracy_greedy": 1.0, "questions": 32,
     "samples": 4},
    {"step": 30, "unfold_accuracy": 0.88, "fold_accuracy": 0.87, "questions": 200, "samples": 8, "final": True},
]
BUDGETS = {
    **{k: {"accuracy": a, "reasoning_tokens": t, "ratio": r, "accuracy_greedy": min(a + 0.1, 1.0)}
       for k, a, t, r in (("20", 0.04, 30, 0.21), ("40", 0.66, 58, 0.41), ("60", 0.75, 87, 0.62),
                          ("80", 0.85, 115, 0.82), ("100", 0.88, 141, 1.0))},
    "auto": {"accuracy": 0.72, "reasoning_tokens": 100, "ratio": 0.70, "accuracy_greedy": 0.97,
             "chosen": {"20": 0.06, "40": 0.23, "60": 0.11, "80": 0.32, "100": 0.28}},
}
PROTOCOL = {"final": {"questions": 200, "samples": 8, "temperature": 1.0},
            "budgets": {"questions": 64, "samples": 4, "temperature": 1.0}}


def history(steps: int = 12) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for s in range(1, steps + 1):
        low = 0.4 - 0.3 * s / steps  # the share of the two lowest budgets, falling
        shares = {"20": low / 2, "40": low / 2, "60": 0.2, "80": 0.2 + 0.3 * s / steps, "100": 0.2}
        values = {f"rollout/chosen_share_{k}": v for k, v in shares.items()} | {
            "reward/mean": 0.3 + 0.05 * s, "reward/std": 0.6, "reward/format": 0.95, "reward/correct": 0.5 + 0.03 * s,
            "reward/calibration": 0.1, "reward/compression": 0.05 + 0.01 * s, "reward/miss": -0.3 + 0.02 * s,
            "reward/ratio": 0.9 - 0.02 * s, "reward/chosen": 0.8 - 0.02 * s}
        for key, value in values.items():
            out.setdefault(key, []).append((s, value))
    return out


def assert_png(path) -> None:
    """A PNG of the fixed size with data drawn on it: empty gridded axes with a title are all greys
    (0 coloured pixels, measured), a plot has coloured lines, markers or areas."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == SIZE
        rgb = image.convert("RGB")
        assert min(ImageStat.Stat(rgb).stddev) > 20
        colours = rgb.getcolors(maxcolors=SIZE[0] * SIZE[1])
        coloured = sum(n for n, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 60)
        assert coloured > 200, f"{path.name}: only {coloured} coloured pixels"


def test_write_plots_writes_all_four(tmp_path):
    report = {"sft": SFT, "rl_evals": RL_EVALS, "budgets": BUDGETS, "protocol": PROTOCOL}
    paths = write_plots(report, history(), tmp_path / "plots")
    assert [p.name for p in paths] == ["gap.png", "budgets.png", "chosen_budgets.png", "rewards.png"]
    for path in paths:
        assert_png(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)


def test_write_plots_with_only_sft_and_rl_evals_writes_only_the_gap(tmp_path):
    assert write_plots({"sft": SFT, "rl_evals": RL_EVALS}, {}, tmp_path) == [tmp_path / "gap.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["gap.png"]
    assert_png(tmp_path / "gap.png")


def test_write_plots_mid_run_without_sft_or_protocol(tmp_path):
    """`Trainer.publish` before the final evaluation: sft may be None, no budgets, a history so far."""
    paths = write_plots({"sft": None, "rl_evals": RL_EVALS[:1]}, history(1), tmp_path)
    assert [p.name for p in paths] == ["gap.png", "chosen_budgets.png", "rewards.png"]
    for path in paths:
        assert_png(path)


def test_missing_data_returns_none_and_writes_nothing(tmp_path):
    out = tmp_path / "x.png"
    assert gap_curve(None, [], out) is None
    assert gap_curve({"wall_s": 3.0}, [{"step": 5, "questions": 8}], out) is None
    assert pareto({}, out) is None
    assert pareto({"20": {"accuracy": 0.5}, "auto": {"reasoning_tokens": 30}}, out) is None
    assert chosen_budgets({"reward/mean": [(1, 0.5)]}, out) is None
    assert chosen_budgets({"rollout/chosen_share_20": []}, out) is None
    assert reward_components({"rollout/chosen_share_20": [(1, 1.0)]}, out) is None
    assert reward_components({"reward/std": [(1, 0.3)]}, out) is None
    assert write_plots({}, {}, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_partial_data_still_plots(tmp_path):
    """One mode, one budget, only the ratios: each still makes a full-size picture."""
    assert_png(gap_curve({"unfold_accuracy": 0.9}, [{"step": 4, "unfold_accuracy": 0.95}], tmp_path / "gap.png"))
    assert_png(pareto({"auto": BUDGETS["auto"]}, tmp_path / "budgets.png"))
    ratios = {k: v for k, v in history().items() if k in ("reward/ratio", "reward/chosen")}
    assert_png(reward_components(ratios, tmp_path / "rewards.png"))
    assert_png(chosen_budgets({"rollout/chosen_share_40": [(3, 1.0)]}, tmp_path / "chosen.png"))


# The shape of a real run's report.json (runs/demo: 30 RL steps on CPU), trimmed to what the plots read
# plus the fields around them.
DEMO = {
    "wall_s": 1179.1, "precision": "fp32",
    "sft": {"steps": 1200, "unfold_accuracy": 0.92, "unfold_accuracy_greedy": 1.0, "unfold_peak_context": 195.6,
            "unfold_reasoning_tokens": 145.1, "fold_accuracy": 0.29125, "fold_accuracy_greedy": 1.0,
            "fold_peak_context": 99.0, "fold_reasoning_tokens": 144.8, "fold_unfold_gap": 0.62875,
            "protocol": {"questions": 200, "samples": 8, "temperature": 1.0, "top_p": 1.0, "greedy": True},
            "wall_s": 659.5},
    "rl_evals": [
        {"step": 10, "unfold_accuracy": 0.8828125, "unfold_accuracy_greedy": 0.96875, "fold_accuracy": 0.703125,
         "fold_accuracy_greedy": 0.96875, "fold_unfold_gap": 0.1796875, "questions": 32, "samples": 4,
         "auto": {"accuracy": 0.5234375, "reasoning_tokens": 95.4,
                  "chosen": {"20": 0.10, "40": 0.21, "60": 0.11, "80": 0.30, "100": 0.27}}},
        {"step": 20, "unfold_accuracy": 0.8671875, "unfold_accuracy_greedy": 0.96875, "fold_accuracy": 0.8046875,
         "fold_accuracy_greedy": 1.0, "fold_unfold_gap": 0.0625, "questions": 32, "samples": 4},
        {"step": 30, "unfold_accuracy": 0.875625, "unfold_accuracy_greedy": 0.975, "fold_accuracy": 0.866875,
         "fold_accuracy_greedy": 1.0, "fold_unfold_gap": 0.00875, "questions": 200, "samples": 8, "final": True},
    ],
    "final": {"unfold_accuracy": 0.875625, "fold_accuracy": 0.866875, "fold_unfold_gap": 0.00875},
    "budgets": {
        "20": {"accuracy": 0.0390625, "pass_at_k": 0.109, "reasoning_tokens": 29.58, "ratio": 0.2099,
               "accuracy_greedy": 0.046875, "tokens_per_s": 1868.8},
        "40": {"accuracy": 0.66015625, "reasoning_tokens": 58.39, "ratio": 0.4148, "accuracy_greedy": 0.828125},
        "60": {"accuracy": 0.75390625, "reasoning_tokens": 86.84, "ratio": 0.6175, "accuracy_greedy": 0.9375},
        "80": {"accuracy": 0.84765625, "reasoning_tokens": 114.54, "ratio": 0.8153, "accuracy_greedy": 0.96875},
        "100": {"accuracy": 0.87890625, "reasoning_tokens": 140.81, "ratio": 1.0, "accuracy_greedy": 1.0},
        "auto": {"accuracy": 0.72265625, "reasoning_tokens": 99.87, "ratio": 0.7042, "accuracy_greedy": 0.96875,
                 "chosen": {"20": 0.0625, "40": 0.2265625, "60": 0.11328125, "80": 0.3203125, "100": 0.26171875}},
    },
    "harder": {"steps": [6, 8], "unfold_accuracy": 0.046875, "fold_accuracy": 0.0234375},
    "protocol": {"final": {"questions": 200, "samples": 8, "temperature": 1.0, "top_p": 1.0, "greedy": True},
                 "budgets": {"questions": 64, "samples": 4, "temperature": 1.0, "top_p": 1.0, "greedy": True},
                 "periodic": {"questions": 32, "samples": 4, "temperature": 1.0}},
    "targets": {"sft_gap": {"value": 0.6288, "target": ">= 0.30", "met": True}},
}


def test_demo_report_shape(tmp_path):
    paths = write_plots(DEMO, {}, tmp_path)
    assert [p.name for p in paths] == ["gap.png", "budgets.png"]
    for path in paths:
        assert_png(path)
