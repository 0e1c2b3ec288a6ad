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
from models.sync import ObjectStoreBackend, Sent, SyncBackend, make_backend


@ray.remote(num_cpus=1)
class GeneratorActor:
    def __init__(self, model_path: str, cfg: GeneratorConfig, seed: int = 0, colocated: bool = False, version: int = 0):
        self.gen = Generator(model_path, cfg, seed, colocated, version)
        self.sync: SyncBackend | None = None  # this end of the weight sync, from `join_sync`

    async def start(self) -> dict:
        """Start the engine; returns its KV-cache size in tokens, its dtype and the machine it runs on."""
        from models.precision import machine

        await self.gen.start()
        return {"kv_tokens": self.gen.kv_tokens, "dtype": self.gen.dtype, "machine": machine()}

    async def rollout(self, requests: list[RolloutRequest]) -> list[Trajectory]:
        return await self.gen.rollout(requests)

    async def sleep(self) -> None:
        await self.gen.sleep()

    async def wake_up(self) -> None:
        await self.gen.wake_up()

    async def join_sync(self, backend: str, rank: int, world_size: int, meta: dict) -> None:
        """Join the learner's weight sync (`models.sync` backend `backend`) as `rank`, dropping any
        earlier one; blocks until every member joined where the backend is a group."""
        self.sync = make_backend(backend)
        await asyncio.to_thread(self.sync.build_topology, rank, world_size, meta)

    async def receive_weights(self, version: int, sent: Sent | None = None) -> int:
        """Receive a send through the joined backend (`sent`: what the send returned; None for a
        collective one) and load it as `version`. Off the event loop, so rollouts go on while bytes arrive."""
        return await self._load(version, self.sync, sent)

    async def update_weights(self, version: int, buckets: list, checksum: str) -> int:
        """Load `buckets` (safetensors bytes or object refs to them) as `version` outside any sync: how a
        generator that missed one catches up from the object store."""
        return await self._load(version, ObjectStoreBackend(), Sent(checksum, handles=buckets))

    async def _load(self, version: int, backend: SyncBackend, sent: Sent | None) -> int:
        blobs, digest = await asyncio.to_thread(backend.receive, sent)
        await self.gen.update_weights(version, blobs, digest)
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
