"""The driver's handle on the generator actors: placement, load balancing, and replacing the dead.

The pool remembers the last weights it delivered (version, object-store refs, checksum), so a
generator started in place of a dead one catches up before it serves a rollout.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from actors.fold import RolloutRequest, Trajectory
from configs.schema import ClusterConfig, GeneratorConfig


class GeneratorPool:
    """`cluster.generators` `GeneratorActor`s on `start_from` (the weights of policy `version`), each in its
    bundle of `placement`."""

    def __init__(self, start_from: str, cfg: GeneratorConfig, cluster: ClusterConfig, seed: int, placement: Any = None,
                 version: int = 0):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from actors.generator_actor import GeneratorActor

        def new(slot: int) -> Any:
            where = {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement, slot)} if placement else {}
            return GeneratorActor.options(num_cpus=cluster.generator_cpus, num_gpus=cluster.generator_gpus,
                                          max_concurrency=1000, **where).remote(start_from, cfg, seed + slot,
                                                                                cluster.colocate, version)

        self._new: Callable[[int], Any] = new
        self.actors = [new(i) for i in range(cluster.generators)]
        self.busy = [0] * cluster.generators
        self.weights: tuple[int, list, str] | None = None
        """The last weights every live generator holds: (version, bucket refs, checksum)."""
        self.catch_up: Callable[[], tuple[list, str]] | None = None
        """Where a replacement gets bucket refs when `weights` holds none (gloo sends no refs)."""
        self.described: dict = {}
        """What the first generator reported at start: kv_tokens, dtype, machine."""

    async def start(self) -> None:
        """Start every engine; one that dies meanwhile (a fault overlapping a start or a restart) is replaced."""
        import ray

        started = await asyncio.gather(*(g.start.remote() for g in self.actors), return_exceptions=True)
        raise_unless_died(started)
        for slot, (actor, result) in enumerate(zip(list(self.actors), started)):
            if isinstance(result, ray.exceptions.RayActorError):
                started[slot] = await self.replace(slot, actor)
        self.described = started[0]

    async def rollout(self, requests: list[RolloutRequest]) -> list[Trajectory]:
        """Run `requests` on the least busy generator. A generator that dies is replaced and the raised
        `RayActorError` tells the caller its requests are lost (the queue re-issues them)."""
        import ray

        slot = min(range(len(self.actors)), key=lambda i: self.busy[i])
        actor = self.actors[slot]
        self.busy[slot] += 1
        try:
            return await actor.rollout.remote(requests)
        except ray.exceptions.RayActorError:
            await self.replace(slot, actor)
            raise
        finally:
            self.busy[slot] -= 1

    async def replace(self, slot: int, dead: Any) -> dict | None:
        """A generator died: start a new one in its bundle and give it the current weights. Returns what
        the new one's `start` reported (None if another caller replaced it already)."""
        import ray

        from learners.group import LearnerDied

        if self.actors[slot] is not dead:
            return None  # another caller already replaced it
        fresh = self._new(slot)
        self.actors[slot] = fresh
        described = await fresh.start.remote()
        if self.weights is not None:
            version, refs, digest = self.weights
            if refs is None and self.catch_up is not None:
                refs, digest = await asyncio.to_thread(self.catch_up)
            try:
                await fresh.update_weights.remote(version, refs, digest)
            except ray.exceptions.ObjectLostError as lost:
                # Their owner, learner rank 0 (the sender), died meanwhile (the soak killed it while a generator
                # was being replaced). Serving its old weights, the replacement would make only stale groups,
                # and the loop would never reach the learner call that finds the death: restart them now.
                raise LearnerDied(0, lost) from None
        return described

    async def replace_dead(self) -> None:
        """Replace every generator that no longer answers."""
        import ray

        for slot, actor in enumerate(list(self.actors)):
            try:
                await actor.version.remote()
            except ray.exceptions.RayActorError:
                await self.replace(slot, actor)

    async def sleep(self) -> None:
        """`cluster.colocate`: every generator frees its device for the learners (see `Generator.sleep`)."""
        await self._each("sleep")

    async def wake_up(self) -> None:
        await self._each("wake_up")

    async def _each(self, method: str) -> None:
        # A dead one is replaced at the next sync, and a replacement starts awake.
        raise_unless_died(await asyncio.gather(*(getattr(g, method).remote() for g in self.actors),
                                               return_exceptions=True))

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def raise_unless_died(results: list[Any]) -> None:
    """Raises the first error among the results of calls to generators, unless it is a generator's death
    (`RayActorError`: the pool replaces the dead one)."""
    import ray

    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError):
            raise r
