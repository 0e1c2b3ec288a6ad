"""`accordion sft`: supervised cold start of the model on step traces: the built-in task's gold levels,
or a step-trace file (`--data`, e.g. the output of `accordion compress apply`).

Writes `<out>/checkpoint` (a Hugging Face folder; rerunning resumes from it), logs one MLflow run
(default store `sqlite:///<out>/mlflow.db`), and finally evaluates Unfold and Fold on the held-out
problems (the `eval` section's protocol: k samples at a temperature, and greedy) into `<out>/metrics.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from configs import ConfigError, add_config_arguments, config_from_args
from configs.schema import Config
from tasks.files import DataFileError


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--out", required=True, help="run folder: model, checkpoint, MLflow store, metrics.json")
    parser.add_argument("--no-eval", action="store_true", help="skip the final accuracy evaluation")
    parser.add_argument("--data", help="step-trace JSONL to train on (same as sft.data=...)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.data:
        args.overrides.append(f"sft.data={args.data}")
    cfg = config_from_args(args)
    out = Path(args.out)
    try:
        metrics = sft(cfg, out, evaluate=not args.no_eval)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {out}/checkpoint holds the last saved step. Continue with the same "
              f"command: it resumes from there.")
        return 130
    print(json.dumps(metrics, indent=1))
    return 0


def sft(cfg: Config, out: Path, evaluate: bool = True, store_dir: Path | None = None) -> dict[str, Any]:
    """Train (resuming from `out/checkpoint`), evaluate, write `out/metrics.json`; returns its metrics.
    MLflow's default store is `<store_dir or out>/mlflow.db` (the RL job keeps SFT and RL in one store)."""
    if cfg.task.name != "arithmetic" and not cfg.sft.data:
        raise ConfigError(f"task.name {cfg.task.name!r}: gold traces come from the built-in task only; "
                          f"give sft.data a step-trace file (accordion data / compress apply)")
    if cfg.sft.data and not Path(cfg.sft.data).is_file():  # now, not after Ray and the learners have started
        raise DataFileError(f"sft.data {cfg.sft.data}: file not found")
    out.mkdir(parents=True, exist_ok=True)

    import ray

    from cluster.tracking import Tracker, tracking_uri
    from learners.sft import CHECKPOINT, run_sft

    start = time.perf_counter()
    state_file = out / CHECKPOINT / "training_state.json"
    run_id = json.loads(state_file.read_text()).get("mlflow_run_id") if state_file.is_file() else None
    name = f"{cfg.tracking.run_name}-sft" if cfg.tracking.run_name else "sft"
    tracker = Tracker(cfg.model_dump(mode="json"), tracking_uri(cfg.tracking.uri, store_dir or out), cfg.tracking.experiment, run_id,
                      name, spool=out / "mlflow_spool.jsonl")
    status = "FAILED"
    try:
        # A private local Ray unless this runs inside a Ray job (RAY_ADDRESS set) or Ray is up already.
        own_ray = not ray.is_initialized()
        if own_ray:
            ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False)
        checkpoint, state, described = run_sft(cfg, out, tracker.log, {"mlflow_run_id": tracker.run_id})
        if own_ray:
            ray.shutdown()  # frees the cores for the evaluation engine
        tracker.tags({f"precision.{k}": v for k, v in described.items()})
        metrics = {"steps": state["step"], "traces": state["data_position"], "train_s": time.perf_counter() - start,
                   "precision": described["precision"], "cpu": described["machine"]}
        if evaluate:
            metrics |= held_out_accuracy(checkpoint, cfg, out)
            p = metrics["protocol"]
            shown = ", ".join(f"{mode.capitalize()} {metrics[f'{mode}_accuracy']:.1%}"
                              + (f" (greedy {metrics[f'{mode}_accuracy_greedy']:.1%})" if p["greedy"] else "")
                              for mode in ("unfold", "fold"))
            print(f"after SFT ({p['questions']} questions x {p['samples']} samples at temperature {p['temperature']}): {shown}")
        metrics["wall_s"] = time.perf_counter() - start
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        tracker.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, state["step"])
        tracker.artifact(out / "metrics.json")
        status = "FINISHED"
        print(f"checkpoint: {checkpoint}")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
    return metrics


def held_out_accuracy(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Any]:
    """Unfold and Fold on the held-out problems with the final protocol, on one in-process engine; the
    trajectories go to `out/trajectories.jsonl` and their viewer to `out/view.html`."""
    import asyncio

    from cluster.run_dir import VIEW
    from evals.runner import local_backend, modes, protocols
    from evals.view import write_view
    from tasks.dataset import records
    from tasks.files import write_jsonl

    traces: list[dict] = []

    async def run() -> dict[str, Any]:
        async with local_backend(str(checkpoint), cfg) as (rollout, check, generator):
            protocol = protocols(cfg)["final"]
            result = await modes(rollout, check, records(cfg.task, "eval"), cfg.eval.budget, protocol, "sft eval",
                                 traces)
            return {**result, "generator_dtype": generator.dtype, "protocol": protocol.as_dict()}

    result = asyncio.run(run())
    write_jsonl(out / "trajectories.jsonl", traces)
    print(f"trajectories after SFT as step outlines: {write_view(traces, out / VIEW, f'{out}: held-out trajectories after SFT')}")
    return result
