"""The `accordion` command: one module per subcommand in this package, each with `main(argv, prog)`.

Commands sit on top of everything else: they parse arguments, load the config and call into the
roles (`actors/`, `learners/`, `rewards/`) and the orchestration (`cluster/`, `evals/`); nothing
imports from here. This file only lists them, so `accordion --help` stays fast (no torch, no vLLM).
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from cluster.run_dir import RunFolderError
from cluster.train import LearnersLost
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
    "soak": ("cli.soak", "the RL job under chaos: generators, reward workers, verifiers, learner ranks and the driver "
                         "SIGKILLed at random, resumed; audits exactly-once training from the run's records"),
    "plan": ("cli.plan", "memory per device of each role (DeepSpeed's estimators, activations, vLLM weights and KV) "
                         "and Fold vs Unfold concurrency; refuses a config that does not fit"),
    "score": ("cli.score", "check answers and compute rewards for a JSONL of responses (hang-proof)"),
    "data": ("cli.data", "a task's worked solutions as step traces for SFT: GSM8K (one step per calculation line) "
                         "or the built-in task"),
    "compress": ("cli.compress", "Extra-CoT's compressor: step traces -> keep labels -> a trained token classifier -> "
                                 "mixed-ratio SFT data (traces, label, train, apply, bench)"),
    "task": ("cli.task", "show built-in task problems and their gold traces at each budget"),
    "prepare-model": ("cli.prepare_model", "add the format tokens and the project's chat template to a Hugging Face "
                                           "Qwen2.5/Qwen3/Llama folder; check each tag is one id and vLLM serves it"),
    "init-model": ("cli.init_model", "build the tiny built-in tokenizer and model into a folder"),
    "bench": ("cli.bench", "benchmarks (benches/): fold, sync, async, sft, reward, trl; `all` runs each (make bench)"),
}

# Errors whose message is the whole story for the user: printed without a traceback.
USER_ERRORS = (ConfigError, DataFileError, FileNotFoundError, RunFolderError, LearnersLost)


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
