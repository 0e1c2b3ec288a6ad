"""The one weight-sync format: (name, tensor) pairs streamed in size-bounded buckets, and their checksum.

A bucket is the safetensors serialisation of a `{name: tensor}` dict (Hugging Face parameter
names): it crosses the Ray object store or a torch.distributed group as one byte buffer, and
vLLM's `reload_weights` reads it without copies per tensor. The checksum is over names and
bytes in name order, so sender and receiver can prove they hold the same weights.

Every transport moves this format: the backends are in `models.sync`, the driver in `cluster.weight_sync`.
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

