"""Cluster mode as users run it: `ray start --head` with token auth, then `ray job submit` of
`python -m cli train --config configs/cluster.yaml`, scaled down by overrides to this machine."""
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.schema import ModelConfig
from models.build import build_tiny_model

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    # --block keeps the cluster's processes under this one, so the teardown stops exactly them.
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}",
         "--num-cpus=2", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while subprocess.run([f"{bin_dir}/ray", "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        assert head.poll() is None and time.time() < deadline, "ray head did not come up"
        time.sleep(2)
    yield address, env
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)


def test_ray_job_submit_runs_a_short_training_job(ray_head, tmp_path):
    address, env = ray_head
    model = build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                         intermediate_size=128, max_position_embeddings=512), tmp_path / "model")
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}", f"model.path={model}", "task.name=arithmetic",
        "cluster.generators=1", "cluster.generator_cpus=1", "cluster.generator_gpus=0",
        "cluster.learners=2", "cluster.learner_cpus=0.5", "cluster.learner_gpus=0",
        "cluster.reward_workers=1", "cluster.reward_cpus=0",
        "generator.dtype=float32", "generator.segment_tokens=24", "generator.max_segments=3",
        "generator.max_prompt_tokens=256", "generator.max_summary_tokens=64", "generator.max_tokens=64",
        "generator.max_model_len=512", "generator.max_num_seqs=64", "generator.enforce_eager=true",
        "learner.zero_stage=2", "learner.precision=fp32", "learner.micro_batch_tokens=4096", "learner.max_length=512",
        "reward.processes=1", "rl.steps=2", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
        "eval.every=0", "eval.questions=2", "eval.samples=1", "rl.bucket_mb=1",
    ]
    submit = [str(Path(env["PATH"].split(":")[0]) / "ray"), "job", "submit", "--address", address,
              "--working-dir", str(ROOT), "--", "python", "-m", "cli", "train", "--config", "configs/cluster.yaml",
              *overrides]
    for _ in range(10):  # the head answers before its job agent is up: "No available agent to submit job"
        proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in proc.stdout + proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout + proc.stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["eval/fold_accuracy"] >= 0.0
