"""Driver side of the weight sync: learner rank 0's weights to every generator (`rl.sync_backend`).

The format (buckets, checksum) and the gloo channel both ends use live in `models.weights`.
"""
from __future__ import annotations

from typing import Any


class WeightSync:
    """Driver side of a sync: learner rank 0's weights to every generator of a `GeneratorPool`.

    `objstore`: rank 0 puts the buckets in the object store once and every generator reads them.
    `gloo`: rank 0 broadcasts them over a side group with the generators (the protocol NCCL runs on
    GPUs). Either way the driver holds only refs and the checksum. A generator that dies mid-sync is
    replaced by the pool, which hands the newcomer these weights; a gloo group it broke is rebuilt at
    the next sync, and the survivors that missed this version get it through the object store.
    """

    def __init__(self, learners: Any, pool: Any, backend: str, bucket_bytes: int):
        self.learners, self.pool, self.backend, self.bucket_bytes = learners, pool, backend, bucket_bytes
        self.channel: tuple = ()  # generators in the gloo group, rank i+1 each
        if backend == "gloo":
            pool.catch_up = learners.sent_weights

    async def open_channel(self) -> None:
        """(Re)build the gloo group: learner rank 0 plus every current generator, all joining at once. A
        replacement cannot join a live group, so the whole group is rebuilt for it; a dead member is
        replaced first (one that never joins would hold the others until the timeout)."""
        import asyncio

        await self.pool.replace_dead()
        host, port = await asyncio.to_thread(self.learners.sync_address)
        world = len(self.pool.actors) + 1
        await asyncio.gather(asyncio.to_thread(self.learners.join_sync, host, port, world),
                             *(g.join_sync.remote(host, port, i + 1, world) for i, g in enumerate(self.pool.actors)))
        self.channel = tuple(self.pool.actors)

    async def sync(self, version: int) -> float:
        """Deliver the learner's current weights as `version` to every generator; returns seconds taken."""
        import asyncio
        import time

        import ray

        start = time.perf_counter()
        if self.backend == "gloo":
            if self.channel != tuple(self.pool.actors):
                await self.open_channel()
            members = self.channel
            digest, *got = await asyncio.gather(
                asyncio.to_thread(self.learners.send_weights, self.bucket_bytes),
                *(g.receive_weights.remote(version) for g in members), return_exceptions=True)
            if not any(isinstance(r, ray.exceptions.RayActorError) for r in got):
                for r in (digest, *got):
                    if isinstance(r, BaseException):
                        raise r
                self.pool.weights = (version, None, digest)
                return time.perf_counter() - start
            self.channel = ()
            self.pool.weights = (version, *await asyncio.to_thread(self.learners.sent_weights))
            missed = [g for g, r in zip(members, got)
                      if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError)]
        else:
            self.pool.weights = (version, *await asyncio.to_thread(self.learners.weight_buckets, self.bucket_bytes))
            missed = list(self.pool.actors)
        done = await asyncio.gather(*(g.update_weights.remote(*self.pool.weights) for g in missed),
                                    return_exceptions=True)
        for r in done:  # a generator that died is replaced by the pool, which gives it `pool.weights`
            if isinstance(r, BaseException) and not isinstance(r, ray.exceptions.RayActorError):
                raise r
        return time.perf_counter() - start
