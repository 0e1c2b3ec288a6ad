"""The one weight-sync format: (name, tensor) pairs streamed in size-bounded buckets, and the gloo channel.

A bucket is the safetensors serialisation of a `{name: tensor}` dict (Hugging Face parameter
names): it crosses the Ray object store or a torch.distributed group as one byte buffer, and
vLLM's `reload_weights` reads it without copies per tensor. The checksum is over names and
bytes in name order, so sender and receiver can prove they hold the same weights.

It sits below the roles because both ends use it: the learner (`learners/`) makes and sends the
buckets, the generator (`actors/`) checks and loads them. The driver side is `cluster.weight_sync`.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import torch
from safetensors.torch import load as load_bucket_bytes
from safetensors.torch import save as save_bucket_bytes

DEFAULT_BUCKET_BYTES = 256 << 20


def to_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[bytes]:
    """Serialise tensors into buckets of at most `bucket_bytes` (a larger tensor gets a bucket of its own)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    storages: set[int] = set()
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield save_bucket_bytes(bucket)
            bucket, size = {}, 0
        t = tensor.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        # safetensors refuses tensors that share storage (tied embeddings): copy only those.
        bucket[name] = t.clone() if storage in storages else t
        storages.add(storage)
        size += nbytes
    if bucket:
        yield save_bucket_bytes(bucket)


def from_bucket(blob: bytes) -> dict[str, torch.Tensor]:
    return load_bucket_bytes(blob)


def checksum(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) in name order: equal iff the weights are bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class GlooChannel:
    """A side torch.distributed group (gloo) from learner rank 0 (rank 0 here) to the generators.

    Buckets travel as uint8 tensors: first a header with their sizes, then one broadcast per
    bucket, so the cost is one collective per bucket, not per tensor. Every member must construct
    the channel (it blocks until all have joined) and then call `send` / `receive` in step. On GPUs
    the same protocol runs over NCCL with CUDA tensors.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0):
        from datetime import timedelta

        import torch.distributed as dist

        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s))
        self.group = dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))
        self.rank = rank

    def send(self, buckets: list[bytes]) -> None:
        header = torch.tensor([len(buckets), *map(len, buckets)], dtype=torch.int64)
        self._broadcast(torch.tensor([header.numel()], dtype=torch.int64))
        self._broadcast(header)
        for blob in buckets:
            self._broadcast(torch.frombuffer(bytearray(blob), dtype=torch.uint8))

    def receive(self) -> list[bytes]:
        length = torch.zeros(1, dtype=torch.int64)
        self._broadcast(length)
        header = torch.zeros(int(length[0]), dtype=torch.int64)
        self._broadcast(header)
        out = []
        for size in header[1:].tolist():
            blob = torch.empty(size, dtype=torch.uint8)
            self._broadcast(blob)
            out.append(blob.numpy().tobytes())
        return out

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()
