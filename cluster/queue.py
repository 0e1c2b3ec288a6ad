"""The asynchronous rollout queue between generators and learners, and the ledger that makes
every prompt count exactly once.

Generation runs ahead of training by at most `max_staleness` policy versions (AReaL's
`max_head_offpolicyness`): a group may *start* only while

    groups_started < (version + max_staleness + 1) * groups_per_step

so with `max_staleness: 0` no rollout for step t+1 starts before the weights of step t are
synced (synchronous on-policy training), and with k > 0 generators keep working while the
learners train. A group that still comes back too old (its oldest segment was generated more
than `max_staleness` versions ago, e.g. it straddled several weight updates) is dropped and its
prompt re-issued. Prompts whose generator died are re-issued too: the ledger hands out retries
before new data, and a prompt leaves it only when its group is trained.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Group:
    """All rollouts of one prompt, scored: group advantages need them together."""

    index: int
    """Position of the prompt in the training data stream."""
    version: int
    """Oldest policy version among the group's segments: staleness is measured from it."""
    trajectories: list[Any] = field(default_factory=list)
    rewards: list[dict] = field(default_factory=list)


class PromptLedger:
    """Which data positions are issued, which must be retried, and where a resumed run continues."""

    def __init__(self, next_index: int = 0, retry: tuple[int, ...] = ()):
        self.next_index = next_index
        self.retry: deque[int] = deque(retry)
        self.outstanding: set[int] = set()
        self.reissued = 0
        """Positions handed out again so far (lost with a generator, dropped as stale)."""

    def issue(self) -> int:
        index = self.retry.popleft() if self.retry else self._fresh()
        self.outstanding.add(index)
        return index

    def _fresh(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def set_aside(self, index: int) -> None:
        """The prompt's group was generated but teaches nothing (dynamic sampling): it is used up, not owed."""
        self.outstanding.remove(index)

    def reissue(self, index: int) -> None:
        """The prompt's rollout was lost (dead generator) or dropped (stale): hand it out again first."""
        self.outstanding.discard(index)
        self.retry.append(index)
        self.reissued += 1

    def trained(self, index: int) -> None:
        self.outstanding.remove(index)

    def state_dict(self) -> dict:
        """What a resumed run needs: anything not yet trained is issued again, before new data."""
        return {"next_index": self.next_index, "retry": sorted([*self.retry, *self.outstanding])}

    @classmethod
    def from_state(cls, state: dict) -> PromptLedger:
        return cls(state["next_index"], tuple(state["retry"]))


class RolloutQueue:
    """Bounded buffer of scored groups with the staleness gate above. Single event loop, no locks."""

    def __init__(self, ledger: PromptLedger, groups_per_step: int, max_staleness: int, version: int = 0,
                 skip_uninformative: bool = False):
        if groups_per_step < 1 or max_staleness < 0:
            raise ValueError(f"groups_per_step must be >= 1 and max_staleness >= 0, got {groups_per_step}, {max_staleness}")
        self.ledger = ledger
        self.groups_per_step = groups_per_step
        self.max_staleness = max_staleness
        self.version = version
        self.started = version * groups_per_step
        self.buffer: list[Group] = []
        self.dropped_stale = 0
        self.skip_uninformative = skip_uninformative
        self.set_aside: list[int] = []  # positions of groups set aside by dynamic sampling
        self._set_aside_now = 0  # ... since the last version change, at most `groups_per_step`
        self._changed = asyncio.Condition()

    def _may_start(self) -> bool:
        return self.started < (self.version + self.max_staleness + 1) * self.groups_per_step

    async def admit(self) -> int:
        """Wait until one more group may start generating; returns the data position to generate."""
        async with self._changed:
            await self._changed.wait_for(self._may_start)
            self.started += 1
            return self.ledger.issue()

    async def abandon(self, index: int) -> None:
        """A started group will not arrive (its generator died): its prompt is issued again."""
        async with self._changed:
            self.started -= 1
            self.ledger.reissue(index)
            self._changed.notify_all()

    async def put(self, group: Group, informative: bool = True) -> None:
        """Queue a scored group. With `skip_uninformative`, a group whose advantages are all zero is set
        aside instead and another position may start in its place, at most `groups_per_step` times per
        version: a policy that is right (or wrong) on everything still gets trained."""
        async with self._changed:
            if self.skip_uninformative and not informative and self._set_aside_now < self.groups_per_step:
                self._set_aside_now += 1
                self.started -= 1
                self.ledger.set_aside(group.index)
                self.set_aside.append(group.index)
            else:
                self.buffer.append(group)
            self._changed.notify_all()

    async def take_batch(self) -> list[Group]:
        """Wait for `groups_per_step` fresh groups, oldest first. Stale groups met on the way are
        dropped, counted, and their prompts issued again."""
        async with self._changed:
            while True:
                for group in [g for g in self.buffer if self.version - g.version > self.max_staleness]:
                    self.buffer.remove(group)
                    self.dropped_stale += 1
                    self.started -= 1  # its slot goes to the re-issued prompt
                    self.ledger.reissue(group.index)
                    self._changed.notify_all()
                if len(self.buffer) >= self.groups_per_step:
                    self.buffer.sort(key=lambda g: (g.version, g.index))  # not arrival order: a rerun repeats it
                    batch, self.buffer = self.buffer[: self.groups_per_step], self.buffer[self.groups_per_step :]
                    return batch
                await self._changed.wait()

    def trained(self, batch: list[Group]) -> None:
        for group in batch:
            self.ledger.trained(group.index)

    async def set_version(self, version: int) -> None:
        """New weights are live on the generators: more groups may start."""
        async with self._changed:
            self.version = version
            self._set_aside_now = 0
            self._changed.notify_all()
