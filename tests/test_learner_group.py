"""Two real DeepSpeed ranks (gloo) in real Ray actors on a tiny model: one Ray start for the module."""
import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from configs.schema import LearnerConfig, ModelConfig, OptimConfig, TaskConfig
from learners.batch import BatchError
from learners.learner import NonFiniteLossError, lr_factor
from learners.sft import trace_samples
from models.build import build_tiny_model
from models.weights import checksum, from_bucket
from tasks.arithmetic import problems

pytestmark = pytest.mark.system

CFG = LearnerConfig(precision="fp32", micro_batch_tokens=600, optim=OptimConfig(lr=3e-3), max_length=400)
STEPS = 3
results: dict = {}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def batch(model_dir):
    """Unfold and Fold samples of different lengths, so ranks get unequal counts for equal tokens."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    task = TaskConfig(min_steps=1, max_steps=4, eval_size=6)
    return [s for i, p in enumerate(problems(task, "eval")) for s in trace_samples(tok, p, fold=i % 2 == 1)]


def group(model_dir, cfg):
    from learners.group import LearnerGroup

    return LearnerGroup(model_dir, cfg, ranks=2, cpus=0.5)


def hf_logprobs(model, batch):
    out = []
    with torch.no_grad():
        for s in batch:
            ids = torch.tensor([s.prompt_ids + s.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            p = len(s.prompt_ids)
            out.append(logp[p - 1 : -1].gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1))
    return out


def test_zero2_trains_gathers_saves_and_rejects_bad_input(ray_local, model_dir, batch, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "step2"
    learners = group(model_dir, CFG)
    losses = []
    for step in range(STEPS):
        if step == 2:
            learners.save(ckpt, {"data_position": 2})
        metrics = learners.train_step(batch, "sft")
        losses.append(metrics["loss"])
    results["zero2"] = losses
    assert losses[-1] < losses[0] - 0.1
    assert metrics["tokens"] == sum(len(s.response_ids) for s in batch) and metrics["grad_norm"] > 0

    # Gathered weights give a fresh transformers model the learner's exact logprobs.
    state = learners.state_dict()
    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    for mine, theirs in zip(learners.recompute_logprobs(batch), hf_logprobs(fresh, batch)):
        assert torch.allclose(torch.tensor(mine), theirs, atol=1e-5)
    learners.open_sync("objstore")  # the sender puts the buckets in the object store
    sent = learners.send_weights(bucket_bytes=64 << 10)
    buckets, digest = ray.get(sent.refs), sent.checksum
    synced = {k: v for b in buckets for k, v in from_bucket(b).items()}
    assert len(buckets) > 1 and checksum(synced.items()) == digest == checksum(state.items())

    # The checkpoint is a plain Hugging Face folder.
    assert AutoModelForCausalLM.from_pretrained(ckpt) and AutoTokenizer.from_pretrained(ckpt)

    with pytest.raises(BatchError, match="empty batch"):
        learners.train_step([], "sft")
    long = {"prompt_ids": [1] * 300, "response_ids": [2] * 200}
    with pytest.raises(BatchError, match="sample 1: 500 tokens exceeds learner.max_length 400"):
        learners.train_step([batch[0], long], "sft")
    with pytest.raises(BatchError, match="sample 0: advantage is nan"):
        learners.train_step([{**vars(batch[0]), "advantage": float("nan")}], "policy")
    # A finite advantage whose loss overflows in one micro-batch: refused, no weight changes.
    huge = [{**vars(s), "advantage": 3e38 if i == 0 else 1.0} for i, s in enumerate(batch)]
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3 in micro-batch.*not applied"):
        learners.train_step(huge, "policy")
    assert checksum(learners.state_dict().items()) == checksum(state.items())

    # Loading the step-2 checkpoint (weights, optimizer, schedule) reproduces step 3's loss exactly.
    # (The sft command test below resumes in fresh processes.)
    assert learners.load(ckpt) == {"step": 2, "world_size": 2, "zero_stage": 2, "data_position": 2}
    assert learners.train_step(batch, "sft")["loss"] == pytest.approx(losses[2], rel=1e-6)
    learners.shutdown()


def test_zero3_gives_the_same_losses_and_skips_a_nonfinite_batch(ray_local, model_dir, batch):
    learners = group(model_dir, CFG.model_copy(update={"zero_stage": 3, "on_nonfinite": "skip"}))
    losses = [learners.train_step(batch, "sft")["loss"] for _ in range(STEPS)]
    assert losses == pytest.approx(results["zero2"], rel=1e-4)
    before = checksum(learners.state_dict().items())
    metrics = learners.train_step([{**vars(s), "advantage": 3e38} for s in batch], "policy")
    assert metrics["skipped_samples"] == len(batch) and metrics["step_applied"] == 0.0
    assert checksum(learners.state_dict().items()) == before
    # A policy step with ordinary advantages and rollout logprobs still trains afterwards.
    logprobs = learners.recompute_logprobs(batch)
    rl = [{**vars(s), "advantage": 1.0 if i % 2 else -1.0, "rollout_logprobs": lp}
          for i, (s, lp) in enumerate(zip(batch, logprobs))]
    metrics = learners.train_step(rl, "policy")
    assert metrics["step_applied"] == 1.0 and metrics["clip_fraction"] == 0.0
    learners.shutdown()


def test_zero0_one_rank_matches_and_its_checkpoint_resumes(ray_local, model_dir, batch, tmp_path):
    """Stage 0 (no sharding) is what the embedded default runs on one rank: ZeRO-2's bookkeeping cost
    a 0.9 M-parameter model ~20 % of its step time (`accordion bench sft`)."""
    from learners.group import LearnerGroup

    learners = LearnerGroup(model_dir, CFG.model_copy(update={"zero_stage": 0}), ranks=1, cpus=1)
    metrics = [learners.train_step(batch, "sft") for _ in range(2)]
    assert [m["loss"] for m in metrics] == pytest.approx(results["zero2"][:2], rel=1e-4)
    assert all(m["grad_norm"] > 0 for m in metrics)  # DeepSpeed gives none at stage 0 in fp32
    learners.save(tmp_path / "ckpt", {"data_position": 2})
    expected = learners.train_step(batch, "sft")["loss"]
    assert learners.load(tmp_path / "ckpt")["zero_stage"] == 0
    assert learners.train_step(batch, "sft")["loss"] == pytest.approx(expected, rel=1e-6)
    learners.shutdown()


def test_sft_command_logs_to_mlflow_and_resumes(ray_local, tmp_path, monkeypatch):
    import json

    import mlflow

    from cli.sft import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
            "model.intermediate_size=128", "task.train_size=40", "task.max_steps=3", "sft.traces_per_step=4",
            "sft.eval_every=2", "sft.save_every=2", "sft.eval_traces=4", "cluster.learners=2"]
    out = tmp_path / "run"
    assert main(["--out", str(out), "--no-eval", *tiny, "sft.steps=3"], prog="accordion sft") == 0
    assert json.loads((out / "checkpoint" / "training_state.json").read_text())["data_position"] == 12
    # A longer schedule on the same folder resumes at step 3 and position 12, in the same MLflow run.
    assert main(["--out", str(out), "--no-eval", *tiny, "sft.steps=4"], prog="accordion sft") == 0
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 4 and state["data_position"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["wall_s"] > 0
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("accordion-rl").experiment_id])
    assert run.info.run_id == state["mlflow_run_id"] and run.data.params["sft.traces_per_step"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [2, 3, 4]


def test_kl_pulls_the_policy_back_to_its_starting_weights(ray_local, model_dir, batch):
    """`learner.kl_coef` > 0: each rank holds a frozen copy of the weights it started from, and with zero
    advantages the KL term alone moves the weights back towards them."""
    from learners.group import LearnerGroup

    cfg = CFG.model_copy(update={"zero_stage": 0, "kl_coef": 1.0})
    learners = LearnerGroup(model_dir, cfg, ranks=1, cpus=1)
    at_start = learners.train_step(batch, "policy")["kl"]
    for _ in range(2):
        learners.train_step(batch, "sft")
    kls = [learners.train_step(batch, "policy")["kl"] for _ in range(4)]
    learners.shutdown()
    assert at_start < 1e-6 < 1e-3 < kls[0]
    assert max(kls[2:]) < 0.5 * kls[0], kls  # Adam at lr 3e-3 overshoots a little: no strict descent


def test_ppo_epochs_step_once_per_pass_against_the_first_pass_and_share_the_batch_lr(ray_local, model_dir, batch):
    optim = OptimConfig(lr=3e-2, warmup_steps=1, decay_steps=4)
    learners = group(model_dir, CFG.model_copy(update={"ppo_epochs": 2, "optim": optim}))
    rl = [{**vars(s), "advantage": 1.0 if i % 2 else -1.0} for i, s in enumerate(batch)]
    first, second = learners.train_step(rl, "policy"), learners.train_step(rl, "policy")
    # Two optimizer steps per batch; the second pass's ratio is to the weights before the first, so it clips
    # (one pass never does: test_zero3_gives_the_same_losses_and_skips_a_nonfinite_batch).
    assert first["step_applied"] == second["step_applied"] == 2.0
    assert first["clip_fraction"] > 0 and first["tokens"] == sum(len(s.response_ids) for s in batch)
    # The schedule counts batches: the second batch runs at lr_factor(1), not at the fourth step's.
    assert first["lr"] == pytest.approx(3e-2) and second["lr"] == pytest.approx(3e-2 * lr_factor(1, optim))
    assert lr_factor(1, optim) != lr_factor(2, optim)
    learners.shutdown()
