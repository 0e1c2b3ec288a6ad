"""The weight-sync interface: one backend class per transport, chosen by name (`rl.sync_backend`).

Both ends hold a `SyncBackend`: learner rank 0 is the sender (rank 0), every generator a receiver
(ranks 1..N). A sync goes through the same phases whatever the transport:

    sender                               receivers                     (the driver, `cluster.weight_sync`)
    prepare(host) -> meta                                                 passes meta on
    build_topology(0, N+1, meta)         build_topology(i, N+1, meta)     all at once, on every new membership
    send(named, bucket_bytes) -> Sent    receive(sent) -> buckets, sum    together if `collective`, else
                                                                          receivers after send, given its Sent
    finalize()                                                            once every receiver is done

What travels is always the `models.weights` format: (name, tensor) pairs in safetensors buckets of a
fixed size, and their checksum, which the receiver checks before loading. The version is the driver's
(it stamps each load). Backends differ only in how buckets reach the receivers:

    objstore  rank 0 puts the buckets in the Ray object store once; each receiver reads them.
    gloo      a side torch.distributed group on CPU: a header with the bucket sizes, then one broadcast
              per bucket, so one collective per bucket, not per tensor.
    nccl      the same broadcasts and the same class as gloo, over ProcessGroupNCCL with CUDA uint8
              tensors: what runs on GPUs is the code the CPU tests exercise through gloo.
    ipc       sender and receivers on one GPU: rank 0 copies each bucket to CUDA once and hands out
              CUDA IPC handles (`reduce_tensor`), which travel through Ray; receivers map the memory.

It sits below the roles because both ends use it: learners (`learners/`) send, generators (`actors/`)
receive, and neither imports the other.
"""
from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ClassVar, Collection, Iterable, NamedTuple

import torch

from models.weights import checksum, to_buckets


class SyncBackendError(ValueError):
    """A backend that does not exist, or cannot run here (nccl and ipc without CUDA)."""


@dataclass(frozen=True)
class Sent:
    """What a send hands the driver, and through it every receiver."""

    checksum: str
    handles: list | None = None
    """What a receiver fetches the buckets by (object refs, CUDA IPC handles); None: they arrive in band."""
    refs: list | None = None
    """The buckets' object-store refs, where the send left them there: a replacement generator catches
    up from them without asking the learner."""


class SyncBackend(ABC):
    """One end of a weight sync (module docstring). Build one with `make_backend(name)`."""

    collective: ClassVar[bool] = False
    """True: every member takes part in each transfer, so `send` and every `receive` must run at the same
    time (a broadcast). False: `send` returns first and the receivers then read from its `Sent`."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.last: tuple[list[bytes], str] | None = None
        """The last send's buckets and checksum, for `stored` (backends whose buckets end nowhere durable)."""

    def prepare(self, host: str) -> dict[str, Any]:
        """Sender: what every member needs to `build_topology` (`host`: the sender's reachable address)."""
        return {}

    def build_topology(self, rank: int, world_size: int, meta: dict[str, Any]) -> None:
        """Join the sync as `rank` (0: the sender) of `world_size`; blocks until all joined where the
        transport is a group. Called again with a new `meta` when the membership changes."""

    def send(self, named: Collection[tuple[str, torch.Tensor]], bucket_bytes: int) -> Sent:
        """Sender: stream `named` (HF names) in buckets of at most `bucket_bytes` to every receiver."""
        return self._send(to_buckets(named, bucket_bytes), checksum(named))

    @abstractmethod
    def _send(self, buckets: Iterable[bytes], digest: str) -> Sent:
        """Move the buckets (made as they are consumed) whose checksum is `digest`."""

    @abstractmethod
    def receive(self, sent: Sent | None) -> tuple[list[bytes], str]:
        """Receiver: the buckets and the sender's checksum (`sent` is None for a collective backend)."""

    def finalize(self) -> None:
        """Sender, once every receiver has the weights: release what the send held for them."""

    def stored(self) -> tuple[list, str] | None:
        """The last sent weights as object-store refs and their checksum (None before the first send):
        how a generator that missed a send (a replacement, a survivor of a broken group) catches up."""
        import ray

        if self.last is None:
            return None
        buckets, digest = self.last
        return [ray.put(b) for b in buckets], digest


def fetch_buckets(buckets: Iterable[Any], get: Callable[[list], list[bytes]] | None = None) -> list[bytes]:
    """Bucket bytes from a list that mixes bytes and object-store refs (`get`: Ray's, unless given)."""
    buckets = list(buckets)
    refs = [i for i, b in enumerate(buckets) if not isinstance(b, (bytes, bytearray))]
    for i, blob in zip(refs, (get or _ray_get)([buckets[i] for i in refs])):
        buckets[i] = blob
    return buckets


def _ray_get(refs: list) -> list[bytes]:
    # Through futures, not ray.get: a generator (an async actor) receives off its event loop, where
    # ray.get would still warn about blocking inside an async actor.
    futures = [ref.future() for ref in refs]
    return [f.result() for f in futures]


class ObjectStoreBackend(SyncBackend):
    """`objstore`: rank 0 puts each bucket in the object store as it is made; the driver holds only the
    refs and every receiver reads them. `put` and `get` default to Ray's (tests pass others)."""

    def __init__(self, device: str = "cpu", put: Callable[[bytes], Any] | None = None,
                 get: Callable[[list], list[bytes]] | None = None):
        super().__init__(device)
        self._put, self._get = put, get
        self._refs: tuple[list, str] | None = None

    def _send(self, buckets: Iterable[bytes], digest: str) -> Sent:
        put = self._put
        if put is None:
            import ray

            put = ray.put
        refs = [put(b) for b in buckets]
        self._refs = refs, digest
        return Sent(digest, handles=refs, refs=refs)

    def receive(self, sent: Sent | None) -> tuple[list[bytes], str]:
        return fetch_buckets(sent.handles, self._get), sent.checksum

    def stored(self) -> tuple[list, str] | None:
        return self._refs  # already there: nothing is put twice


class BroadcastBackend(SyncBackend):
    """`gloo` (device cpu) and `nccl` (device cuda): a side process group with its own TCP store, from
    the sender (rank 0) to the receivers. Per send: a length, a header [count, sizes...], then one
    broadcast per blob, the checksum first and the buckets after it. A replacement cannot join a live
    group, so a new membership means a new group (`build_topology` again)."""

    collective = True

    def __init__(self, device: str = "cpu", timeout_s: float = 300.0):
        super().__init__(device)
        self.timeout = timedelta(seconds=timeout_s)
        self.group: Any = None

    def prepare(self, host: str) -> dict[str, Any]:
        with socket.socket() as s:
            s.bind(("", 0))
            return {"host": host, "port": s.getsockname()[1]}

    def build_topology(self, rank: int, world_size: int, meta: dict[str, Any]) -> None:
        import torch.distributed as dist

        store = dist.TCPStore(meta["host"], meta["port"], world_size, is_master=rank == 0, timeout=self.timeout)
        if self.device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = self.timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, self.timeout)

    def _send(self, buckets: Iterable[bytes], digest: str) -> Sent:
        buckets = list(buckets)  # the header needs every size before the first bucket goes
        self.last = buckets, digest  # before sending: a broken broadcast is recovered from it
        blobs = [digest.encode(), *buckets]
        header = torch.tensor([len(blobs), *map(len, blobs)], dtype=torch.int64, device=self.device)
        self._broadcast(torch.tensor([header.numel()], dtype=torch.int64, device=self.device))
        self._broadcast(header)
        for blob in blobs:
            self._broadcast(torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(self.device))
        return Sent(digest)

    def receive(self, sent: Sent | None = None) -> tuple[list[bytes], str]:
        length = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._broadcast(length)
        header = torch.zeros(int(length[0]), dtype=torch.int64, device=self.device)
        self._broadcast(header)
        blobs = []
        for size in header[1:].tolist():
            blob = torch.empty(size, dtype=torch.uint8, device=self.device)
            self._broadcast(blob)
            blobs.append(blob.cpu().numpy().tobytes())
        digest, *buckets = blobs
        return buckets, digest.decode()

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self.group.broadcast([tensor], opts).wait()
        except Exception:
            # A dead member broke the group. Dropping it closes this end's connections, so that members
            # still waiting on this one (gloo relays through receivers) fail now, not at the group timeout.
            self.group = None
            raise


class IpcBackend(SyncBackend):
    """`ipc`: sender and receivers share one GPU. The sender copies each bucket to CUDA once and sends
    `reduce_tensor` handles (small, picklable) through Ray; a receiver maps that memory and copies it
    out. Both processes must see the GPU at the same device index (Ray's CUDA_VISIBLE_DEVICES of
    actors colocated on one GPU). The shared copies live until `finalize`."""

    def __init__(self, device: str = "cuda"):
        super().__init__(device)
        self._shared: list[torch.Tensor] = []

    def _send(self, buckets: Iterable[bytes], digest: str) -> Sent:
        from torch.multiprocessing.reductions import reduce_tensor

        buckets = list(buckets)
        self.last = buckets, digest
        self._shared = [torch.frombuffer(bytearray(b), dtype=torch.uint8).to(self.device) for b in buckets]
        return Sent(digest, handles=[reduce_tensor(t) for t in self._shared])

    def receive(self, sent: Sent | None) -> tuple[list[bytes], str]:
        blobs = []
        for rebuild, args in sent.handles:
            blobs.append(rebuild(*args).cpu().numpy().tobytes())
        return blobs, sent.checksum

    def finalize(self) -> None:
        self._shared = []
        torch.cuda.ipc_collect()


class Registered(NamedTuple):
    cls: type[SyncBackend]
    device: str
    """Where the buckets travel: a cuda backend refuses to start without CUDA."""


BACKENDS: dict[str, Registered] = {
    "objstore": Registered(ObjectStoreBackend, "cpu"),
    "gloo": Registered(BroadcastBackend, "cpu"),
    "nccl": Registered(BroadcastBackend, "cuda"),
    "ipc": Registered(IpcBackend, "cuda"),
}


def lookup(name: str) -> Registered:
    """The backend registered as `name`; an unknown name raises with the known ones."""
    if name not in BACKENDS:
        raise SyncBackendError(f"unknown weight-sync backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def needs_cuda_error(name: str, where: str) -> SyncBackendError:
    return SyncBackendError(f"rl.sync_backend {name} needs CUDA GPUs and {where} has none; "
                            "on CPUs use objstore or gloo")


def make_backend(name: str) -> SyncBackend:
    """A fresh end of the `name` backend for this process; a cuda backend raises here without CUDA."""
    registered = lookup(name)
    if registered.device == "cuda" and not torch.cuda.is_available():
        raise needs_cuda_error(name, f"this process ({socket.gethostname()})")
    return registered.cls(registered.device)
