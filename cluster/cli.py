"""The `accordion` command. Each subcommand lives beside the code it drives, in a module with a
`main(argv, prog)`; this file only lists them, so `accordion --help` stays fast (no torch, no vLLM)."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from configs import LOCAL, ConfigError, load_config
from configs.schema import Config
from tasks.benchmarks import DataFileError

# name -> (module with main(argv, prog), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "init-model": ("models.cli", "build the tiny built-in tokenizer and model into a folder"),
    "task": ("tasks.cli", "show built-in task problems and their gold traces at each budget"),
    "score": ("rewards.cli", "check answers and compute rewards for a JSONL of responses (hang-proof)"),
    "generate": ("actors.cli", "roll out Fold/Unfold trajectories and print them as outlines of step summaries"),
    "sft": ("learners.cli", "supervised cold start on the built-in step traces (resumable; MLflow; metrics.json)"),
    "train": ("cluster.train", "RL on Ray: Fold / Unfold / Mix-RL or CHRPO budgets; async rollouts; MLflow; --resume"),
    "bench": ("cluster.bench", "benchmarks: `bench fold` (Fold vs Unfold throughput at one KV budget)"),
}

# Errors whose message is the whole story for the user: printed without a traceback.
USER_ERRORS = (ConfigError, DataFileError, FileNotFoundError)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` plus trailing `key.sub=value` overrides, shared by every command that runs a job."""
    parser.add_argument("--config", default=str(LOCAL), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config value")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


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


if __name__ == "__main__":
    sys.exit(main())
