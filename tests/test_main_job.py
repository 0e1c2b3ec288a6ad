"""The main job as a user runs it: `accordion train` on the embedded default (configs/local.yaml, scaled down),
interrupted with Ctrl-C during SFT and during RL, resumed each time, finishing with report.json.

Ctrl-C is what a terminal sends: SIGINT to the whole foreground process group, so Ray's and vLLM's
processes get it too.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.soak import session_gone
from evals.traces import read_records
from models.prepare import ties_embeddings

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
    "model.intermediate_size=128", "model.max_position_embeddings=512",
    "task.max_steps=2", "task.eval_size=8", "sft.traces_per_step=8", "sft.eval_traces=4", "sft.save_every=2",
    "generator.segment_tokens=48", "generator.max_segments=4", "generator.max_tokens=160",
    "generator.max_prompt_tokens=256", "generator.max_model_len=512",
    "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.save_every=1", "rl.bucket_mb=1",
    "reward.processes=1", "eval.questions=4", "eval.samples=2", "eval.every=1", "eval.periodic_questions=2",
    "eval.periodic_samples=1", "eval.budget_questions=2", "eval.budget_samples=1", "eval.budgets=[40,auto]",
    "eval.harder_steps=[3,3]", "eval.harder_questions=2", "eval.harder_samples=1",
]


def start(args, log):
    return subprocess.Popen([sys.executable, "-m", "cli", "train", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(path: Path, text: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"exited early:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not seen in {timeout} s:\n{path.read_text()[-3000:]}"
        time.sleep(0.5)


def ctrl_c(proc, log_path: Path) -> float:
    """SIGINT to the process group; returns seconds until the job exited. Every process of the group
    (Ray, vLLM, DeepSpeed ranks, verifier processes) must be gone too."""
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running 60 s after Ctrl-C:\n{log_path.read_text()[-3000:]}")
    took = time.monotonic() - sent
    if not session_gone(proc.pid, 30):
        pytest.fail("processes of the job outlived it by 30 s")
    return took


def test_ctrl_c_during_sft_and_rl_then_resume_to_the_report(tmp_path):
    run_dir = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = start(["--config", "configs/local.yaml", f"run_dir={run_dir}", *SMALL, "sft.steps=400", "rl.steps=3"], log)
        wait_for(log_path, "| 3/400", proc, timeout=240)
        took = ctrl_c(proc, log_path)
    out = log_path.read_text()
    assert proc.returncode == 130, out[-3000:]
    assert took < 30 and f"continue with: accordion train --resume {run_dir}" in out
    saved = json.loads((run_dir / "sft" / "checkpoint" / "training_state.json").read_text())
    assert saved["step"] >= 2
    # Steps go on landing between the progress line and the interrupt (CI once saved step 8 after "3/400").
    sft_steps = f"sft.steps={saved['step'] + 2}"

    # Resumed with fewer SFT steps: SFT continues from its checkpoint, then RL starts; Ctrl-C again there.
    with open(log_path, "w") as log:
        proc = start(["--resume", str(run_dir), sft_steps], log)
        wait_for(log_path, "rl (", proc, timeout=400)
        wait_for(log_path, "| 1/3", proc, timeout=240)
        took = ctrl_c(proc, log_path)
    out = log_path.read_text()
    assert proc.returncode == 130 and took < 30, out[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] >= 1 and Path(state["checkpoint"]).is_dir()

    with open(log_path, "w") as log:
        proc = start(["--resume", str(run_dir), sft_steps], log)
        assert proc.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["sft"]["steps"] == saved["step"] + 2 and report["precision"] == "fp32"  # the demo's, on every CPU
    # SFT'd tied with the budget choice weighted (the demo's config): RL trained the untied copy.
    final_checkpoint = json.loads((run_dir / "state.json").read_text())["checkpoint"]
    assert ties_embeddings(run_dir / "sft" / "checkpoint") and not ties_embeddings(final_checkpoint)
    assert (run_dir / "sft" / "untied" / "config.json").is_file()
    assert [e["step"] for e in report["rl_evals"]] == [1, 2, 3]
    assert {"unfold_accuracy", "fold_accuracy", "unfold_peak_context", "fold_peak_context"} <= set(report["final"])
    assert set(report["budgets"]) == {"40", "auto", "100"} and "ratio" in report["budgets"]["40"]
    assert report["harder"]["steps"] == [3, 3] and "targets" in report
    # Policy mode on every evaluation's own protocol, r-hat against its Fold cell; its targets judged on the final one.
    final = report["final"]
    assert all("ratio" in e["auto"] for e in report["rl_evals"])
    assert report["targets"]["auto_accuracy_loss"]["value"] == round(final["fold_accuracy"] - final["auto"]["accuracy"], 4)
    assert "Targets" in log_path.read_text()

    # What a user looks at: the last evaluation's trajectories, their viewer and the plots, also in MLflow.
    traces = read_records(run_dir / "evals" / "step_3.jsonl")
    assert {t["mode"] for t in traces} == {"fold", "unfold"} and {t["step"] for t in traces} == {3}
    assert {t["budget"] for t in traces if t["mode"] == "fold"} == {40, "auto", 100}  # the budget sweep's too
    assert all(t["source"] == "rollout" and t["reward"] is not None for t in read_records(run_dir / "samples" / "step_3.jsonl"))
    assert traces[0]["question"] in (run_dir / "view.html").read_text()
    assert {"gap.png", "budgets.png", "rewards.png"} <= {p.name for p in (run_dir / "plots").glob("*.png")}
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    artifacts = {a.path for folder in (None, "plots") for a in client.list_artifacts(state["mlflow_run_id"], folder)}
    assert {"view.html", "plots/gap.png", "plots/budgets.png"} <= artifacts
    assert f"{run_dir / 'view.html'}" in log_path.read_text()

    # The same evaluation as a command, on the job's final checkpoint.
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "cli", "eval", *SMALL, "--model", state_checkpoint(run_dir), "--out",
                           str(out), "--questions", "2", "--samples", "2", "--budgets", "40", "100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["cells"]) == {"unfold@40", "unfold@100", "fold@40", "fold@100"}
    assert result["protocol"]["samples"] == 2 and "ratio" in result["budgets"]["40"]
    assert "fold@40" in done.stdout
    trajectories = read_records(tmp_path / "eval.traces.jsonl")  # 4 cells x 2 questions x (2 samples + greedy)
    assert len(trajectories) == 24 and {(t["mode"], t["budget"]) for t in trajectories} == {
        (m, b) for m in ("unfold", "fold") for b in (40, 100)}
    assert all(isinstance(t["correct"], bool) and t["answer"] for t in trajectories)


def state_checkpoint(run_dir: Path) -> str:
    return json.loads((run_dir / "state.json").read_text())["checkpoint"]
