"""Driver side of the weight sync: learner rank 0's weights to every generator (`rl.sync_backend`).

The backends (objstore, gloo, nccl, ipc) and the bucket format live in `models.sync` and
`models.weights`; this driver runs their phases and owns recovery, whatever the backend.
"""
from __future__ import annotations

from typing import Any

from models.sync import lookup, needs_cuda_error


def check_backend(name: str) -> None:
    """Refuse, before any actor starts, a backend this Ray cluster cannot run (nccl or ipc without GPUs)."""
    import ray

    if lookup(name).device == "cuda" and not ray.cluster_resources().get("GPU"):
        raise needs_cuda_error(name, "the Ray cluster")


class WeightSync:
    """Learner rank 0's weights to every generator of a `GeneratorPool`, through the `models.sync`
    backend `backend`; the driver holds only what a send returns (refs, handles) and the checksum.

    Recovery, the same for every backend: a generator that dies mid-sync is replaced by the pool, which
    hands the newcomer these weights (`pool.weights`, else `pool.catch_up`: the learner's last send
    in the object store). A new membership means a new topology, built before the next sync (a group
    one cannot take a newcomer in). Survivors that a dead member left without this version (a broken
    broadcast) get it through the object store.
    """

    def __init__(self, learners: Any, pool: Any, backend: str, bucket_bytes: int):
        self.collective = lookup(backend).cls.collective
        self.learners, self.pool, self.backend, self.bucket_bytes = learners, pool, backend, bucket_bytes
        self.members: tuple = ()  # the generators of the current topology, rank i+1 each
        pool.catch_up = learners.sent_weights

    async def open(self) -> None:
        """(Re)build the topology: learner rank 0 plus every current generator, all joining at once. A
        dead member is replaced first (one that never joins would hold the others until the timeout); one
        that dies while joining is replaced by the next rollout it fails, and the next sync rebuilds."""
        import asyncio

        from cluster.generators import raise_unless_died

        await self.pool.replace_dead()
        meta = await asyncio.to_thread(self.learners.open_sync, self.backend)
        world = len(self.pool.actors) + 1
        joined = await asyncio.gather(asyncio.to_thread(self.learners.join_sync, world, meta),
                                      *(g.join_sync.remote(self.backend, i + 1, world, meta)
                                        for i, g in enumerate(self.pool.actors)), return_exceptions=True)
        if isinstance(joined[0], BaseException):
            raise joined[0]
        raise_unless_died(joined[1:])
        self.members = tuple(self.pool.actors)

    async def sync(self, version: int) -> float:
        """Deliver the learner's current weights as `version` to every generator; returns seconds taken."""
        import asyncio
        import time

        import ray

        from cluster.generators import raise_unless_died

        start = time.perf_counter()
        if self.members != tuple(self.pool.actors):
            await self.open()
        members = self.members
        send = asyncio.to_thread(self.learners.send_weights, self.bucket_bytes)
        if self.collective:  # every member in step: the receivers must be waiting while rank 0 sends
            sent, *got = await asyncio.gather(send, *(g.receive_weights.remote(version) for g in members),
                                              return_exceptions=True)
        else:
            sent = await send
            self.pool.weights = (version, sent.refs, sent.checksum)  # a generator replaced meanwhile gets these
            got = await asyncio.gather(*(g.receive_weights.remote(version, sent) for g in members),
                                       return_exceptions=True)
        if not any(isinstance(r, ray.exceptions.RayActorError) for r in got):
            for r in (sent, *got):
                if isinstance(r, BaseException):
                    raise r
            await asyncio.to_thread(self.learners.finalize_sync)
            self.pool.weights = (version, sent.refs, sent.checksum)
            return time.perf_counter() - start
        # A member died (the pool replaces it with `pool.weights`); the topology is rebuilt at the next sync.
        self.members = ()
        self.pool.weights = (version, *await asyncio.to_thread(self.learners.sent_weights))
        await asyncio.to_thread(self.learners.finalize_sync)
        missed = [g for g, r in zip(members, got)
                  if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError)]
        # One that died meanwhile is replaced by the pool too.
        raise_unless_died(await asyncio.gather(*(g.update_weights.remote(*self.pool.weights) for g in missed),
                                               return_exceptions=True))
        return time.perf_counter() - start
