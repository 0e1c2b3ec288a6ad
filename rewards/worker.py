"""Reward workers on Ray: `RewardWorker` is a thin actor around `Scorer`; `RewardPool` splits a
batch over several of them.

Per-item failures (a hang, a crash in sympy) are absorbed inside each worker's sandbox and come
back as wrong answers with `timed_out` set. If a whole actor dies, Ray restarts it (as often as it
dies: items cannot kill it, so a death comes from outside) and re-runs its chunk (scoring is
idempotent), so a batch is never lost to one bad item or one dead process.
"""
from __future__ import annotations

import asyncio

import ray

from configs.schema import RewardConfig
from rewards.scorer import Scorer


@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=3)
class RewardWorker:
    """One `Scorer` (and its verifier processes) in a Ray actor."""

    def __init__(self, cfg: RewardConfig):
        self._scorer = Scorer(cfg)

    def score(self, items: list[dict]) -> list[dict]:
        return self._scorer.score(items)

    def stats(self) -> dict[str, float]:
        return self._scorer.stats()


class RewardPool:
    """`workers` `RewardWorker` actors reserving `cpus` each (placement: `cluster.reward_workers`,
    `cluster.reward_cpus`); a batch is cut into one contiguous chunk per actor."""

    def __init__(self, cfg: RewardConfig, workers: int = 1, cpus: float = 1.0):
        self.workers = [RewardWorker.options(num_cpus=cpus).remote(cfg) for _ in range(workers)]

    def score_async(self, items: list[dict]) -> list[ray.ObjectRef]:
        """Refs of the chunk results, in batch order; `ray.get` them and concatenate (or use `score`)."""
        n = len(self.workers)
        size = -(-len(items) // n) if items else 0
        chunks = [items[i:i + size] for i in range(0, len(items), size)] if size else []
        return [worker.score.remote(chunk) for worker, chunk in zip(self.workers, chunks)]

    def score(self, items: list[dict]) -> list[dict]:
        """Scored items in input order (see `rewards.scorer` for the fields added)."""
        return [item for chunk in ray.get(self.score_async(items)) for item in chunk]

    async def warm_up(self) -> None:
        """Score one answer on every worker: actors built, verifier processes up and math-verify's slow
        first parse done, so the first training step does not pay for them (and a broken worker fails now)."""
        item = {"response": "\\boxed{1/2}", "answer": "0.5", "budget": 100, "ref_len": 1}  # valid for every reward
        await asyncio.gather(*(w.score.remote([item]) for w in self.workers))

    def stats(self) -> list[dict[str, float]]:
        """Each worker's sandbox counters (calls, timeouts, crashes, restarts, max_call_s, alive)."""
        return ray.get([w.stats.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
