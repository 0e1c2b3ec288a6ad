"""Chaos for `accordion soak`: kill the RL job's processes at random while it trains, then audit the run
from its own records.

Kinds of victims, found in the job's process tree (the driver's local Ray is its child):

    generator      a `ray::GeneratorActor` process and its engine       -> the pool replaces it
    reward_worker  a `ray::RewardWorker` process                         -> Ray restarts it, re-runs its chunk
    verifier       a math-verify process of a reward worker's sandbox    -> the sandbox replaces it
    learner        a `ray::Learner` process (one DeepSpeed rank)         -> learners restart from the checkpoint
    driver         the job itself, with its Ray and engines (SIGKILL)    -> `accordion train --resume`

`audit` needs only the run folder: `trained.jsonl` (what each step trained; a step redone after a crash
appends again and its last line counts), `state.json` (the data ledger) and the MLflow store.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.run_dir import TRAINED, read_state

KINDS = ("generator", "reward_worker", "verifier", "learner", "driver")
ACTOR_TITLES = {"generator": "ray::GeneratorActor", "reward_worker": "ray::RewardWorker", "learner": "ray::Learner"}


def victims(driver_pid: int, kind: str) -> list[Any]:
    """Live processes of `kind` under the driver (psutil.Process objects; the driver itself for `driver`)."""
    import psutil

    root = psutil.Process(driver_pid)
    if kind == "driver":
        return [root]
    tree = root.children(recursive=True)

    def titled(title: str) -> list[Any]:
        found = []
        for p in tree:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if cmd and cmd[0].startswith(title):
                found.append(p)
        return found

    if kind == "verifier":  # reward worker -> forkserver -> one process per verifier slot
        return [v for w in titled(ACTOR_TITLES["reward_worker"]) for fs in children(w) for v in children(fs)]
    return titled(ACTOR_TITLES[kind])


def children(process: Any, recursive: bool = False) -> list[Any]:
    """Its children (none once it is gone: the job's processes come and go under the chaos)."""
    import psutil

    try:
        return process.children(recursive=recursive)
    except psutil.Error:
        return []


def kill_tree(process: Any) -> None:
    """SIGKILL a process and everything under it (an actor's engine would otherwise outlive it)."""
    import psutil

    for p in [process, *children(process, recursive=True)]:
        try:
            p.kill()
        except psutil.Error:
            pass


def saved_step(run_dir: Path) -> int:
    return (read_state(run_dir) or {}).get("step", 0)


def session_gone(session: int, timeout_s: float) -> bool:
    """Whether every process of a session (a job started with `start_new_session`) is gone within the time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(session, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def audit(run_dir: Path) -> dict[str, Any]:
    """Exactly-once accounting of a finished run, from its records. The lineage is the last line of each
    step; positions in superseded lines were redone (re-issued), not duplicated."""
    lines = [json.loads(line) for line in (run_dir / TRAINED).read_text().splitlines() if line.strip()]
    state = read_state(run_dir)
    lineage: dict[int, dict] = {}
    for line in lines:
        lineage[line["step"]] = line
    steps = sorted(s for s in lineage if s <= state["step"])
    trained = [i for s in steps for i in lineage[s]["trained"]]
    aside = [i for s in steps for i in lineage[s]["set_aside"]]
    used = trained + aside
    superseded = [line for line in lines if lineage.get(line["step"]) is not line or line["step"] > state["step"]]
    owed = set(state["ledger"]["retry"])
    issued = set(range(state["ledger"]["next_index"]))
    return {
        "steps": state["step"],
        "continuous": steps == list(range(1, state["step"] + 1)),
        "trained_groups": len(trained),
        "set_aside": len(aside),
        "duplicated": len(used) - len(set(used)) + len(set(used) & owed),
        "lost": len(issued - set(used) - owed),
        "reissued": sum(lineage[s]["reissued"] for s in steps) + sum(len(line["trained"]) + len(line["set_aside"])
                                                                     for line in superseded),
        "mlflow_steps_logged_twice": mlflow_repeats(run_dir, state["mlflow_run_id"]),
    }


def mlflow_repeats(run_dir: Path, run_id: str, key: str = "train/loss") -> int:
    """Steps of `key` that the MLflow run holds more than once (a step redone after a kill is logged again)."""
    from collections import Counter

    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}").get_metric_history(run_id, key)
    return sum(1 for n in Counter(m.step for m in history).values() if n > 1)


class Soak:
    """`accordion train` in a subprocess (its own session, so a driver kill takes its Ray along), killed
    and resumed by `run`."""

    def __init__(self, train_args: list[str], run_dir: Path, log: Path):
        self.train_args, self.run_dir, self.log = train_args, run_dir, log
        self.kills = {kind: 0 for kind in KINDS}
        self.resumes = 0
        self.recovery_s: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.proc: subprocess.Popen | None = None

    def start(self, resume: bool, extra: list[str] = ()) -> None:
        args = ["--resume", str(self.run_dir), *extra] if resume else [*self.train_args, *extra]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private local Ray each time
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli", "train", *args], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, cwd=Path(__file__).resolve().parents[1])

    def stop_driver(self) -> None:
        """SIGKILL the driver's whole session and wait until none of it is left."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not session_gone(self.proc.pid, 60):
            raise RuntimeError(f"processes of the killed driver (session {self.proc.pid}) outlived it by 60 s")

    def wait_for_step_after(self, step: int, timeout_s: float) -> float:
        """Seconds until the run checkpoints a step beyond `step`; raises if the job exits or stalls."""
        start = time.monotonic()
        while saved_step(self.run_dir) <= step:
            if self.proc.poll() is not None:
                raise RuntimeError(f"accordion train exited with {self.proc.returncode} (log: {self.log}):\n"
                                   f"{tail(self.log)}")
            if time.monotonic() - start > timeout_s:
                raise RuntimeError(f"no step checkpointed beyond {step} within {timeout_s:.0f} s (log: {self.log}):\n"
                                   f"{tail(self.log)}")
            time.sleep(0.2)
        return time.monotonic() - start

    def kill(self, kind: str, rng: Any) -> bool:
        """Kill one random process of `kind`; False if the job has none right now."""
        import psutil

        try:
            found = victims(self.proc.pid, kind)
        except psutil.Error:
            return False
        if not found:
            return False
        if kind == "driver":
            self.stop_driver()
            self.start(resume=True)
            self.resumes += 1
        else:
            kill_tree(rng.choice(found))
        self.kills[kind] += 1
        return True


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""
