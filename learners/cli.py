"""`accordion sft`: supervised cold start of the model on the built-in task's gold step traces.

Writes `<out>/checkpoint` (a Hugging Face folder; rerunning resumes from it), logs one MLflow run
(default store `sqlite:///<out>/mlflow.db`), and finally measures greedy Unfold and Fold accuracy on
the held-out problems into `<out>/metrics.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cluster.cli import add_config_arguments, config_from_args
from configs import ConfigError


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--out", required=True, help="run folder: model, checkpoint, MLflow store, metrics.json")
    parser.add_argument("--no-eval", action="store_true", help="skip the final accuracy evaluation")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if cfg.task.name != "arithmetic":
        raise ConfigError(f"task.name {cfg.task.name!r}: sft trains on the built-in arithmetic task only")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray

    from cluster.tracking import Tracker, tracking_uri
    from learners.sft import CHECKPOINT, accuracy, run_sft

    start = time.perf_counter()
    state_file = out / CHECKPOINT / "training_state.json"
    run_id = json.loads(state_file.read_text()).get("mlflow_run_id") if state_file.is_file() else None
    tracker = Tracker(cfg, tracking_uri(cfg.tracking.uri, out), cfg.tracking.experiment, run_id, cfg.tracking.run_name)
    status = "FAILED"
    try:
        # A private local Ray unless this runs inside a Ray job (RAY_ADDRESS set) or Ray is up already.
        own_ray = not ray.is_initialized()
        if own_ray:
            ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False)
        checkpoint, state = run_sft(cfg, out, tracker.log, {"mlflow_run_id": tracker.run_id})
        if own_ray:
            ray.shutdown()  # frees the cores for the evaluation engine
        train_s = time.perf_counter() - start
        metrics = {"steps": state["step"], "traces": state["data_position"], "train_s": train_s}
        if not args.no_eval:
            metrics |= accuracy(checkpoint, cfg)
        metrics["wall_s"] = time.perf_counter() - start
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, state["step"])
        tracker.artifact(out / "metrics.json")
        status = "FINISHED"
        print(json.dumps(metrics, indent=1))
        print(f"checkpoint: {checkpoint}")
    finally:
        tracker.close(status)
    return 0
