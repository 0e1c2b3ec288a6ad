"""`GeneratorActor`: the Ray shell around `actors.generator.Generator` (one engine per actor).

Methods are async, so one actor serves rollouts concurrently and a weight update can arrive while
trajectories run (running segments are interrupted and go on under the new weights).
"""
from __future__ import annotations

import asyncio

import ray

from actors.fold import RolloutRequest, Trajectory
from actors.generator import Generator
from configs.schema import GeneratorConfig


@ray.remote(num_cpus=1)
class GeneratorActor:
    def __init__(self, model_path: str, cfg: GeneratorConfig, seed: int = 0):
        self.gen = Generator(model_path, cfg, seed)
        self.channel = None  # the learner's GlooChannel (rl.sync_backend: gloo)

    async def start(self) -> dict:
        """Start the engine; returns its KV-cache size in tokens, its dtype and the machine it runs on."""
        from models.precision import machine

        await self.gen.start()
        return {"kv_tokens": self.gen.kv_tokens, "dtype": self.gen.dtype, "machine": machine()}

    async def rollout(self, requests: list[RolloutRequest]) -> list[Trajectory]:
        return await self.gen.rollout(requests)

    async def update_weights(self, version: int, buckets: list, checksum: str) -> int:
        """`buckets`: safetensors bytes or ObjectRefs to them (Ray resolves only top-level refs)."""
        blobs = [await b if isinstance(b, ray.ObjectRef) else b for b in buckets]
        await self.gen.update_weights(version, blobs, checksum)
        return self.gen.version

    async def join_sync(self, host: str, port: int, rank: int, world_size: int) -> None:
        """Join (or re-join, dropping the old group) the learner's `GlooChannel` as `rank`."""
        from models.weights import GlooChannel

        self.channel = await asyncio.to_thread(GlooChannel, host, port, rank, world_size)

    async def receive_weights(self, version: int) -> int:
        """Receive the learner's broadcast (checksum first, then buckets) and load it as `version`.
        Off the event loop, so rollouts go on while bytes arrive."""
        digest, *blobs = await asyncio.to_thread(self.channel.receive)
        await self.gen.update_weights(version, blobs, digest.decode())
        return self.gen.version

    async def stage(self, bucket: bytes) -> None:
        """One bucket into the engine now, loaded by `load_staged` (the peer pattern `accordion bench sync`
        measures: one generator call per tensor)."""
        await self.gen.stage(bucket)

    async def load_staged(self, version: int, checksum: str) -> int:
        await self.gen.load_staged(version, checksum)
        return self.gen.version

    def version(self) -> int:
        return self.gen.version

    def stats(self) -> dict:
        return self.gen.stats.as_dict()

    async def shutdown(self) -> None:
        await self.gen.shutdown()
