"""`accordion eval --model DIR --out F.json`: evaluate a model on the built-in task's held-out problems.

Every combination of `--modes` and `--budgets` is one cell: `--samples` trajectories per question at
`--temperature` (accuracy = their mean, Accordion's protocol) plus one greedy trajectory, with reasoning
tokens, the measured ratio r-hat against the same model's `<COMP_100>` length (include 100 among the
budgets), peak context and tokens/s. Defaults come from the config's `eval` section. Prints a table and
writes the cells, the protocol, the precision and the machine to `--out` (with both modes: `final` in
the shape of the main job's report; with several Fold budgets: `budgets`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from configs import add_config_arguments, config_from_args


def budget_arg(text: str) -> int | str | None:
    """A budget as the config's `eval.budget` takes it (the same check), or `none`."""
    if text == "none":
        return None
    from configs.schema import known_budgets

    try:
        return known_budgets(int(text) if text.isdigit() else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}, or none") from None


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (Hugging Face, with the step tokens)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--modes", nargs="+", choices=("unfold", "fold"), default=["unfold", "fold"])
    parser.add_argument("--budgets", nargs="+", type=budget_arg, metavar="BUDGET",
                        help="budget tokens: 20 40 60 80 100 auto none (default: eval.budget)")
    parser.add_argument("--questions", type=int, help="held-out questions (default: eval.questions)")
    parser.add_argument("--samples", type=int, help="samples per question (default: eval.samples)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: eval.temperature)")
    parser.add_argument("--top-p", type=float, help="nucleus mass (default: eval.top_p)")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy trajectory per question")
    parser.add_argument("--harder", action="store_true", help="problems with eval.harder_steps operations instead")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    e = cfg.eval

    from evals.runner import Cell, Protocol

    protocol = Protocol(args.questions or e.questions, args.samples or e.samples,
                        e.temperature if args.temperature is None else args.temperature,
                        e.top_p if args.top_p is None else args.top_p, e.greedy and not args.no_greedy)
    budgets = args.budgets or [e.budget]
    cells = [Cell(mode, budget) for mode in args.modes for budget in budgets]
    task = cfg.task
    if args.harder:
        if not e.harder_steps:
            parser.error("--harder needs eval.harder_steps (e.g. eval.harder_steps=[6,8])")
        task = task.model_copy(update={"min_steps": e.harder_steps[0], "max_steps": e.harder_steps[1]})
    from actors.generator import ModelFolderError

    try:
        result = asyncio.run(evaluate(args.model, cfg, task, cells, protocol))
    except ModelFolderError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    result["model"] = args.model
    if set(args.modes) == {"unfold", "fold"}:
        from evals.metrics import by_mode

        result["final"] = by_mode({c.mode: result["cells"][c.name] for c in cells if c.budget == budgets[0]})
    if "fold" in args.modes and len(budgets) > 1:
        result["budgets"] = {str(c.budget): result["cells"][c.name] for c in cells if c.mode == "fold"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    from evals.report import cells_table
    from rich.console import Console

    Console().print(cells_table(result["cells"], f"{args.model}: {protocol.samples} samples per question at temperature "
                                                 f"{protocol.temperature}, {len(cells)} cells, {protocol.questions} "
                                                 f"questions ({result['precision']}, {result['cpu']})"))
    print(f"wrote {args.out}")
    return 0


async def evaluate(model: str, cfg, task, cells, protocol) -> dict:
    from actors.generator import check_model_folder
    from evals.runner import evaluate as run_cells
    from evals.runner import local_backend
    from models.precision import machine
    from tasks.dataset import records

    check_model_folder(Path(model))
    async with local_backend(model, cfg) as (rollout, check, generator):
        cells_out = await run_cells(rollout, check, records(task, "eval"), cells, protocol)
        return {"precision": generator.dtype, "cpu": machine(), "protocol": protocol.as_dict(), "cells": cells_out}
