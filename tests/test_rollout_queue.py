import asyncio
import random

import pytest

from cluster.queue import Group, PromptLedger, RolloutQueue
from cluster.rollouts import mix_mode


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def started_without_blocking(queue: RolloutQueue, attempts: int) -> list[int]:
    issued = []
    for _ in range(attempts):
        try:
            issued.append(await asyncio.wait_for(queue.admit(), timeout=0.05))
        except asyncio.TimeoutError:
            break
    return issued


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_gate_lets_generation_run_ahead_by_max_staleness(staleness):
    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=4, max_staleness=staleness)
        first = await started_without_blocking(queue, 100)
        assert first == list(range(4 * (staleness + 1)))
        await queue.set_version(1)
        assert len(await started_without_blocking(queue, 100)) == 4
    run(main())


def test_stale_groups_are_dropped_and_their_prompts_reissued_first():
    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=2, max_staleness=1)
        for _ in range(4):
            await queue.admit()
        await queue.set_version(2)
        await queue.put(Group(index=0, version=0))  # 2 versions old: stale
        await queue.put(Group(index=1, version=1))
        await queue.put(Group(index=2, version=2))
        batch = await queue.take_batch()
        assert [g.index for g in batch] == [1, 2] and queue.dropped_stale == 1
        assert await queue.admit() == 0  # the dropped prompt comes back before new data
    run(main())


def test_abandoned_prompt_is_reissued_and_frees_its_slot():
    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=2, max_staleness=0)
        a, _ = await queue.admit(), await queue.admit()
        assert await started_without_blocking(queue, 1) == []
        await queue.abandon(a)
        assert await queue.admit() == a
    run(main())


def test_ledger_resume_state_covers_everything_untrained():
    ledger = PromptLedger()
    issued = [ledger.issue() for _ in range(5)]
    ledger.trained(issued[1])
    ledger.reissue(issued[3])
    state = ledger.state_dict()
    assert state == {"next_index": 5, "retry": [0, 2, 3, 4]}
    resumed = PromptLedger.from_state(state)
    assert [resumed.issue() for _ in range(5)] == [0, 2, 3, 4, 5]


@pytest.mark.parametrize("staleness,skip", [(0, False), (2, False), (1, True)])
def test_simulated_run_trains_every_prompt_exactly_once(staleness, skip):
    """Generators with random latency that sometimes die mid-rollout, weights updated after every step;
    with `skip`, dynamic sampling sets aside a random half of the groups as uninformative."""
    rng = random.Random(staleness)
    steps, per_step = 12, 3
    trained: list[int] = []

    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=per_step, max_staleness=staleness, skip_uninformative=skip)
        versions_seen = []

        async def generator(worker: int):
            while True:
                index = await queue.admit()
                version = queue.version
                await asyncio.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.15:  # the generator died mid-trajectory
                    await queue.abandon(index)
                    continue
                await queue.put(Group(index=index, version=version), informative=rng.random() < 0.5)

        workers = [asyncio.create_task(generator(i)) for i in range(4)]
        for step in range(steps):
            batch = await queue.take_batch()
            versions_seen.extend(queue.version - g.version for g in batch)
            trained.extend(g.index for g in batch)
            queue.trained(batch)
            await asyncio.sleep(rng.uniform(0, 0.01))
            await queue.set_version(step + 1)
        for w in workers:
            w.cancel()
        assert max(versions_seen) <= staleness
        return queue

    queue = run(main())
    assert len(trained) == len(set(trained)) == steps * per_step
    # Nothing lost: every position below the frontier is trained, set aside, or still owed by the ledger.
    owed, aside = set(queue.ledger.state_dict()["retry"]), set(queue.set_aside)
    assert set(range(queue.ledger.next_index)) == set(trained) | owed | aside
    assert not set(trained) & owed and not set(trained) & aside and not owed & aside
    assert bool(aside) == skip and len(aside) <= steps * per_step  # at most one batch's worth per version


def test_dynamic_sampling_gives_way_after_one_batch_of_uninformative_groups():
    """A policy right on everything still trains: after `groups_per_step` set-asides in a version,
    uninformative groups go into the batch."""

    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=2, max_staleness=0, skip_uninformative=True)
        for _ in range(4):
            index = await queue.admit()
            await queue.put(Group(index=index, version=0), informative=False)
        return queue, await queue.take_batch()

    queue, batch = run(main())
    assert len(queue.set_aside) == 2 and len(batch) == 2


def test_a_producer_that_fails_stops_the_wait_for_a_batch_with_its_error():
    from cluster.train import unless_one_fails

    async def main():
        queue = RolloutQueue(PromptLedger(), groups_per_step=2, max_staleness=0)

        async def producer():
            await queue.admit()
            raise RuntimeError("engine died")

        producers = [asyncio.create_task(producer())]
        with pytest.raises(RuntimeError, match="engine died"):
            await asyncio.wait_for(unless_one_fails(queue.take_batch(), producers), 5)

    asyncio.run(main())


def test_weights_lost_with_their_learner_during_a_generator_replacement_restart_the_learners():
    """Soak, 2026-12-03: learner rank 0 was killed while a dead generator's replacement started, and the
    replacement's weight update failed (the weights' owner was gone): that ended the run; ignored, the
    replacement made only stale groups and the loop never reached a learner call again. It is a learner
    death, which the loop answers with a restart."""
    import ray

    from cluster.generators import GeneratorPool
    from learners.group import LearnerDied

    class Call:
        def __init__(self, fn):
            self.remote = fn

    async def started():
        return {}

    async def lost(*weights):
        raise ray.exceptions.RayTaskError("update_weights", "", ray.exceptions.OwnerDiedError(
            "00" * 28, None, "")).as_instanceof_cause()

    fresh = type("Fresh", (), {"start": Call(started), "update_weights": Call(lost)})()
    pool = GeneratorPool.__new__(GeneratorPool)
    dead = object()
    pool.actors, pool._new, pool.weights, pool.catch_up = [dead], lambda slot: fresh, (7, ["ref"], "sum"), None
    with pytest.raises(LearnerDied, match="learner rank 0 died"):
        asyncio.run(pool.replace(0, dead))
    assert pool.actors == [fresh]


@pytest.mark.parametrize("share", [0.5, 2 / 3, 0.75, 0.3])
def test_mix_rl_rolls_out_its_share_of_fold_steps_spread_evenly(share):
    modes = [mix_mode(step, share) for step in range(600)]
    assert modes.count("fold") == round(600 * share)
    # Evenly: every window of steps holds its share of Fold steps to within one.
    window = 12
    assert all(abs(modes[i:i + window].count("fold") - window * share) <= 1 for i in range(600 - window))
    if share == 0.5:
        assert modes[:4] == ["unfold", "fold", "unfold", "fold"]
