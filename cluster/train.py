"""`accordion train` and `python -m cluster.train` (under `ray job submit`): the RL loop.

One training step, top to bottom (each line is one file):

    cluster/queue.py      admit(): a data position may start generating (staleness gate)
    actors/generator.py   GeneratorActor.rollout: a group of Fold/Unfold trajectories, every segment
                          stamped with the policy version that generated it
    rewards/worker.py     RewardPool: answers checked under a hard timeout, Accordion or CHRPO reward
    cluster/queue.py      put(group) ... take_batch(): whole groups, none staler than max_staleness
    learners/algos.py     group advantages, broadcast to every segment of a trajectory
    learners/group.py     LearnerGroup.train_step: one DeepSpeed optimizer step, version + 1
    cluster/weight_sync   LearnerGroup.weight_buckets -> GeneratorActor.update_weights

Generation runs concurrently with training (producer coroutines, one per admitted group); the
driver is a single asyncio loop, so queue and ledger need no locks.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.cli import add_config_arguments
from cluster.queue import Group, PromptLedger, RolloutQueue
from configs import ConfigError, load_config
from configs.schema import Config

STATE = "state.json"
RESOLVED_CONFIG = "config.yaml"


class Trainer:
    """Owns the actors of one RL job. Build with `await Trainer.start(cfg, run_dir, state)`."""

    def __init__(self, cfg: Config, run_dir: Path, state: dict | None):
        self.cfg, self.rl, self.run_dir = cfg, cfg.rl, run_dir
        self.state = state or {}
        self.step = self.state.get("step", 0)
        ledger = PromptLedger.from_state(self.state["ledger"]) if state else PromptLedger()
        self.queue = RolloutQueue(ledger, self.rl.prompts_per_step, self.rl.max_staleness, version=self.step)
        self.trained_indices: list[int] = []
        self.ref_len: dict[int, int] = {}
        self.generated_tokens = 0
        self.weights: tuple[int, list | None, str] | None = None  # (version, object-store refs or None: gloo, checksum)
        self.channel: tuple = ()  # generators in the gloo weight-sync group, rank i+1 each

    # ---------------------------------------------------------------- set-up and tear-down
    @classmethod
    async def start(cls, cfg: Config, run_dir: Path, state: dict | None = None) -> Trainer:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.generator_actor import GeneratorActor
        from cluster.placement import placement_groups
        from cluster.tracking import Tracker, tracking_uri
        from learners.group import LearnerGroup
        from models.build import resolve_model
        from rewards.worker import RewardPool
        from tasks.dataset import records

        self = cls(cfg, run_dir, state)
        self.records = records(cfg.task, "train")
        self.eval_records = records(cfg.task, "eval")[: self.rl.eval_size]
        self.model_path = str(resolve_model(cfg.model, run_dir))
        start_from = self.state.get("checkpoint", self.model_path)
        self.groups = placement_groups(cfg.cluster)
        c = cfg.cluster

        def on_bundle(role: str, i: int) -> dict:
            pg = self.groups.get(role)
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, i)} if pg else {}

        self._new_generator = lambda i: GeneratorActor.options(  # noqa: E731
            num_cpus=c.generator_cpus, num_gpus=c.generator_gpus, max_concurrency=1000, **on_bundle("generators", i)
        ).remote(start_from, cfg.generator, cfg.rl.seed + i)
        self.generators = [self._new_generator(i) for i in range(c.generators)]
        self.busy = [0] * c.generators
        self.learners = await asyncio.to_thread(
            LearnerGroup, self.model_path, cfg.learner, c.learners, c.learner_cpus, c.learner_gpus, self.groups.get("learners"))
        if "checkpoint" in self.state:
            await asyncio.to_thread(self.learners.load, self.state["checkpoint"])
        self.rewards = RewardPool(cfg.reward, c.reward_workers, c.reward_cpus)
        # Evaluation asks only "correct?": the plain Accordion reward, whatever the training reward is.
        plain = cfg.reward.model_copy(update={"name": "accordion"})
        self.checker = self.rewards if cfg.reward.name == "accordion" else RewardPool(plain, 1, c.reward_cpus)
        await asyncio.gather(*(g.start.remote() for g in self.generators),
                             *(pool.warm_up() for pool in {self.rewards, self.checker}))
        if self.rl.sync_backend == "gloo":
            await self.open_channel()
        uri = tracking_uri(cfg.tracking.uri, run_dir)
        self.tracker = Tracker(cfg, uri, cfg.tracking.experiment, self.state.get("mlflow_run_id"), cfg.tracking.run_name)
        return self

    async def shutdown(self, status: str = "FINISHED") -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.generators:
            ray.kill(actor)
        self.learners.shutdown()
        self.rewards.shutdown()
        if self.checker is not self.rewards:
            self.checker.shutdown()
        for pg in self.groups.values():
            remove_placement_group(pg)
        self.tracker.close(status)

    # ---------------------------------------------------------------- generation side
    def record(self, index: int) -> dict:
        """Data position -> record: each epoch is a fresh seeded permutation, so a position is stable on resume."""
        epoch, k = divmod(index, len(self.records))
        return self.records[_epoch_order(self.rl.seed, epoch, len(self.records))[k]]

    def mode(self, index: int) -> str:
        """Mix-RL alternates by step: the step a position belongs to decides its mode."""
        if self.rl.mode != "mix":
            return self.rl.mode
        return "unfold" if (index // self.rl.prompts_per_step) % 2 == 0 else "fold"

    async def produce(self) -> None:
        """Forever: take an admitted position, roll out its group, score it, queue it."""
        import ray

        from actors.fold import RolloutRequest

        while True:
            index = await self.queue.admit()
            record, mode = self.record(index), self.mode(index)
            requests = [RolloutRequest(f"{index}:{j}", record["question"], mode, self.rl.budget)
                        for j in range(self.rl.samples_per_prompt)]
            if self.rl.budget == "auto" and index not in self.ref_len:
                # CHRPO measures r-hat against the policy's own uncompressed length for this question.
                requests.append(RolloutRequest(f"{index}:ref", record["question"], mode, 100, temperature=0.0))
            slot = min(range(len(self.generators)), key=lambda i: self.busy[i])
            generator = self.generators[slot]
            self.busy[slot] += 1
            try:
                trajectories = await generator.rollout.remote(requests)
            except ray.exceptions.RayActorError:
                await self.queue.abandon(index)
                await self.replace(slot, generator)
                continue
            finally:
                self.busy[slot] -= 1
            if self.rl.budget == "auto" and index not in self.ref_len:
                ref = trajectories.pop()
                self.ref_len[index] = max(1, _reasoning_tokens(ref))
            self.generated_tokens += sum(t.generated_tokens for t in trajectories)
            scored = await self.score(trajectories, record, self.ref_len.get(index))
            version = min((v for t in trajectories for v in t.versions), default=self.queue.version)
            await self.queue.put(Group(index, version, trajectories, scored))

    async def score(self, trajectories: list, record: dict, ref_len: int | None) -> list[dict]:
        items = [_reward_item(t, record, self.rl.budget, ref_len) for t in trajectories]
        chunks = await asyncio.gather(*self.rewards.score_async(items))
        return [item for chunk in chunks for item in chunk]

    async def replace(self, slot: int, dead: Any) -> None:
        """A generator died: start a new one in its bundle and give it the current weights."""
        if self.generators[slot] is not dead:
            return  # another producer already replaced it
        fresh = self._new_generator(slot)
        self.generators[slot] = fresh
        await fresh.start.remote()
        if self.weights is not None:
            version, refs, digest = self.weights
            if refs is None:  # gloo: it cannot join the old group; catch up from the object store (the group
                refs, digest = await asyncio.to_thread(self.learners.sent_weights)  # is rebuilt at the next sync)
            await fresh.update_weights.remote(version, refs, digest)

    # ---------------------------------------------------------------- learner side
    def samples(self, batch: list[Group]) -> list[dict]:
        """One sample per segment; each carries its trajectory's group-relative advantage. In policy mode
        the first segment's first token (the budget choice) carries the advantage of CHRPO's control reward."""
        import torch

        from learners.algos import group_advantages

        scored = [s for g in batch for s in g.rewards]
        group_ids = torch.tensor([i for i, g in enumerate(batch) for _ in g.rewards])
        advantage = lambda key: group_advantages(  # noqa: E731
            torch.tensor([float(s[key]) for s in scored]), group_ids, self.rl.scale_advantage_by_std).tolist()
        advantages = advantage("reward")
        policy = all(s.get("control_reward") is not None for s in scored)
        firsts = advantage("control_reward") if policy else [None] * len(scored)
        trajectories = [t for g in batch for t in g.trajectories]
        return [
            {"prompt_ids": seg.prompt_ids, "response_ids": seg.response_ids, "advantage": adv,
             "first_advantage": first if k == 0 else None, "rollout_logprobs": seg.logprobs}
            for traj, adv, first in zip(trajectories, advantages, firsts)
            for k, seg in enumerate(traj.segments) if seg.response_ids
        ]

    async def open_channel(self) -> None:
        """(Re)build the gloo weight-sync group: learner rank 0 plus every current generator, all joining
        at once. A replaced generator cannot join a live group, so the whole group is rebuilt for it;
        a dead one is replaced first (a member that never joins would hold the others until the timeout)."""
        import ray

        for slot, g in enumerate(list(self.generators)):
            try:
                await g.version.remote()
            except ray.exceptions.RayActorError:
                await self.replace(slot, g)
        host, port = await asyncio.to_thread(self.learners.sync_address)
        world = len(self.generators) + 1
        await asyncio.gather(asyncio.to_thread(self.learners.join_sync, host, port, world),
                             *(g.join_sync.remote(host, port, i + 1, world) for i, g in enumerate(self.generators)))
        self.channel = tuple(self.generators)

    async def sync_weights(self) -> float:
        """Stream the learner's weights to every generator in buckets; returns seconds taken.

        objstore: learner rank 0 puts the buckets in the object store once, every generator reads them.
        gloo: rank 0 broadcasts them over a side group (the protocol NCCL runs on GPUs). Either way the
        driver holds only refs and the checksum.
        """
        import ray

        start = time.perf_counter()
        if self.rl.sync_backend == "gloo":
            if len(self.channel) != len(self.generators) or any(a is not b for a, b in zip(self.channel, self.generators)):
                await self.open_channel()
            members = self.channel
            digest, *got = await asyncio.gather(
                asyncio.to_thread(self.learners.send_weights, self.rl.bucket_mb << 20),
                *(g.receive_weights.remote(self.step) for g in members), return_exceptions=True)
            if not any(isinstance(r, ray.exceptions.RayActorError) for r in got):
                for r in (digest, *got):
                    if isinstance(r, BaseException):
                        raise r
                self.weights = (self.step, None, digest)
                return time.perf_counter() - start
            # A generator died mid-broadcast, which breaks the group for everyone: rebuild it at the next
            # sync; the survivors that missed this version get it through the object store now.
            self.channel = ()
            self.weights = (self.step, *await asyncio.to_thread(self.learners.sent_weights))
            await asyncio.gather(*(g.update_weights.remote(*self.weights) for g, r in zip(members, got)
                                   if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError)))
            return time.perf_counter() - start
        # One copy in the object store, put there by learner rank 0 and read by every generator.
        self.weights = (self.step, *await asyncio.to_thread(self.learners.weight_buckets, self.rl.bucket_mb << 20))
        done = await asyncio.gather(*(g.update_weights.remote(*self.weights) for g in self.generators),
                                    return_exceptions=True)
        for r in done:  # a generator that died is replaced by `replace`, which gives it `self.weights`
            if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError):
                raise r
        return time.perf_counter() - start

    async def evaluate(self) -> dict[str, float]:
        """Greedy held-out accuracy in both modes, and the Fold-Unfold gap RL should close."""
        from actors.fold import RolloutRequest

        metrics: dict[str, float] = {}
        for mode in ("unfold", "fold"):
            requests = [RolloutRequest(f"eval:{mode}:{i}", r["question"], mode, self.rl.budget, temperature=0.0)
                        for i, r in enumerate(self.eval_records)]
            shards = [requests[i :: len(self.generators)] for i in range(len(self.generators))]
            results = await asyncio.gather(*(g.rollout.remote(s) for g, s in zip(self.generators, shards) if s))
            trajectories = [t for shard in results for t in shard]
            by_id = {f"eval:{mode}:{i}": r for i, r in enumerate(self.eval_records)}
            items = [_reward_item(t, by_id[t.id], None, None) for t in trajectories]
            scored = [x for chunk in await asyncio.gather(*self.checker.score_async(items)) for x in chunk]
            metrics[f"eval/{mode}_accuracy"] = sum(s["correct"] for s in scored) / len(scored)
            metrics[f"eval/{mode}_tokens"] = sum(t.generated_tokens for t in trajectories) / len(trajectories)
            metrics[f"eval/{mode}_peak_context"] = sum(t.peak_context for t in trajectories) / len(trajectories)
        metrics["eval/fold_unfold_gap"] = metrics["eval/unfold_accuracy"] - metrics["eval/fold_accuracy"]
        return metrics

    def checkpoint(self) -> None:
        """Weights + optimizer in HF format, then the loop's own state, written last and atomically."""
        path = self.run_dir / "checkpoints" / f"step_{self.step}"
        self.learners.save(path, {"step": self.step})
        state = {"step": self.step, "checkpoint": str(path), "ledger": self.queue.ledger.state_dict(),
                 "mlflow_run_id": self.tracker.run_id}
        tmp = self.run_dir / f"{STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.run_dir / STATE)

    async def run(self) -> dict[str, float]:
        from tqdm import tqdm

        producers = [asyncio.create_task(self.produce())
                     for _ in range(self.rl.prompts_per_step * (self.rl.max_staleness + 1))]
        metrics: dict[str, float] = {}
        bar = tqdm(total=self.rl.steps, initial=self.step, desc="rl", unit="step", dynamic_ncols=True)
        try:
            while self.step < self.rl.steps:
                t0 = time.perf_counter()
                batch = await self.queue.take_batch()
                t_gen = time.perf_counter()
                tokens, self.generated_tokens = self.generated_tokens, 0
                samples = self.samples(batch)
                train = await asyncio.to_thread(self.learners.train_step, samples)
                self.queue.trained(batch)
                self.trained_indices.extend(g.index for g in batch)
                self.step += 1
                sync_s = await self.sync_weights() if self.step % self.rl.sync_every == 0 else 0.0
                await self.queue.set_version(self.step)
                elapsed = time.perf_counter() - t0
                metrics = {**rollout_metrics(batch, self.step), **{f"train/{k}": v for k, v in train.items()},
                           "queue/dropped_stale": self.queue.dropped_stale, "perf/sync_s": sync_s,
                           "perf/wait_for_rollouts_s": t_gen - t0, "perf/step_s": elapsed,
                           "perf/generated_tokens_per_s": tokens / elapsed,
                           "perf/trained_samples_per_s": len(samples) / elapsed}
                last = self.step == self.rl.steps
                if last or (self.rl.eval_every and self.step % self.rl.eval_every == 0):
                    metrics.update(await self.evaluate())
                self.tracker.log(metrics, self.step)
                self.log_samples(batch)
                if last or self.step % self.rl.save_every == 0:
                    await asyncio.to_thread(self.checkpoint)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['rollout/accuracy']:.2f}",
                                tok_s=f"{metrics['perf/generated_tokens_per_s']:.0f}",
                                stale=f"{metrics['queue/staleness_mean']:.1f}")
                bar.update(1)
        finally:
            bar.close()
            for p in producers:
                p.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
        self.tracker.artifact(self.run_dir / "checkpoints" / f"step_{self.step}", "checkpoint")
        return metrics

    def log_samples(self, batch: list[Group]) -> None:
        if not self.rl.samples_to_log:
            return
        path = self.run_dir / "samples" / f"step_{self.step}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        pairs = [(t, s) for g in batch for t, s in zip(g.trajectories, g.rewards)][: self.rl.samples_to_log]
        with open(path, "w") as f:
            for t, s in pairs:
                f.write(json.dumps({"id": t.id, "mode": t.mode, "status": t.status, "reward": s["reward"],
                                    "correct": s["correct"], "response": t.response,
                                    "summaries_only": [seg.text for seg in t.segments]}) + "\n")
        self.tracker.artifact(path, "samples")


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    """The seeded permutation of one epoch, computed once per epoch instead of once per group."""
    order = list(range(size))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return order


def _reasoning_tokens(trajectory: Any) -> int:
    from tasks.format import reasoning_tokens

    return reasoning_tokens(trajectory.response)


def _reward_item(trajectory: Any, record: dict, budget: Any, ref_len: int | None) -> dict:
    item = {"response": trajectory.response, "answer": record["answer"], "status": trajectory.status}
    if budget is not None:
        item["budget"] = budget
        if trajectory.chosen_budget is not None and budget == "auto":
            item["chosen"] = trajectory.chosen_budget
    if ref_len:
        item["ref_len"] = ref_len
    return item


def rollout_metrics(batch: list[Group], version: int) -> dict[str, float]:
    """Per-step rollout metrics, grouped the way the MLflow UI sections them."""
    scored = [s for g in batch for s in g.rewards]
    trajectories = [t for g in batch for t in g.trajectories]
    n = len(trajectories)
    rewards = [s["reward"] for s in scored]
    mean = sum(rewards) / n
    metrics = {
        "reward/mean": mean,
        "reward/std": (sum((r - mean) ** 2 for r in rewards) / n) ** 0.5,
        "rollout/accuracy": sum(s["correct"] for s in scored) / n,
        "rollout/tokens_per_trajectory": sum(t.generated_tokens for t in trajectories) / n,
        "rollout/peak_context": sum(t.peak_context for t in trajectories) / n,
        "rollout/unfold_context": sum(t.unfold_context for t in trajectories) / n,
        "rollout/segments": sum(len(t.segments) for t in trajectories) / n,
        # Segments a weight update interrupted; they went on under the newer weights.
        "rollout/interrupted_segments": sum(s.last_version > s.version for t in trajectories for s in t.segments),
        "queue/staleness_mean": sum(version - 1 - g.version for g in batch) / len(batch),
        "queue/staleness_max": max(version - 1 - g.version for g in batch),
    }
    for status in ("answered", "unfinished", "malformed"):
        metrics[f"rollout/{status}"] = sum(t.status == status for t in trajectories) / n
    for mode in ("fold", "unfold"):
        of_mode = [s for s, t in zip(scored, trajectories) if t.mode == mode]
        if of_mode:
            metrics[f"rollout/{mode}_accuracy"] = sum(s["correct"] for s in of_mode) / len(of_mode)
    for key in scored[0].get("components", {}):
        metrics[f"reward/{key}"] = sum(s["components"][key] for s in scored) / n
    return metrics


def prepare_run(config: str | None, overrides: list[str], resume: str | None) -> tuple[Config, Path, dict | None]:
    """A new run refuses a folder that already holds one; `--resume` reads config and state from it."""
    if resume:
        run_dir = Path(resume)
        if not (run_dir / STATE).is_file():
            raise ConfigError(f"--resume {run_dir}: no {STATE} there (no checkpoint was written yet)")
        cfg = load_config(run_dir / RESOLVED_CONFIG, overrides)
        return cfg, run_dir, json.loads((run_dir / STATE).read_text())
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.run_dir)
    if (run_dir / STATE).exists():
        raise ConfigError(f"run_dir {run_dir} already holds a run: continue it with --resume {run_dir}, "
                          f"or pass run_dir=<new folder>")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESOLVED_CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return cfg, run_dir, None


def cold_start(cfg: Config, run_dir: Path) -> Config:
    """The embedded default names no model: RL then starts from the tiny model after SFT on the
    built-in gold traces (`accordion sft --out <run_dir>/sft`, resumable, skipped once done)."""
    from learners import cli as sft_cli
    from learners.sft import CHECKPOINT

    sft_dir = run_dir / "sft"
    if not (sft_dir / "metrics.json").is_file():
        print(f"model.path is empty: cold-starting the built-in tiny model with SFT into {sft_dir}")
        sft_cli.main(["--out", str(sft_dir), "--config", str(run_dir / RESOLVED_CONFIG)], prog="accordion sft")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(sft_dir / CHECKPOINT)})})


async def train(cfg: Config, run_dir: Path, state: dict | None) -> Trainer:
    trainer = await Trainer.start(cfg, run_dir, state)
    try:
        metrics = await trainer.run()
    except BaseException:
        await trainer.shutdown("FAILED")
        raise
    await trainer.shutdown()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return trainer


def main(argv: list[str], prog: str = "accordion train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run RL (Fold / Unfold / Mix / CHRPO) on Ray.")
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    args = parser.parse_args(argv)
    cfg, run_dir, state = prepare_run(args.config, args.overrides, args.resume)
    if not cfg.model.path:
        cfg = cold_start(cfg, run_dir)

    import ray

    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS names the cluster (no runtime_env here: the job's applies);
        # otherwise a private local Ray, never a stray one left running on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"))
    trainer = asyncio.run(train(cfg, run_dir, state))
    print(f"trained {trainer.step} steps; run folder {run_dir}; MLflow run {trainer.tracker.run_id}")
    return 0


if __name__ == "__main__":  # `ray job submit ... -- python -m cluster.train --config ...`
    import sys

    from cluster.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
