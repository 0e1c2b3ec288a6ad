"""Supervised cold start on step traces: the same `LearnerGroup`, loss on response tokens only.

A trace is trained either whole (Unfold: prompt = question, response = the full trace) or as its
Fold segments (prompt = question + the folded context the generator would show, response = one
segment), exactly the (context, segment) pairs of `tasks.format.fold_segments`, so training and Fold
rollouts see the same token sequences. With `sft.budgets` each trace is compressed to a drawn ratio
and tagged with its budget token (Extra-CoT mixed-ratio SFT); with `sft.policy_fraction` some of them
are asked with `<COMP_AUTO>` and answer with their budget token first (policy-mode warm-up). With
`sft.data` the traces and their budgets come from a step-trace file instead (`accordion compress apply`).

The data stream is a pure function of (seed, position): resuming needs only the position.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable

from configs import ConfigError
from configs.schema import Config, LearnerConfig, SFTConfig, TaskConfig
from learners.batch import Sample
from tasks.arithmetic import Problem, gold_trace, lax_steps, problems
from tasks.dataset import epoch_order, read_traces
from tasks.format import fold_segments, parse_trace, prompt_ids

CHECKPOINT = "checkpoint"


def trace_samples(tokenizer, problem: Problem, fold: bool, lax_fraction: float = 0.0, seed: int = 0,
                  budget: int | None = None, policy: bool = False) -> list[Sample]:
    """The gold trace of `problem` at `budget` (`response_samples`)."""
    trace = gold_trace(problem, lax_steps(problem, lax_fraction, seed), budget or 100, budget)
    return response_samples(tokenizer, problem.question, trace, fold, budget, policy)


def response_samples(tokenizer, question: str, response: str, fold: bool, budget: int | None = None,
                     policy: bool = False) -> list[Sample]:
    """A step-trace response as one Unfold sample or one sample per Fold segment, tagged with `budget`'s
    token. `policy`: the prompt ends with `<COMP_AUTO>` and the response opens with the budget token, as the
    model writes it in policy mode (the first Fold context is then empty, `actors.fold.first_context`)."""
    steps, answer = parse_trace(response)
    pairs = fold_segments(steps, answer, budget)
    if policy:
        pairs[0] = ("", pairs[0][0] + pairs[0][1])
    if not fold:  # the generator's Unfold prompt already holds the first context (`<think>`)
        pairs = [(pairs[0][0], "".join(segment for _, segment in pairs))]
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    asked = "auto" if policy else budget
    samples = [Sample(prompt_ids(tokenizer, question, asked, context), encode(segment)) for context, segment in pairs]
    last = samples[-1]
    samples[-1] = Sample(last.prompt_ids, last.response_ids + [tokenizer.eos_token_id])
    return samples


class TraceStream:
    """Training traces in a seeded order: trace i's problem (or `sft.data` record), Fold/Unfold choice and
    budget depend only on (seed, i), so position i is all a resumed run needs."""

    def __init__(self, tokenizer, task: TaskConfig, sft: SFTConfig, split: str = "train"):
        self.tokenizer, self.task, self.sft = tokenizer, task, sft
        if sft.data:
            self.items = file_traces(sft, split)
        else:
            self.items = problems(task, split)

    def sample(self, i: int) -> list[Sample]:
        epoch, k = divmod(i, len(self.items))
        item = self.items[epoch_order(self.task.seed, epoch, len(self.items))[k]]
        rng = random.Random(f"{self.task.seed}:trace:{i}")
        fold = rng.random() < self.sft.fold_fraction
        if self.sft.data:
            budget = item["budget"]
            policy = budget is not None and rng.random() < self.sft.policy_fraction
            return response_samples(self.tokenizer, item["question"], item["response"], fold, budget, policy)
        budget = rng.choice(self.sft.budgets) if self.sft.budgets else None
        policy = budget is not None and rng.random() < self.sft.policy_fraction
        return trace_samples(self.tokenizer, item, fold, self.task.lax_fraction, self.task.seed, budget, policy)

    def batch(self, position: int, traces: int) -> list[Sample]:
        return [s for i in range(position, position + traces) for s in self.sample(i)]


def file_traces(sft: SFTConfig, split: str) -> list[dict]:
    """The `sft.data` records with a budget of `sft.budgets` (all when empty); the last `sft.eval_traces`
    are the `eval` split."""
    rows = [r for r in read_traces(sft.data) if not sft.budgets or r["budget"] in sft.budgets]
    if len(rows) <= sft.eval_traces:
        raise ConfigError(f"sft.data {sft.data}: {len(rows)} traces with budgets {list(sft.budgets) or 'any'}; "
                          f"need more than sft.eval_traces={sft.eval_traces}")
    return rows[:-sft.eval_traces] if split == "train" else rows[-sft.eval_traces:]


def eval_loss(group, samples: list[Sample]) -> float:
    """Token-mean NLL of `samples` under the current weights."""
    logprobs = group.recompute_logprobs(samples)
    return -sum(sum(lp) for lp in logprobs) / sum(len(lp) for lp in logprobs)


def sft_learner(cfg: Config) -> LearnerConfig:
    """The learner settings of SFT: `sft.optim`, no reference model (the NLL loss has no KL term), one pass
    per batch (its schedule counts steps)."""
    return cfg.learner.model_copy(update={"optim": cfg.sft.optim, "kl_coef": 0.0, "ppo_epochs": 1})


def run_sft(cfg: Config, out: Path, log: Callable[[dict[str, float], int], None],
            state: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """Train until `sft.steps`, resuming from `out/checkpoint` when it exists; returns the checkpoint
    folder, the training state saved in it, and the learners' precision and machine. `log(metrics,
    step)` records progress; `state` is stored in every checkpoint (e.g. the MLflow run id)."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from learners.group import LearnerGroup
    from models.build import resolve_model

    sft = cfg.sft
    model_path = resolve_model(cfg.model, out)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = TraceStream(tokenizer, cfg.task, sft)
    held_out = TraceStream(tokenizer, cfg.task, sft, split="eval").batch(0, sft.eval_traces)
    # Nothing else runs during SFT: the ranks share every core of this machine between them.
    threads = None if cfg.cluster.learner_gpus else max(1, len(os.sched_getaffinity(0)) // cfg.cluster.learners)
    group = LearnerGroup(model_path, sft_learner(cfg), ranks=cfg.cluster.learners, cpus=cfg.cluster.learner_cpus,
                         gpus=cfg.cluster.learner_gpus, threads=threads)
    checkpoint = out / CHECKPOINT
    record = {"data_position": 0, "step": 0, **(state or {})}
    try:
        if (checkpoint / "training_state.json").is_file():
            record = {**record, **group.load(checkpoint)}
        step, position = record["step"], record["data_position"]
        saved = step
        print(f"sft: {group.ranks} learner rank(s) in {group.precision} ({group.machine})")
        with tqdm(total=sft.steps, initial=step, desc=f"sft ({group.precision})", unit="step", dynamic_ncols=True) as bar:
            while step < sft.steps:
                metrics = group.train_step(train.batch(position, sft.traces_per_step), "sft")
                position += sft.traces_per_step
                step += int(metrics["step_applied"])
                metrics = {f"train/{k}": v for k, v in metrics.items()} | {"train/traces": position}
                if step % sft.eval_every == 0 or step == sft.steps:
                    metrics["eval/loss"] = eval_loss(group, held_out)
                log(metrics, step)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['train/tokens'] / metrics['train/time_s']:.0f}")
                bar.update(1)
                if step % sft.save_every == 0 or step == sft.steps:
                    record.update(step=step, data_position=position)
                    group.save(checkpoint, record)
                    saved = step
        if saved != step:
            group.save(checkpoint, record | {"step": step, "data_position": position})
    finally:
        group.shutdown()
    described = {"precision": group.precision, "machine": group.machine}
    return checkpoint, json.loads((checkpoint / "training_state.json").read_text()), described
