"""`accordion bench trl`: the job both arms run (our config -> GRPOConfig), the TRL arm's prompt and reward
(the same tokens and the same answer check as ours), the figures and the JSON; and one tiny run of the whole
benchmark (system; needs the `bench` extra: `pip install -e '.[bench]'`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benches.trl import (
    QUIET_EVAL, arm_figures, assemble, failure_reason, figures, grpo_kwargs, job_config, job_overrides, prompt_text,
    reward_items,
)
from configs import LOCAL
from configs.schema import RewardConfig, TaskConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    from models.build import tokenizer_corpus
    from models.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_corpus())


def test_the_job_is_unfold_with_the_plain_reward_and_the_evaluation_budget():
    cfg, overrides = job_config(str(LOCAL), ["rl.mode=fold", "rl.prompts_per_step=4"], steps=3)
    assert (cfg.rl.mode, cfg.reward.name, cfg.rl.budgets, cfg.rl.steps) == ("unfold", "accordion", (100,), 3)
    assert cfg.rl.prompts_per_step == 4 and overrides[:2] == ["rl.mode=fold", "rl.prompts_per_step=4"]
    assert job_overrides(None, 5) == ["rl.mode=unfold", "reward.name=accordion", "rl.budgets=[]", "rl.steps=5",
                                      "learner.ppo_epochs=1"]
    assert cfg.learner.ppo_epochs == 1  # the demo's 2 passes: one optimizer step per batch, as TRL's
    assert "eval.every=0" in QUIET_EVAL


def test_grpo_config_mirrors_our_config():
    cfg, _ = job_config(str(LOCAL), ["learner.kl_coef=0.0"], steps=7)
    kw = grpo_kwargs(cfg, "out", "transformers", "fp32")
    assert kw["max_steps"] == 7 and kw["num_generations"] == cfg.rl.samples_per_prompt == 8
    # one generation of prompts x samples and one optimizer step over it
    assert kw["per_device_train_batch_size"] == 64 and kw["gradient_accumulation_steps"] == kw["steps_per_generation"] == 1
    assert kw["num_iterations"] == 1 and kw["shuffle_dataset"] is False
    assert (kw["max_completion_length"], kw["temperature"], kw["top_p"]) == (1536, 1.0, 1.0)
    assert (kw["learning_rate"], kw["adam_beta1"], kw["max_grad_norm"]) == (2e-4, 0.9, 1.0)
    assert (kw["beta"], kw["epsilon"], kw["epsilon_high"], kw["loss_type"]) == (0.0, 0.2, 0.28, "dapo")
    assert kw["scale_rewards"] == "none" and kw["mask_truncated_completions"] is True
    assert kw["bf16"] is False and kw["use_vllm"] is False and kw["gradient_checkpointing"] is False and kw["use_cpu"]
    assert kw["vllm_importance_sampling_clip_max"] == cfg.learner.tis_cap and kw["report_to"] == "none"

    seq, _ = job_config(str(LOCAL), ["learner.loss_aggregation=sequence_mean", "rl.scale_advantage_by_std=true"], 2)
    kw = grpo_kwargs(seq, "out", "vllm", "bf16", micro_batches=4)
    assert (kw["loss_type"], kw["scale_rewards"], kw["bf16"], kw["use_vllm"]) == ("grpo", "group", True, True)
    assert kw["per_device_train_batch_size"] == 16 and kw["gradient_accumulation_steps"] == kw["steps_per_generation"] == 4
    with pytest.raises(ValueError, match="do not divide"):
        grpo_kwargs(cfg, "out", "vllm", "fp32", micro_batches=3)


def test_grpo_config_accepts_the_mapping(tmp_path):
    trl = pytest.importorskip("trl")
    cfg, _ = job_config(str(LOCAL), [], steps=2)
    args = trl.GRPOConfig(**grpo_kwargs(cfg, tmp_path, "transformers", "bf16", micro_batches=2))
    assert args.generation_batch_size == 64 and args.num_generations == 8 and args.bf16


def test_trl_is_prompted_with_our_tokens(tokenizer):
    from actors.fold import first_context
    from tasks.format import prompt_ids

    from tasks.arithmetic import problems

    question = problems(TaskConfig(), "eval")[0].question
    text = prompt_text(tokenizer, question, 100)
    assert text.endswith("<|assistant|><COMP_100><think>") and question in text  # added tokens swallow the space
    assert tokenizer(text)["input_ids"] == prompt_ids(tokenizer, question, 100, first_context(100))


def test_the_reward_is_our_answer_check(tokenizer):
    from actors.fold import first_context
    from rewards.scorer import Scorer
    from tasks.arithmetic import gold_trace, problems

    problem = problems(TaskConfig(max_steps=3), "eval")[0]
    trace = gold_trace(problem, (False,) * len(problem.ops), 100, 100)
    completion = trace[len(first_context(100)):]  # what the model generates after the prompt's `<COMP_100> <think>`
    ids = tokenizer.encode(completion, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    wrong = tokenizer.encode(completion.replace(f"\\boxed{{{problem.answer}}}", f"\\boxed{{{problem.answer + 1}}}"),
                             add_special_tokens=False)
    completions = [ids + [eos], wrong + [eos], ids[:-3], tokenizer.encode(" 5", add_special_tokens=False) + [eos]]
    items = reward_items(tokenizer, completions, [problem.question] * 4, [str(problem.answer)] * 4, 100, [eos])
    assert items[0]["response"].startswith("<COMP_100> <think>") and items[0]["budget"] == 100
    assert [i["status"] for i in items] == ["answered", "answered", "unfinished", "malformed"]
    with Scorer(RewardConfig(name="accordion", processes=1)) as scorer:
        scored = scorer.score(items)
    assert [s["reward"] for s in scored] == [1.0, 0.0, 0.0, 0.0]
    assert scored[0]["correct"] and not scored[1]["correct"]


def test_figures_ratio_and_json():
    ours = arm_figures([2.0, 1.0, 1.0], 64, [1000, 500, 500], [64, 64, 32])
    assert ours["samples_per_s"] == pytest.approx(48.0) and ours["tokens_per_s"] == pytest.approx(500.0)
    assert ours["step_s"] == pytest.approx(4 / 3) and ours["steady_samples_per_s"] == pytest.approx(64.0)
    assert ours["informative_samples_per_s"] == pytest.approx(40.0)
    trl = arm_figures([8.0, 8.0], 64, [1000, 1000], [16, 0])
    assert "steady_samples_per_s" not in trl and trl["samples_per_s"] == pytest.approx(8.0)
    protocol = {"questions": 64, "samples": 4, "temperature": 1.0}
    job = {"steps": 3, "prompts_per_step": 8, "samples_per_prompt": 8}
    result = assemble(ours, trl, {"ours": 0.75, "trl": 0.7, "start": 0.6}, job,
                      {"trl_generation": "transformers", "precision": "fp32", "protocol": protocol})
    assert result["ratio"] == pytest.approx(6.0) and result["tokens_ratio"] == pytest.approx(500 / 125)
    assert result["informative_ratio"] == pytest.approx(40.0 / 1.0)
    for key in ("ours_samples_per_s", "trl_samples_per_s", "ratio", "ours_accuracy", "trl_accuracy", "trl_generation"):
        assert key in result
    assert result["targets"] == {"ratio_at_least_3x": True, "accuracy_no_worse": True}
    assert result["accuracy_stderr"]["ours"] == pytest.approx((0.75 * 0.25 / 256) ** 0.5)
    json.dumps(result)
    worse = assemble(trl, ours, {"ours": 0.5, "trl": 0.7}, job, {"protocol": protocol})
    assert worse["targets"] == {"ratio_at_least_3x": False, "accuracy_no_worse": False}
    rows = figures(result)
    assert [r["ratio"] for r in rows] == pytest.approx([6.0, 40.0, 4.0, 0.75 / 0.7])


def test_failure_reason_is_the_last_exception_line():
    log = "loading\nTraceback (most recent call last):\n  File x\nValueError: first\nmore\nRuntimeError: vLLM died\n\n"
    assert failure_reason(log) == "RuntimeError: vLLM died"
    assert failure_reason("[rank0]: AttributeError: no weight_loader\n  0%|   | 0/5 [00:03<?, ?it/s]\n") == \
        "AttributeError: no weight_loader"
    assert failure_reason("just output\nlast line\n") == "last line"
    assert failure_reason("") == "no output"


TINY = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.intermediate_size=128", "model.max_position_embeddings=512", "task.max_steps=2",
        "generator.segment_tokens=48", "generator.max_segments=4", "generator.max_tokens=96",
        "generator.max_prompt_tokens=256", "generator.max_model_len=512", "rl.prompts_per_step=2",
        "rl.samples_per_prompt=2", "reward.processes=1", "learner.precision=fp32", "generator.dtype=float32",
        "rl.mask_truncated=false"]  # an untrained model's answers all hit the limit: train on them anyway


@pytest.mark.system
def test_tiny_benchmark_end_to_end(tmp_path):
    pytest.importorskip("trl")
    model = tmp_path / "model"
    subprocess.run([sys.executable, "-m", "cli", "init-model", "--out", str(model), *TINY], cwd=ROOT, check=True)
    out = tmp_path / "trl.json"
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", "trl", "--out", str(out), "--steps", "2",
                           "--model", str(model), "--trl-generation", "transformers", "--eval-questions", "4",
                           "--eval-samples", "2", "--no-eval-start", "--timeout-s", "600",
                           *TINY, f"run_dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("ours_samples_per_s", "trl_samples_per_s", "ratio", "ours_accuracy", "trl_accuracy",
                "ours_informative_samples_per_s", "trl_informative_samples_per_s"):
        assert isinstance(result[key], float), key
    assert result["trl_generation"] == "transformers" and result["precision"] == "fp32"
    assert result["ours"]["steps"] == result["trl"]["steps"] == 2 and result["samples_per_step"] == 4
    assert result["protocol"]["questions"] == 4 and result["protocol"]["samples"] == 2
    assert result["figures"][0]["ratio"] == pytest.approx(result["ratio"]) and result["cpu"]
