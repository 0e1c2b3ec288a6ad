"""The generation side of the RL loop: admitted data positions become scored groups in the queue,
and scored groups become learner samples.

    queue.admit() -> position i -> record, mode, budget of i -> GeneratorPool.rollout (a group of
    `samples_per_prompt` trajectories) -> RewardPool (answer checks, Accordion or CHRPO reward) -> queue.put

What a position holds is a pure function of the position (seeded epoch order, Mix-RL's share of Fold steps,
`rl.budgets` cycled), so a re-issued or resumed position is the same question in the same shape.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
from typing import Any

from actors.fold import RolloutRequest, Trajectory
from cluster.queue import Group, RolloutQueue
from configs.schema import RLConfig
from tasks.dataset import epoch_order
from tasks.format import reasoning_tokens


class Producer:
    """Turns positions into scored groups. `chrpo`: each position also gets one greedy `<COMP_100>`
    trajectory (not trained), whose reasoning length is the reference r-hat is measured against."""

    def __init__(self, rl: RLConfig, records: list[dict], pool: Any, rewards: Any, queue: RolloutQueue, chrpo: bool):
        self.rl, self.records, self.pool, self.rewards, self.queue, self.chrpo = rl, records, pool, rewards, queue, chrpo
        self.ref_len: dict[int, int] = {}
        self.generated_tokens = 0

    def record(self, index: int) -> dict:
        """Each epoch is a fresh seeded permutation, so a position is stable on resume."""
        epoch, k = divmod(index, len(self.records))
        return self.records[epoch_order(self.rl.seed, epoch, len(self.records))[k]]

    def mode(self, index: int) -> str:
        """Mix-RL: the step a position belongs to decides its mode."""
        if self.rl.mode != "mix":
            return self.rl.mode
        return mix_mode(index // self.rl.prompts_per_step, self.rl.fold_share)

    def seed(self, index: int, sample: int) -> int:
        """A trajectory's sampling seed, a function of the position: a re-issued or resumed position draws
        the same tokens from the same weights."""
        return int.from_bytes(hashlib.blake2b(f"{self.rl.seed}:{index}:{sample}".encode(), digest_size=4).digest(), "little")

    def budget(self, index: int) -> int | str | None:
        return self.rl.budgets[index % len(self.rl.budgets)] if self.rl.budgets else None

    async def run(self) -> None:
        """Forever: take an admitted position, roll out its group, score it, queue it."""
        import ray

        while True:
            index = await self.queue.admit()
            record, mode, budget = self.record(index), self.mode(index), self.budget(index)
            requests = [RolloutRequest(f"{index}:{j}", record["question"], mode, budget, seed=self.seed(index, j))
                        for j in range(self.rl.samples_per_prompt)]
            needs_ref = self.chrpo and index not in self.ref_len
            if needs_ref:
                requests.append(RolloutRequest(f"{index}:ref", record["question"], mode, 100, temperature=0.0))
            try:
                trajectories = await self.pool.rollout(requests)
            except ray.exceptions.RayActorError:
                await self.queue.abandon(index)
                continue
            if needs_ref:
                self.ref_len[index] = max(1, reasoning_tokens(trajectories.pop().response))
            self.generated_tokens += sum(t.generated_tokens for t in trajectories)
            items = [reward_item(t, record, budget, self.ref_len.get(index)) for t in trajectories]
            scored = [s for chunk in await asyncio.gather(*self.rewards.score_async(items)) for s in chunk]
            version = min((v for t in trajectories for v in t.versions), default=self.queue.version)
            group = Group(index, version, trajectories, scored)
            await self.queue.put(group, informative=informative(scored))


def mix_mode(step: int, fold_share: float) -> str:
    """Fold for `fold_share` of the steps, spread evenly: step s is Fold when the count of Fold steps due
    by s+1 goes up."""
    return "fold" if math.floor((step + 1) * fold_share) > math.floor(step * fold_share) else "unfold"


def reward_item(trajectory: Trajectory, record: dict, budget: Any, ref_len: int | None) -> dict:
    """What `rewards.scorer` needs of one trajectory."""
    item = {"response": trajectory.response, "answer": record["answer"], "status": trajectory.status}
    if budget is not None:
        item["budget"] = budget
        if budget == "auto" and trajectory.chosen_budget is not None:
            item["chosen"] = trajectory.chosen_budget
    if ref_len:
        item["ref_len"] = ref_len
    return item


def informative(scored: list[dict]) -> bool:
    """A group teaches something only if its rewards differ (or, in policy mode, its control rewards):
    otherwise every advantage is 0 (DAPO's dynamic sampling sets such groups aside)."""
    return len({s["reward"] for s in scored}) > 1 or len({s.get("control_reward") for s in scored}) > 1


def segment_samples(batch: list[Group], scale_by_std: bool = False, mask_truncated: bool = False) -> list[dict]:
    """One learner sample per generated segment; each carries its trajectory's group-relative advantage
    (Accordion: one advantage per chain, broadcast to its segments). In policy mode the first segment's
    first token (the budget choice) carries the advantage of CHRPO's control reward. `mask_truncated`
    leaves trajectories cut off by a length limit out of the loss (their rewards still set the group mean)."""
    import torch

    from learners.algos import group_advantages

    scored = [s for g in batch for s in g.rewards]
    group_ids = torch.tensor([i for i, g in enumerate(batch) for _ in g.rewards])

    def advantage(values: list[float]) -> list[float]:
        return group_advantages(torch.tensor(values), group_ids, scale_by_std).tolist()

    advantages = advantage([float(s["reward"]) for s in scored])
    # Groups are all policy mode or none (a position has one budget), so a group's control rewards are
    # all set or all None; None groups get no first-token advantage.
    controls = advantage([float(s.get("control_reward") or 0.0) for s in scored])
    firsts = [c if s.get("control_reward") is not None else None for c, s in zip(controls, scored)]
    trajectories = [t for g in batch for t in g.trajectories]
    return [
        {"prompt_ids": seg.prompt_ids, "response_ids": seg.response_ids, "advantage": adv,
         "first_advantage": first if k == 0 else None, "rollout_logprobs": seg.logprobs}
        for traj, adv, first in zip(trajectories, advantages, firsts)
        if not (mask_truncated and traj.status == "unfinished")
        for k, seg in enumerate(traj.segments) if seg.response_ids
    ]
