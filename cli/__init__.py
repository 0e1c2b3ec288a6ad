"""The `accordion` command: one module per subcommand in this package, each with `main(argv, prog)`.

Commands sit on top of everything else: they parse arguments, load the config and call into the
roles (`actors/`, `learners/`, `rewards/`) and the orchestration (`cluster/`, `evals/`); nothing
imports from here. This file only lists them, so `accordion --help` stays fast (no torch, no vLLM).
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from configs import ConfigError
from tasks.files import DataFileError

# name -> (module with main(argv, prog), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cli.train", "the main job: SFT cold start (embedded default), RL on Ray (Fold / Unfold / Mix, "
                           "CHRPO budgets, async rollouts), evaluations, report.json; MLflow; --resume"),
    "sft": ("cli.sft", "supervised cold start on the built-in step traces (resumable; MLflow; metrics.json)"),
    "eval": ("cli.eval", "accuracy, reasoning tokens, ratio and peak context of a model on the built-in task or "
                         "MATH-500/GSM8K/AIME24/AMC23: Fold/Unfold x budgets, k samples + greedy, the papers' protocols"),
    "generate": ("cli.generate", "roll out Fold/Unfold trajectories and print them as outlines of step summaries"),
    "view": ("cli.view", "a trajectory file or a run's latest evaluation as one HTML page: step summaries as an "
                         "outline, reasoning folded under each, Fold and Unfold side by side"),
    "score": ("cli.score", "check answers and compute rewards for a JSONL of responses (hang-proof)"),
    "compress": ("cli.compress", "Extra-CoT's compressor: step traces -> keep labels -> a trained token classifier -> "
                                 "mixed-ratio SFT data (traces, label, train, apply, bench)"),
    "task": ("cli.task", "show built-in task problems and their gold traces at each budget"),
    "init-model": ("cli.init_model", "build the tiny built-in tokenizer and model into a folder"),
    "bench": ("cli.bench", "benchmarks (benches/): fold, sync, async, sft, reward, trl; `all` runs each (make bench)"),
}

# Errors whose message is the whole story for the user: printed without a traceback.
USER_ERRORS = (ConfigError, DataFileError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
        print("usage: accordion <command> [options]  (accordion <command> --help for its options)\n")
        print("commands:\n" + "\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"accordion: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest, prog=f"accordion {name}") or 0
    except USER_ERRORS as err:
        print(f"accordion {name}: error: {err}", file=sys.stderr)
        return 2
