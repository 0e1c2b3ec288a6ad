"""`accordion eval --model DIR --out F.json [--data SET] [--protocol accordion|extra-cot]`: evaluate a model.

`--data` picks the questions: `builtin` (the built-in task's held-out problems, default) or a real set
(`math500`, `gsm8k`, `aime24`, `amc23`, read from `task.data_dir`); `--limit N` takes the first N
(default: `eval.questions` for builtin, the whole set otherwise).

Every combination of `--modes` and `--budgets` is one cell: `--samples` trajectories per question at
`--temperature`/`--top-p` (accuracy = their mean, avg@k, and pass@k) plus one greedy trajectory, with
reasoning tokens, the measured ratio r-hat against the same model's `<COMP_100>` length (include 100
among the budgets), peak context and tokens/s. Answers are checked by math-verify in killable processes.

The protocol (k, temperature, top-p, max new tokens, Fold's segment limits) is printed before generating
and stored in the JSON: numbers from different tools compare only under the same protocol. Its values
come from the config's `eval` and `generator` sections, or from `--protocol`, a paper's preset
(`evals.runner.PRESETS`: accordion = 8 samples at temperature 1.0; extra-cot = temperature 0.7, top-p 0.9,
4,096 new tokens); explicit options override both. Max new tokens beyond `generator.max_model_len` are
clamped to it, with a note. Prints a table and writes the cells, the protocol, the data, the precision and
the machine to `--out` (with both modes: `final` in the shape of the main job's report; with several Fold
budgets: `budgets`), and every trajectory, scored, to `--out`'s name with `.traces.jsonl` (`accordion view` shows
it); `--mlflow` also logs both as one MLflow run beside `--out`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from configs import add_config_arguments, config_from_args
from evals.runner import PRESETS
from tasks.benchmarks import SOURCES
from tasks.files import write_jsonl

DATA = ("builtin", *SOURCES)


def budget_arg(text: str) -> int | str | None:
    """A budget as the config's `eval.budget` takes it (the same check), or `none`."""
    if text == "none":
        return None
    from configs.schema import known_budgets

    try:
        return known_budgets(int(text) if text.isdigit() else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}, or none") from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def sampling(e, g, preset: str | None, samples: int | None = None, temperature: float | None = None,
             top_p: float | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """`samples`, `temperature`, `top_p`, `max_tokens`: the config's (`eval` section `e`, `generator`
    section `g`), replaced by the preset's, replaced by explicit options (not None). Raises ValueError
    for a value out of the config's bounds."""
    from pydantic import ValidationError

    values = {"samples": e.samples, "temperature": e.temperature, "top_p": e.top_p, "max_tokens": g.max_tokens}
    values |= PRESETS[preset] if preset else {}
    values |= {k: v for k, v in dict(samples=samples, temperature=temperature, top_p=top_p,
                                     max_tokens=max_tokens).items() if v is not None}
    try:  # the bounds the config would enforce
        e.model_validate(e.model_dump() | {k: values[k] for k in ("samples", "temperature", "top_p")})
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"--{str(first['loc'][0]).replace('_', '-')} {first['input']}: {first['msg']}") from None
    return values


def clamp_max_tokens(requested: int, max_model_len: int) -> tuple[int, str | None]:
    """Max new tokens the engine can give (at most its context) and a note when that is fewer than asked."""
    if requested <= max_model_len:
        return requested, None
    return max_model_len, (f"note: max new tokens {requested} exceed generator.max_model_len {max_model_len}: "
                           f"clamped to {max_model_len} (each response also stops at {max_model_len} minus its prompt)")


def load_questions(cfg, data: str, harder: bool) -> list[dict]:
    """Records `{question, answer, source}` of `data`; `harder`: builtin problems with `eval.harder_steps`."""
    if data == "builtin":
        from tasks.dataset import records

        task = cfg.task.model_copy(update={"name": "arithmetic"})
        if harder:
            low, high = cfg.eval.harder_steps
            task = task.model_copy(update={"min_steps": low, "max_steps": high})
        return records(task, "eval")
    from tasks.benchmarks import load_benchmark

    return load_benchmark(data, cfg.task.data_dir, "test").to_list()


def describe(p) -> str:
    """The protocol on one line, as printed before generating."""
    k = f"k={p.samples}" + (" + greedy" if p.greedy else "")
    clamped = f" (asked {p.max_tokens_requested})" if p.max_tokens != p.max_tokens_requested else ""
    return (f"protocol: {p.data}, {p.questions} questions, {k}, temperature {p.temperature}, top-p {p.top_p}, "
            f"max new tokens {p.max_tokens}{clamped} (Unfold), Fold {p.max_segments} segments x "
            f"{p.segment_tokens} tokens with prompts <= {p.max_prompt_tokens}, context {p.max_model_len}, "
            f"preset {p.preset or 'none (config)'}")


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (Hugging Face, with the step tokens)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--data", choices=DATA, default="builtin", help="question set (default: %(default)s)")
    parser.add_argument("--limit", "--questions", type=positive, metavar="N",
                        help="first N questions (default: eval.questions for builtin, all of a real set); "
                             "--questions is its old name")
    parser.add_argument("--protocol", choices=list(PRESETS),
                        help="a paper's evaluation protocol (default: the config's)")
    parser.add_argument("--modes", nargs="+", choices=("unfold", "fold"), default=["unfold", "fold"])
    parser.add_argument("--budgets", nargs="+", type=budget_arg, metavar="BUDGET",
                        help="budget tokens: 20 40 60 80 100 auto none (default: eval.budget)")
    parser.add_argument("--samples", type=positive, help="samples per question (default: preset, else eval.samples)")
    parser.add_argument("--temperature", type=float,
                        help="sampling temperature (default: preset, else eval.temperature)")
    parser.add_argument("--top-p", type=float, help="nucleus mass (default: preset, else eval.top_p)")
    parser.add_argument("--max-tokens", type=positive, help="Unfold: max new tokens (default: preset, else "
                                                            "generator.max_tokens)")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy trajectory per question")
    parser.add_argument("--harder", action="store_true", help="builtin problems with eval.harder_steps operations")
    parser.add_argument("--mlflow", action="store_true", help="log the results as an MLflow run (store: "
                                                              "tracking.uri, else mlflow.db beside --out)")
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment + '-eval')")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.harder and args.data != "builtin":
        parser.error(f"--harder is for the built-in task only, not --data {args.data}")
    if args.harder and not cfg.eval.harder_steps:
        parser.error("--harder needs eval.harder_steps (e.g. eval.harder_steps=[6,8])")
    try:
        values = sampling(cfg.eval, cfg.generator, args.protocol, args.samples, args.temperature, args.top_p,
                          args.max_tokens)
    except ValueError as err:
        parser.error(str(err))

    from actors.generator import ModelFolderError, check_model_folder

    questions = load_questions(cfg, args.data, args.harder)  # a missing file: DataFileError, printed by cli
    try:
        check_model_folder(Path(args.model))
        positions = json.loads((Path(args.model) / "config.json").read_text()).get("max_position_embeddings")
        if positions and positions < cfg.generator.max_model_len:  # vLLM would refuse it with a traceback
            raise ModelFolderError(f"{args.model}: the model has {positions} positions but generator.max_model_len "
                                   f"is {cfg.generator.max_model_len}: pass generator.max_model_len={positions} "
                                   "with max_prompt_tokens + segment_tokens within it")
    except ModelFolderError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2

    from evals.runner import Cell, Protocol, limits
    from models.precision import engine_dtype

    g = cfg.generator
    max_tokens, note = clamp_max_tokens(values["max_tokens"], g.max_model_len)
    cfg = cfg.model_copy(update={"generator": g.model_copy(update={"max_tokens": max_tokens})})
    limit = args.limit or (cfg.eval.questions if args.data == "builtin" else len(questions))
    data = args.data + (" (harder: {}-{} operations)".format(*cfg.eval.harder_steps) if args.harder else "")
    protocol = Protocol(min(limit, len(questions)), values["samples"], values["temperature"], values["top_p"],
                        cfg.eval.greedy and not args.no_greedy, data=data,
                        preset=args.protocol, **limits(cfg.generator) | {"max_tokens_requested": values["max_tokens"]})
    budgets = args.budgets or [cfg.eval.budget]
    cells = [Cell(mode, budget) for mode in args.modes for budget in budgets]
    if note:
        print(note)
    print(f"{describe(protocol)}, precision {engine_dtype(g.dtype)}", flush=True)

    traces: list[dict] = []
    result = {"data": args.data, "model": args.model,
              **asyncio.run(evaluate(args.model, cfg, questions[: protocol.questions], cells, protocol, traces))}
    if set(args.modes) == {"unfold", "fold"}:
        from evals.metrics import by_mode

        result["final"] = by_mode({c.mode: result["cells"][c.name] for c in cells if c.budget == budgets[0]})
    if "fold" in args.modes and len(budgets) > 1:
        result["budgets"] = {str(c.budget): result["cells"][c.name] for c in cells if c.mode == "fold"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    traces_path = write_jsonl(traces_file(args.out), traces)

    from evals.report import cells_table
    from rich.console import Console

    title = (f"{args.model} on {protocol.data}: {protocol.questions} questions, {protocol.samples} samples each at "
             f"temperature {protocol.temperature}, top-p {protocol.top_p} ({result['precision']}, {result['cpu']})")
    # Piped into a log, rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 140).print(cells_table(result["cells"], title))
    print(f"wrote {args.out} and its trajectories {traces_path} (accordion view {traces_path})")
    if args.mlflow:
        from cluster.tracking import tracking_uri

        uri = tracking_uri(cfg.tracking.uri, args.out.parent)
        run_id = log_run(result, [args.out, traces_path], uri, args.experiment or f"{cfg.tracking.experiment}-eval",
                         cfg.tracking.run_name or f"eval {args.data}")
        print(f"MLflow run {run_id}; browse: mlflow ui --backend-store-uri {uri}")
    return 0


def traces_file(out: Path) -> Path:
    """Where the trajectories of the results `out` go: `F.json` -> `F.traces.jsonl`."""
    return out.with_name(f"{out.stem if out.suffix == '.json' else out.name}.traces.jsonl")


async def evaluate(model: str, cfg, questions: list[dict], cells, protocol, traces: list[dict]) -> dict:
    from evals.runner import evaluate as run_cells
    from evals.runner import local_backend
    from models.precision import machine

    async with local_backend(model, cfg) as (rollout, check, generator):
        cells_out = await run_cells(rollout, check, questions, cells, protocol, traces=traces)
        return {"precision": generator.dtype, "cpu": machine(), "protocol": protocol.as_dict(), "cells": cells_out}


def run_metrics(cells: dict[str, dict]) -> dict[str, float]:
    """`{cell: {metric: value}}` as MLflow metrics `<cell>/<metric>` (`fold@40` -> `fold_40`: MLflow refuses
    `@`); `chosen` becomes `<cell>/chosen_<budget>`."""
    out = {}
    for cell, metrics in cells.items():
        for key, value in metrics.items():
            if isinstance(value, dict):
                out |= {f"{cell.replace('@', '_')}/{key}_{b}": v for b, v in value.items()}
            else:
                out[f"{cell.replace('@', '_')}/{key}"] = value
    return out


def log_run(result: dict, files: list[Path], uri: str, experiment: str, name: str) -> str:
    """One finished MLflow run: params = the protocol, metrics per cell, `files` as artifacts."""
    from cluster.tracking import Tracker

    tracker = Tracker(result["protocol"], uri, experiment, run_name=name)
    tracker.tags({k: result[k] for k in ("model", "data", "precision", "cpu")})
    tracker.log(run_metrics(result["cells"]), 0)
    for file in files:
        tracker.artifact(file)
    tracker.close()
    return tracker.run_id
