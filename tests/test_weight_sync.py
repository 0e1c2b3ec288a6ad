import torch

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


def test_gloo_channel_delivers_buckets_to_every_receiver():
    import socket
    import threading

    from models.weights import GlooChannel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    buckets = list(to_buckets(named(), bucket_bytes=20_000))
    received = {}

    def member(rank):
        channel = GlooChannel("127.0.0.1", port, rank, 3, timeout_s=60)
        if rank == 0:
            channel.send(buckets)
        else:
            received[rank] = channel.receive()

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert received[1] == received[2] == buckets
    restored = {k: v for b in received[1] for k, v in from_bucket(b).items()}
    assert checksum(restored.items()) == checksum(named())


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
