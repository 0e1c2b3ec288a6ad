"""`accordion soak`: the RL job under chaos. While it trains (async, staleness 1, an untrained tiny model:
nothing here depends on accuracy), a generator, a reward worker, a verifier process, a learner rank or
the driver itself is SIGKILLed every ~`--kill-every` seconds (kinds in shuffled rounds, each kill once
the job has recovered from the last); a killed driver is resumed with `--resume`. At the end the job
finishes normally and its own records are audited (`cluster.soak.audit`): every data position trained
exactly once in the surviving lineage, none lost, the step counter continuous.

Exit code 1 if anything was lost or duplicated, a step is in MLflow twice, or the steps are not continuous.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from configs import add_config_arguments

FAST = ["rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.max_staleness=1", "rl.save_every=1",
        "generator.segment_tokens=32", "generator.max_segments=3", "generator.max_tokens=64",
        "generator.max_prompt_tokens=256", "generator.max_model_len=512", "learner.precision=fp32",
        "reward.processes=1", "eval.every=0", "eval.questions=2", "eval.samples=1", "eval.budgets=[]",
        "eval.harder_steps=null", "eval.budget=null", "rl.budgets=[]", "reward.name=accordion", "rl.mode=fold",
        "tracking.log_at=checkpoint"]
"""Small, quick steps, so kills land on a running loop rather than on long generations; MLflow takes each step once
it is checkpointed, so a step redone after a kill is not logged twice."""


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the chaos lasts (default %(default)s)")
    parser.add_argument("--kill-every", type=float, default=30.0, metavar="S",
                        help="mean seconds between kills, counted from the job's recovery (default %(default)s)")
    parser.add_argument("--kills", type=int, default=0, metavar="N",
                        help="stop the chaos after N kills, before --minutes are up (0: no limit)")
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--dir", default="runs/soak", help="work folder: the model and the run (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the chaos (kinds and victims)")
    parser.add_argument("--recovery-timeout", type=float, default=300.0, metavar="S",
                        help="a kill the job has not recovered from after S seconds fails the soak")
    add_config_arguments(parser)
    args = parser.parse_args(argv)

    from cluster.soak import KINDS, Soak, audit, saved_step
    from configs import load_config
    from models.build import build_tiny_model

    work = Path(args.dir)
    run_dir = work / "run"
    if run_dir.exists():
        raise SystemExit(f"{prog}: {run_dir} exists; pass --dir <new folder>")
    cfg = load_config(args.config, [*FAST, *args.overrides])
    model = build_tiny_model(cfg.model, work / "model")
    train_args = ["--config", args.config, *FAST, f"model.path={model}", f"run_dir={run_dir}", "rl.steps=1000000",
                  "cluster.max_learner_restarts=1000000", *args.overrides]
    soak = Soak(train_args, run_dir, work / "train.log")
    rng = random.Random(args.seed)
    start = time.monotonic()
    soak.start(resume=False)
    print(f"{prog}: training in {run_dir} (log {soak.log}); waiting for the first step", flush=True)
    soak.wait_for_step_after(0, args.recovery_timeout)
    deadline = start + args.minutes * 60
    kinds: list[str] = []
    while time.monotonic() < deadline and not (args.kills and sum(soak.kills.values()) >= args.kills):
        time.sleep(max(0.0, min(rng.uniform(0.5, 1.5) * args.kill_every, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        kinds = kinds or rng.sample(KINDS, len(KINDS))
        step = saved_step(run_dir)
        if not soak.kill(kinds[0], rng):
            continue  # none of that kind right now (a verifier between restarts): try it next time
        kind = kinds.pop(0)
        # Step `step + 1` may have been in flight, even checkpointing, at the kill; `step + 2` trains after it.
        took = soak.wait_for_step_after(step + 1, args.recovery_timeout)
        soak.recovery_s[kind].append(took)
        print(f"{time.monotonic() - start:7.0f} s  killed a {kind:<13} at step {step}; training again after "
              f"{took:.0f} s  (kills so far: {sum(soak.kills.values())})", flush=True)

    # The end: a last resume that finishes two steps later, normally (final checkpoint, state, MLflow).
    soak.stop_driver()
    soak.start(resume=True, extra=[f"rl.steps={saved_step(run_dir) + 2}"])
    soak.resumes += 1
    if soak.proc.wait(timeout=args.recovery_timeout + 600) != 0:
        raise SystemExit(f"{prog}: the final resume failed (log {soak.log})")
    figures = {"kills": soak.kills, "resumes": soak.resumes, **audit(run_dir), "wall_s": round(time.monotonic() - start, 1),
               "recovery_s_max": {k: round(max(v), 1) for k, v in soak.recovery_s.items() if v}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    ok = figures["lost"] == figures["duplicated"] == figures["mlflow_steps_logged_twice"] == 0 and figures["continuous"]
    print(f"{prog}: {'passed' if ok else 'FAILED'}: {sum(soak.kills.values())} kills, {figures['lost']} lost, "
          f"{figures['duplicated']} duplicated, {figures['mlflow_steps_logged_twice']} MLflow steps logged twice; "
          f"figures in {args.out}")
    return 0 if ok else 1
