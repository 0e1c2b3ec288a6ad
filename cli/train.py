"""`accordion train` (and `python -m cli train` under `ray job submit`): the main job.

1. With the embedded default (`model.path` empty): build the tiny model and cold-start it with SFT
   into `<run_dir>/sft`, then evaluate it (Fold starts behind Unfold: the gap RL must close).
2. RL on Ray (`cluster.train`), evaluating every `eval.every` steps and, at the end, with the full
   protocol, the budget sweep and the harder problems.
3. `<run_dir>/report.json` and a table of every evaluation (`evals.report`).

Ctrl-C stops the job at any point within seconds: actors are shut down, the last checkpoint stays
valid, and `--resume RUN_DIR` continues where it stopped (SFT included).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cluster.run_dir import PLOTS, REPORT, VIEW, prepare_run, read_evals, read_state, write_json
from configs import add_config_arguments
from configs.schema import Config


def main(argv: list[str], prog: str = "accordion train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    args = parser.parse_args(argv)
    from cluster.plan import check_fits

    cfg, run_dir, state = prepare_run(args.config, args.overrides, args.resume, check=check_fits)
    start = time.perf_counter()

    def interrupted() -> None:
        saved = read_state(run_dir)
        where = f"the checkpoint of RL step {saved['step']}" if saved else "its SFT checkpoint" \
            if (run_dir / "sft" / "checkpoint").is_dir() else "no checkpoint yet"
        print(f"\n{prog}: interrupted after {time.perf_counter() - start:.0f} s; {run_dir} holds {where}.\n"
              f"continue with: accordion train --resume {run_dir}", file=sys.stderr, flush=True)

    stop_after_ctrl_c(interrupted)
    try:
        report = run(cfg, run_dir, state)
    except KeyboardInterrupt:
        interrupted()
        return 130
    from evals.report import print_report

    print_report(report)
    print(f"report: {run_dir / REPORT}\ntrajectories as step outlines (open in a browser): {run_dir / VIEW}\n"
          f"plots: {run_dir / PLOTS}/\nbrowse the run with: mlflow ui --backend-store-uri "
          f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    return 0


def stop_after_ctrl_c(interrupted: Callable[[], None], grace_s: float = 15.0) -> None:
    """Ctrl-C raises KeyboardInterrupt in the main thread, as Python does by default, and the job shuts its
    actors down on the way out. But a library on the path may swallow it (once seen: SFT ran on to its last
    step after Ctrl-C), so the first Ctrl-C also arms a timer: still running `grace_s` later, the job kills
    its child processes (local Ray, engines) and exits with 130. Checkpoints are written atomically."""

    def force_exit() -> None:
        import psutil

        interrupted()
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(130)

    def on_sigint(signum, frame) -> None:
        timer = threading.Timer(grace_s, force_exit)
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def run(cfg: Config, run_dir: Path, state: dict | None) -> dict[str, Any]:
    """Cold start if needed, RL to `rl.steps`, then `report.json`; returns the report."""
    import ray

    from cluster.train import train

    report_path = run_dir / REPORT
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    start = time.perf_counter()
    sft = None
    if not cfg.model.path:
        cfg, sft = cold_start(cfg, run_dir)
    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS names the cluster (no runtime_env here: the job's applies);
        # otherwise a private local Ray, never a stray one left running on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False)
    trainer = asyncio.run(train(cfg, run_dir, state))
    print(f"trained {trainer.step} steps; run folder {run_dir}; MLflow run {trainer.tracker.run_id}")
    # A resumed run adds its wall time to what the earlier sessions spent.
    report: dict[str, Any] = {"wall_s": previous.get("wall_s", 0.0) + time.perf_counter() - start,
                              "precision": trainer.precision["learner"], "cpu": trainer.precision["machine"],
                              "generator_dtype": trainer.precision["generator"]}
    if sft:
        report["sft"] = sft
    report["rl_evals"] = read_evals(run_dir, upto=trainer.step)
    report |= trainer.final or {k: previous[k] for k in ("final", "budgets", "harder", "protocol") if k in previous}
    from evals.report import targets
    from evals.runner import protocols

    report.setdefault("protocol", {})["periodic"] = protocols(cfg)["periodic"].as_dict()

    report["targets"] = targets(report)
    write_json(report_path, report)
    trainer.tracker.artifact(report_path)
    return report


def cold_start(cfg: Config, run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The embedded default names no model: RL then starts from the tiny model after SFT on the built-in
    gold traces (`accordion sft --out <run_dir>/sft`: resumable, skipped once done); returns the config
    pointing at the SFT checkpoint and the SFT's evaluation."""
    from cli.sft import sft
    from learners.sft import CHECKPOINT

    sft_dir = run_dir / "sft"
    if (sft_dir / "metrics.json").is_file():
        metrics = json.loads((sft_dir / "metrics.json").read_text())
    else:
        print(f"model.path is empty: cold-starting the built-in tiny model with SFT into {sft_dir}")
        metrics = sft(cfg, sft_dir, store_dir=run_dir)
    start = rl_start(cfg, sft_dir / CHECKPOINT)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(start)})}), metrics


def rl_start(cfg: Config, checkpoint: Path) -> Path:
    """The SFT checkpoint, or, when RL weights the budget choice of a model trained tied, its copy with an LM
    head of its own (`<run_dir>/sft/untied`): SFT'd tied, the built-in model learns `<COMP_40>` better, and
    untied, the weighted choice leaves the budget tokens' input embeddings alone."""
    from cluster.train import weights_choice
    from models.prepare import ties_embeddings, untied_copy

    if not (weights_choice(cfg) and ties_embeddings(checkpoint)):
        return checkpoint
    untied = checkpoint.parent / "untied"
    if not (untied / "config.json").is_file():
        print(f"the budget choice is weighted (learner.choice_weight {cfg.learner.choice_weight:g}): RL starts from "
              f"{untied}, the SFT checkpoint with an LM head of its own")
        untied_copy(checkpoint, untied)
    return untied
