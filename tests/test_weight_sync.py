"""The weight-sync format (buckets, checksum) and the backends of `models.sync` through their API, without Ray."""
import typing

import pytest
import torch

from configs.schema import RLConfig
from models.sync import BACKENDS, ObjectStoreBackend, SyncBackendError, fetch_buckets, make_backend
from models.weights import checksum, from_bucket, to_buckets


def named(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(f"layer.{i}.weight", torch.randn(64, 32, generator=g)) for i in range(10)] + [
        ("scalar", torch.tensor(3.0)), ("bf16", torch.randn(8, generator=g).to(torch.bfloat16))]


def test_buckets_round_trip_and_respect_size():
    tensors = named()
    per_tensor = 64 * 32 * 4
    buckets = list(to_buckets(tensors, bucket_bytes=3 * per_tensor))
    assert len(buckets) == 4  # 3 + 3 + 3 + (1 + scalar + bf16)
    restored = {k: v for b in buckets for k, v in from_bucket(b).items()}
    assert sorted(restored) == sorted(n for n, _ in tensors)
    assert all(torch.equal(restored[n], t) for n, t in tensors)
    assert checksum(restored.items()) == checksum(tensors)


def test_oversized_tensor_gets_its_own_bucket():
    buckets = list(to_buckets(named()[:3], bucket_bytes=10))
    assert [len(from_bucket(b)) for b in buckets] == [1, 1, 1]


def test_tied_weights_serialise():
    w = torch.randn(4, 4)
    restored = from_bucket(next(to_buckets([("embed", w), ("lm_head", w)])))
    assert torch.equal(restored["embed"], restored["lm_head"])


def test_checksum_sees_one_bit_and_ignores_order():
    tensors = named()
    assert checksum(tensors) == checksum(list(reversed(tensors)))
    changed = [(n, t.clone()) for n, t in tensors]
    changed[4][1].view(torch.int32)[0, 0] ^= 1
    assert checksum(changed) != checksum(tensors)
    assert checksum(named(seed=1)) != checksum(tensors)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broadcast(backend, world=3, bucket_bytes=20_000):
    """Rank 0 sends `named()` through `backend` to world-1 receivers, each a thread of this process."""
    import threading

    meta = {"host": "127.0.0.1", "port": free_port()}
    results = {}

    def member(rank):
        end = make_backend(backend)
        end.build_topology(rank, world, meta)
        results[rank] = end.send(named(), bucket_bytes) if rank == 0 else end.receive(None)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_gloo_backend_delivers_the_buckets_and_checksum_to_every_receiver():
    results = broadcast("gloo")
    sent, (buckets1, digest1), (buckets2, digest2) = results[0], results[1], results[2]
    assert buckets1 == buckets2 == list(to_buckets(named(), bucket_bytes=20_000)) and len(buckets1) > 1
    assert sent.checksum == digest1 == digest2 == checksum(named())
    restored = {k: v for b in buckets1 for k, v in from_bucket(b).items()}
    assert checksum(restored.items()) == checksum(named())


def test_object_store_backend_round_trip_through_its_transport():
    store = {}

    def put(blob):
        store[len(store)] = blob
        return len(store) - 1

    sender = ObjectStoreBackend(put=put, get=lambda keys: [store[k] for k in keys])
    receiver = ObjectStoreBackend(get=lambda keys: [store[k] for k in keys])
    sender.build_topology(0, 2, sender.prepare("127.0.0.1"))
    sent = sender.send(named(), bucket_bytes=3 * 64 * 32 * 4)
    assert sent.handles == sent.refs == list(range(4)) and sender.stored() == (sent.refs, sent.checksum)
    buckets, digest = receiver.receive(sent)
    restored = {k: v for b in buckets for k, v in from_bucket(b).items()}
    assert digest == checksum(restored.items()) == checksum(named())
    # Bytes and refs mix in one list (a generator catching up takes either).
    assert fetch_buckets([b"raw", 1], lambda keys: [store[k] for k in keys]) == [b"raw", store[1]]


def test_registry_names_the_backends_and_refuses_others():
    assert set(BACKENDS) == {"objstore", "gloo", "nccl", "ipc"}
    assert set(typing.get_args(RLConfig.model_fields["sync_backend"].annotation)) == set(BACKENDS)
    assert BACKENDS["gloo"].cls is BACKENDS["nccl"].cls  # one broadcast protocol, two devices
    with pytest.raises(SyncBackendError, match="unknown weight-sync backend 'shm': expected one of objstore, gloo"):
        make_backend("shm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["nccl", "ipc"])
def test_cuda_backends_refuse_to_start_without_cuda(name):
    with pytest.raises(SyncBackendError, match=f"rl.sync_backend {name} needs CUDA GPUs .* use objstore or gloo"):
        make_backend(name)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL refuses two ranks on one GPU")
def test_nccl_sync_equals_gloo_sync_bit_for_bit():
    """Two processes, one GPU each: the same bytes and checksum arrive as over gloo."""
    import multiprocessing

    meta = {"host": "127.0.0.1", "port": free_port()}
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    members = [ctx.Process(target=nccl_member, args=(rank, meta, results)) for rank in range(2)]
    for p in members:
        p.start()
    nccl = dict(results.get(timeout=120) for _ in members)
    for p in members:
        p.join(timeout=60)
    gloo = broadcast("gloo", world=2)
    assert nccl[0] == gloo[0].checksum == gloo[1][1] == checksum(named())
    assert nccl[1] == gloo[1]


def nccl_member(rank, meta, results):
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)  # before CUDA starts in this process
    end = make_backend("nccl")
    end.build_topology(rank, 2, meta)
    results.put((rank, end.send(named(), 20_000).checksum if rank == 0 else end.receive(None)))


@pytest.mark.gpu
def test_ipc_hands_cuda_buckets_to_another_process():
    import multiprocessing

    sender = make_backend("ipc")
    sent = sender.send(named(), bucket_bytes=20_000)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        buckets, digest = pool.apply(ipc_receive, (sent,))
    sender.finalize()
    assert buckets == list(to_buckets(named(), bucket_bytes=20_000))
    assert digest == sent.checksum == checksum(named())


def ipc_receive(sent):
    return make_backend("ipc").receive(sent)


def test_spilled_buckets_round_trip_and_a_dead_generators_leftovers_are_swept():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from actors.generator import SPILL_PREFIX, spill, unspill

    blobs = list(to_buckets(named(), bucket_bytes=1 << 10))
    paths = spill(blobs)
    root = Path(paths[0]).parent.parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left, fresh = root / f"{SPILL_PREFIX}{dead}-old", root / f"{SPILL_PREFIX}{dead}-new"
    for folder in (left, fresh):
        folder.mkdir()
    os.utime(left, (0, 0))  # older than any update takes
    try:
        assert [Path(p).read_bytes() for p in paths] == blobs
        again = spill(blobs[:1])
        assert not left.exists() and fresh.exists() and Path(paths[0]).exists()  # live and recent ones stay
        unspill(paths)
        unspill(again)
        assert not Path(paths[0]).parent.exists() and not Path(again[0]).parent.exists()
    finally:
        fresh.rmdir()
