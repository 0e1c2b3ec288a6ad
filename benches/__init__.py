"""The benchmarks, one module each with `main(argv, prog)` (`accordion bench`, listed in `cli/bench.py`).

They report the same way, so `accordion bench all` can put every figure into one table: each headline
figure is a row (ours, the peer's or baseline's, their ratio, the target), printed under a line naming
the precision and the machine (`models.precision.machine()`) and written into the benchmark's JSON
with `precision`, `cpu` and `date`.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from configs import add_config_arguments

COLUMNS = {"figure": "figure", "ours": "ours", "baseline": "peer/baseline", "ratio": "ratio", "target": "target"}


def bench_parser(prog: str, doc: str | None, out_required: bool = True) -> argparse.ArgumentParser:
    """What every benchmark's command line starts with: its docstring as help, `--out FILE.json`, and the
    config with its overrides (`configs.config_from_args` reads them)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=out_required, help="JSON file for the results")
    add_config_arguments(parser)
    return parser


def figure(name: str, ours: float, baseline: float | None = None, target: str = "") -> dict:
    """One row; `name` says what is measured against what, e.g. `tokens/s at 4096-token traces, Fold vs Unfold`.
    Where there is a baseline the figure is a rate (higher is better), so ratio = ours / baseline reads the
    same way in every row."""
    return {"figure": name, "ours": ours, "baseline": baseline,
            "ratio": ours / baseline if baseline else None, "target": target}


def report(out: Path, result: dict, figures: list[dict], precision: str) -> dict:
    """Print `figures` under the precision and machine, and write them with `result` to `out` as JSON."""
    from models.precision import machine

    result = {**result, "figures": figures, "precision": precision, "cpu": machine(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"\n{precision} on {result['cpu']}, {result['date']}\n{markdown(figures, COLUMNS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def markdown(rows: list[dict], columns: dict[str, str]) -> str:
    """A markdown table of `rows` (dicts) with `columns` (key -> header); it reads as well in a terminal."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value).replace("|", "\\|")
