"""The RL loop. One training step, top to bottom (each line is one file):

    cluster/queue.py        admit(): a data position may start generating (staleness gate)
    cluster/rollouts.py     Producer: the position's group of Fold/Unfold trajectories
    actors/generator.py       GeneratorActor.rollout, every segment stamped with its policy version
    rewards/worker.py         RewardPool: answers checked under a hard timeout, Accordion or CHRPO reward
    cluster/queue.py        put(group) ... take_batch(): whole groups, none staler than max_staleness
    cluster/rollouts.py     segment_samples: group advantages (learners/algos.py), one sample per segment
    cluster/generators.py   (cluster.colocate) GeneratorPool.sleep: the generators free the devices
    learners/group.py       LearnerGroup.train_step: one DeepSpeed optimizer step, version + 1
    cluster/generators.py   (cluster.colocate) GeneratorPool.wake_up
    cluster/weight_sync.py  WeightSync.sync: learner rank 0 -> every generator, in checksummed buckets
    evals/runner.py         every `eval.every` steps and at the end: held-out accuracy, sampled and greedy

Generation runs concurrently with training (producer coroutines, one per admitted group); the driver
is a single asyncio loop, so queue and ledger need no locks.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from cluster.queue import Group, PromptLedger, RolloutQueue
from cluster.run_dir import (PLOTS, STATE, TRAINED, VIEW, RunFolderError, append_eval, append_line, checkpoint_dir,
                             manifest, read_evals, write_json)
from configs.schema import Config
from tasks.format import BUDGETS

HISTORY_PREFIXES = ("reward/", "rollout/chosen_share_")
"""The metric histories the plots read back from MLflow (which holds them across resumes)."""


class LearnersLost(RuntimeError):
    """Learner ranks died more often than `cluster.max_learner_restarts` allows."""


class Trainer:
    """Owns the actors of one RL job. Build with `await Trainer.start(cfg, run_dir, state)`."""

    def __init__(self, cfg: Config, run_dir: Path, state: dict | None):
        self.cfg, self.rl, self.run_dir = cfg, cfg.rl, run_dir
        self.state = state or {}
        """What state.json holds: the last checkpoint's step, path, manifest and data ledger."""
        self.step = self.state.get("step", 0)
        self.queue = self.saved_queue()
        self._recorded = (0, 0)  # set-aside and re-issued counts that trained.jsonl already holds
        self.learner_restarts = 0
        self.trained_indices: list[int] = []
        self.final: dict[str, Any] = {}
        """The end-of-job evaluation (`evals.runner.final_suite`), once the last step ran."""
        self.history: dict[str, dict[int, float]] = {}
        """Every metric logged by this process, step -> value in step order; a step redone after a learner
        restart keeps its place, with the new value (MLflow holds the history across resumes)."""

    def saved_queue(self) -> RolloutQueue:
        """The rollout queue as of the last checkpoint: what was trained since is owed again."""
        ledger = PromptLedger.from_state(self.state["ledger"]) if "ledger" in self.state else PromptLedger()
        return RolloutQueue(ledger, self.rl.prompts_per_step, self.rl.max_staleness, version=self.step,
                            skip_uninformative=self.rl.skip_uniform_groups)

    # ---------------------------------------------------------------- set-up and tear-down
    @classmethod
    async def start(cls, cfg: Config, run_dir: Path, state: dict | None = None) -> Trainer:
        from cluster.tracking import Tracker, tracking_uri
        from cluster.weight_sync import check_backend
        from models.prepare import ties_embeddings

        check_backend(cfg.rl.sync_backend)
        self = cls(cfg, run_dir, state)
        # First: an unreachable tracking server is refused before minutes of actor start-up, not after.
        self.tracker = Tracker(cfg.model_dump(mode="json"), tracking_uri(cfg.tracking.uri, run_dir), cfg.tracking.experiment,
                               self.state.get("mlflow_run_id"), cfg.tracking.run_name, spool=run_dir / "mlflow_spool.jsonl",
                               hold=cfg.tracking.log_at == "checkpoint")
        # Held rows of the last checkpoint that a crash may have kept from the store (`tracking.log_at`).
        self.tracker.send_rows(self.state.get("mlflow_rows", []))
        try:
            await self._start_actors()
        except BaseException:
            self.tracker.close("FAILED")
            raise
        self.precision = {"learner": self.learners.precision, "generator": self.pool.described["dtype"],
                          "machine": self.learners.machine}
        self.tracker.tags({f"precision.{k}": v for k, v in self.precision.items()})
        print(f"precision: learners {self.precision['learner']}, generators {self.precision['generator']} "
              f"({self.precision['machine']})")
        if warning := tied_choice_warning(cfg, self.model_path, ties_embeddings(self.model_path)):
            print(warning)
        return self

    async def _start_actors(self) -> None:
        from cluster.placement import placement_groups
        from models.build import resolve_model
        from rewards.worker import RewardPool

        cfg, c = self.cfg, self.cfg.cluster
        self.model_path = str(resolve_model(cfg.model, self.run_dir))
        self.groups = placement_groups(c)
        self.rewards = RewardPool(cfg.reward, c.reward_workers, c.reward_cpus)
        # Evaluation asks only "correct?": the plain Accordion reward, whatever the training reward is.
        plain = cfg.reward.model_copy(update={"name": "accordion"})
        self.checker = self.rewards if cfg.reward.name == "accordion" else RewardPool(plain, 1, c.reward_cpus)
        await asyncio.gather(self._start_policy(), *(pool.warm_up() for pool in {self.rewards, self.checker}))

    async def _start_policy(self) -> None:
        """Generators and learners on the last checkpoint (the initial model before one), the weight sync
        between them, and the producer that feeds `self.queue`."""
        from cluster.generators import GeneratorPool
        from cluster.rollouts import Producer
        from cluster.weight_sync import WeightSync
        from learners.group import LearnerGroup
        from tasks.dataset import records

        cfg, c = self.cfg, self.cfg.cluster
        # Generators started from a checkpoint serve its version: stamped 0, every rollout would be stale.
        self.pool = GeneratorPool(self.state.get("checkpoint", self.model_path), cfg.generator, c, cfg.rl.seed,
                                  self.groups.get("generators"), version=self.step)
        self.learners = await asyncio.to_thread(
            LearnerGroup, self.model_path, cfg.learner, c.learners, c.learner_cpus, c.learner_gpus, self.groups.get("learners"))
        if "checkpoint" in self.state:
            await asyncio.to_thread(self.learners.load, self.state["checkpoint"])
        await self.pool.start()
        self.sync = WeightSync(self.learners, self.pool, cfg.rl.sync_backend, cfg.rl.bucket_mb << 20)
        await self.sync.open()
        self.producer = Producer(cfg.rl, records(cfg.task, "train"), self.pool, self.rewards, self.queue,
                                 chrpo=cfg.reward.name == "chrpo")

    async def restart_learners(self, died: Exception) -> None:
        """A learner rank died (`learners.group.LearnerDied`): rebuild learners and generators from the last
        checkpoint, forget the steps since and owe their data positions again; at most
        `cluster.max_learner_restarts` times. The generators restart too: they hold weights newer than the
        checkpoint, and a generator takes weight versions only forward."""
        limit = self.cfg.cluster.max_learner_restarts
        saved = self.state.get("step", 0)
        if self.learner_restarts >= limit:
            kept = f"the checkpoint of step {saved}" if saved else "no RL checkpoint yet"
            raise LearnersLost(f"{died}; the learners were restarted {limit} "
                               f"time(s) already (cluster.max_learner_restarts={limit}). {self.run_dir / STATE} holds "
                               f"{kept}; continue with: accordion train --resume {self.run_dir}") from died
        start = time.perf_counter()
        self.learner_restarts += 1
        print(f"{died}; restarting learners and generators from step {saved} "
              f"(restart {self.learner_restarts} of {limit})", flush=True)
        self.pool.shutdown()
        self.learners.shutdown()
        self.tracker.forget(after_step=saved)
        del self.trained_indices[len(self.trained_indices) - (self.step - saved) * self.rl.prompts_per_step:]
        old, self.step = self.queue, saved
        self.queue = self.saved_queue()
        owed = {*self.queue.ledger.retry}
        self.queue.set_aside = [i for i in old.set_aside if i < self.queue.ledger.next_index and i not in owed]
        self._recorded = (len(self.queue.set_aside), 0)
        await self._start_policy()
        self.tracker.log({"cluster/learner_restarts": self.learner_restarts,
                          "perf/learner_restart_s": time.perf_counter() - start}, self.step)

    async def shutdown(self, status: str = "FINISHED") -> None:
        from ray.util.placement_group import remove_placement_group

        self.pool.shutdown()
        self.learners.shutdown()
        self.rewards.shutdown()
        if self.checker is not self.rewards:
            self.checker.shutdown()
        for pg in self.groups.values():
            remove_placement_group(pg)
        self.tracker.close(status)

    # ---------------------------------------------------------------- the loop
    async def run(self) -> dict[str, float]:
        from tqdm import tqdm

        from learners.group import LearnerDied

        metrics: dict[str, float] = {}
        bar = tqdm(total=self.rl.steps, initial=self.step, desc=f"rl ({self.precision['learner']})", unit="step",
                   dynamic_ncols=True)
        producers = self.start_producers()
        try:
            while self.step < self.rl.steps:
                try:
                    metrics = await self.train_step(producers)
                except LearnerDied as died:
                    await cancel(producers)
                    await self.restart_learners(died)
                    producers = self.start_producers()
                    bar.n = self.step
                    continue
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['rollout/accuracy']:.2f}",
                                tok_s=f"{metrics['perf/generated_tokens_per_s']:.0f}",
                                stale=f"{metrics['queue/staleness_mean']:.1f}")
                bar.update(1)
        finally:
            bar.close()
            await cancel(producers)
        self.tracker.artifact(checkpoint_dir(self.run_dir, self.step), "checkpoint")
        return metrics

    def start_producers(self) -> list[asyncio.Task]:
        """Enough producer coroutines to keep every group the staleness gate admits in flight."""
        return [asyncio.create_task(self.producer.run())
                for _ in range(self.rl.prompts_per_step * (self.rl.max_staleness + 1))]

    async def train_step(self, producers: list[asyncio.Task]) -> dict[str, float]:
        """One step of the module docstring's list, with its metrics, evaluation and checkpoint."""
        from cluster.rollouts import segment_samples

        t0 = time.perf_counter()
        batch = await unless_one_fails(self.queue.take_batch(), producers)
        t_gen = time.perf_counter()
        tokens, self.producer.generated_tokens = self.producer.generated_tokens, 0
        samples = segment_samples(batch, self.rl.scale_advantage_by_std, self.rl.mask_truncated)
        turns = {}
        if self.cfg.cluster.colocate:  # the generators' turn is over: the learners get the devices
            turns["perf/sleep_s"] = await timed(self.pool.sleep())
        train = await asyncio.to_thread(self.learners.train_step, samples) if samples else {}
        if self.cfg.cluster.colocate:  # awake before the sync: a sleeping engine cannot take weights
            turns["perf/wake_s"] = await timed(self.pool.wake_up())
        self.queue.trained(batch)
        self.trained_indices.extend(g.index for g in batch)
        self.step += 1
        sync_s = await self.sync.sync(self.step) if self.step % self.rl.sync_every == 0 else 0.0
        await self.queue.set_version(self.step)
        elapsed = time.perf_counter() - t0
        metrics = {**rollout_metrics(batch, self.step), **{f"train/{k}": v for k, v in train.items()},
                   "queue/dropped_stale": self.queue.dropped_stale,
                   "queue/set_aside": len(self.queue.set_aside), "perf/sync_s": sync_s,
                   "perf/wait_for_rollouts_s": t_gen - t0, "perf/step_s": elapsed,
                   "perf/generated_tokens_per_s": tokens / elapsed,
                   "perf/trained_samples_per_s": len(samples) / elapsed, **turns}
        last = self.step == self.rl.steps
        self.tracker.log(metrics, self.step)  # before evaluating: the plots then include this step
        if last or (self.cfg.eval.every and self.step % self.cfg.eval.every == 0):
            start = time.perf_counter()
            evaluated = await self.evaluate(final=last)
            evaluated["perf/eval_s"] = time.perf_counter() - start
            self.tracker.log(evaluated, self.step)
            metrics |= evaluated
        for key, value in metrics.items():
            self.history.setdefault(key, {})[self.step] = value
        self.log_samples(batch)
        self.record_positions(batch)
        if last or self.step % self.rl.save_every == 0:
            # The ledger as recorded (no await between): producers go on setting groups aside meanwhile.
            await asyncio.to_thread(self.checkpoint, self.queue.ledger.state_dict())
        return metrics

    # ---------------------------------------------------------------- evaluation
    async def check(self, items: list[dict]) -> list[dict]:
        return [s for chunk in await asyncio.gather(*self.checker.score_async(items)) for s in chunk]

    async def evaluate(self, final: bool) -> dict[str, float]:
        """Held-out Unfold and Fold accuracy (sampled and greedy), appended to `evals.jsonl`; in policy
        mode also Fold under `<COMP_AUTO>` (accuracy, tokens, the budgets chosen). `final`: the full
        protocol, the budget sweep and the harder problems (`evals.runner.final_suite`). Each evaluation
        also leaves its trajectories, their viewer and the plots so far (`publish`)."""
        from evals.runner import final_suite, modes, protocols
        from tasks.dataset import records

        e = self.cfg.eval
        traces: list[dict] = []
        if final:
            self.final = await final_suite(self.pool.rollout, self.check, self.cfg, traces)
            entry = {"step": self.step, **self.final["final"], "questions": e.questions, "samples": e.samples,
                     "final": True}
        else:
            protocol = protocols(self.cfg)["periodic"]
            held_out = records(self.cfg.task, "eval")
            entry = {"step": self.step, **await modes(self.pool.rollout, self.check, held_out, e.budget, protocol,
                                                      traces=traces, policy="auto" in self.rl.budgets),
                     "questions": protocol.questions, "samples": protocol.samples}
        append_eval(self.run_dir, entry)
        self.publish(traces)
        cells = {"": entry, "auto_": entry.get("auto", {}),
                 **{f"budget_{b}_": m for b, m in self.final.get("budgets", {}).items() if final}}
        return {f"eval/{prefix}{k}": v for prefix, m in cells.items() for k, v in m.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "questions", "samples")}

    def publish(self, traces: list[dict]) -> None:
        """The evaluation's trajectories (`evals/step_N.jsonl`), their viewer (`view.html`) and the plots of
        the run so far (`plots/`), in the run folder and as MLflow artifacts."""
        from evals.plots import write_plots
        from evals.view import write_view
        from tasks.files import write_jsonl

        for trace in traces:
            trace["step"] = self.step
        write_jsonl(self.run_dir / "evals" / f"step_{self.step}.jsonl", traces)
        view = write_view(traces, self.run_dir / VIEW, f"{self.run_dir.name}: held-out trajectories after RL step {self.step}")
        sft = self.run_dir / "sft" / "metrics.json"
        so_far = {"sft": json.loads(sft.read_text()) if sft.is_file() else None, "rl_evals": read_evals(self.run_dir),
                  **{k: self.final[k] for k in ("budgets", "protocol") if k in self.final}}
        for path in [view, *write_plots(so_far, self.tracker.history(HISTORY_PREFIXES), self.run_dir / PLOTS)]:
            self.tracker.artifact(path, path.parent.name if path.parent != self.run_dir else None)

    # ---------------------------------------------------------------- records
    def checkpoint(self, ledger: dict) -> None:
        """Weights + optimizer in HF format, then the loop's own state, written last and atomically, with
        the checkpoint's manifest (`--resume` refuses a checkpoint damaged since)."""
        path = checkpoint_dir(self.run_dir, self.step)
        try:
            self.learners.save(path, {"step": self.step})
            state = {"step": self.step, "checkpoint": str(path), "checkpoint_files": manifest(path),
                     "ledger": ledger, "mlflow_run_id": self.tracker.run_id, "mlflow_rows": self.tracker.held}
            write_json(self.run_dir / STATE, state)
        except OSError as err:  # from a learner rank too: Ray's error is also an instance of its cause
            cause = getattr(err, "cause", None) or err
            saved = self.state.get("step", 0)
            kept = f"the checkpoint of step {saved}" if saved else "no RL checkpoint yet"
            raise RunFolderError(f"could not write the checkpoint of step {self.step} to {path} "
                                 f"({type(cause).__name__}: {cause}); {self.run_dir / STATE} still holds {kept}. "
                                 f"Free space or fix permissions there, then: accordion train --resume {self.run_dir}") from err
        self.state = state
        self.tracker.release()

    def record_positions(self, batch: list[Group]) -> None:
        """`trained.jsonl`: what this step trained, and what the queue set aside or re-issued since the last
        step (what `accordion soak` audits)."""
        ledger, aside = self.queue.ledger, self.queue.set_aside
        append_line(self.run_dir / TRAINED, {"step": self.step, "trained": [g.index for g in batch],
                                             "set_aside": aside[self._recorded[0]:],
                                             "reissued": ledger.reissued - self._recorded[1]})
        self._recorded = (len(aside), ledger.reissued)

    def log_samples(self, batch: list[Group]) -> None:
        from evals.traces import trajectory_record
        from tasks.files import write_jsonl

        if not self.rl.samples_to_log:
            return
        path = self.run_dir / "samples" / f"step_{self.step}.jsonl"
        records = [trajectory_record(t, source="rollout", answer=s["answer"], correct=s["correct"], step=self.step,
                                     reward=s["reward"], components=s.get("components"))
                   for g in batch for t, s in zip(g.trajectories, g.rewards)][: self.rl.samples_to_log]
        self.tracker.artifact(write_jsonl(path, records), "samples")


async def cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def unless_one_fails(awaitable, tasks: list[asyncio.Task]):
    """The result of `awaitable`, unless one of `tasks` (meant to run until cancelled) ends first: then its
    error. A producer that failed (an engine that died, a bug) would otherwise leave the loop waiting
    forever for groups nobody makes."""
    waiting = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiting in done:
        return waiting.result()
    waiting.cancel()
    ended = done.pop()
    raise ended.exception() or RuntimeError("a rollout producer ended")


async def timed(awaitable) -> float:
    start = time.perf_counter()
    await awaitable
    return time.perf_counter() - start


def weights_choice(cfg: Config) -> bool:
    """Policy-mode RL whose budget-choice token weighs more than any other token of the batch."""
    return "auto" in cfg.rl.budgets and cfg.learner.choice_weight > 1


def tied_choice_warning(cfg: Config, model: str | Path, tied: bool) -> str | None:
    """What to tell the user who weights the budget choice of a model whose LM head is its input embeddings."""
    if not (tied and weights_choice(cfg)):
        return None
    return (f"warning: {model} ties its LM head to its input embeddings, so learner.choice_weight "
            f"{cfg.learner.choice_weight:g} on the <COMP_AUTO> choice also moves the budget tokens' input embeddings "
            "(built-in model at 10: <COMP_80> 96 -> 28 %); untie it: `accordion prepare-model --untie-embeddings`, "
            "or model.tie_word_embeddings=false for the built-in model")


def rollout_metrics(batch: list[Group], version: int) -> dict[str, float]:
    """Per-step rollout metrics, grouped the way the MLflow UI sections them."""
    from cluster.rollouts import informative

    scored = [s for g in batch for s in g.rewards]
    trajectories = [t for g in batch for t in g.trajectories]
    n = len(trajectories)
    rewards = [s["reward"] for s in scored]
    mean = sum(rewards) / n
    metrics = {
        "reward/mean": mean,
        "reward/std": (sum((r - mean) ** 2 for r in rewards) / n) ** 0.5,
        "rollout/accuracy": sum(s["correct"] for s in scored) / n,
        # Groups with zero advantage throughout: nothing is learnt from them (`rl.skip_uniform_groups`).
        "reward/uniform_groups": sum(not informative(g.rewards) for g in batch) / len(batch),
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
    chosen = [t.chosen_budget for t in trajectories if t.budget == "auto" and t.chosen_budget is not None]
    if chosen:
        metrics["rollout/chosen_budget_mean"] = sum(chosen) / len(chosen)
        metrics |= {f"rollout/chosen_share_{b}": chosen.count(b) / len(chosen) for b in BUDGETS}
    # A term that does not apply is absent (CHRPO's ratios of an unanswered trajectory): mean over where it is.
    for key in dict.fromkeys(k for s in scored for k in s.get("components", {})):
        values = [s["components"][key] for s in scored if key in s["components"]]
        metrics[f"reward/{key}"] = sum(values) / len(values)
    return metrics


async def train(cfg: Config, run_dir: Path, state: dict | None) -> Trainer:
    """Start the actors, run the loop to `rl.steps`, shut down (status KILLED when interrupted)."""
    trainer = await Trainer.start(cfg, run_dir, state)
    try:
        metrics = await trainer.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        await trainer.shutdown("KILLED")
        raise
    except BaseException:
        await trainer.shutdown("FAILED")
        raise
    await trainer.shutdown()
    write_json(run_dir / "metrics.json", metrics)
    return trainer
