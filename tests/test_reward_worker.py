import time

import pytest
import ray

from configs.schema import RewardConfig
from rewards.worker import RewardPool
from tasks.format import render_trace

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def batch(n):
    # Every fourth answer hangs sympy; the rest alternate right and wrong.
    answers = ["2^{2^{30}}" if i % 4 == 3 else str(i + i % 2) for i in range(n)]
    return [{"response": render_trace([("a", "b")], f"\\boxed{{{a}}}"), "answer": str(i), "id": i}
            for i, a in enumerate(answers)]


def test_pool_scores_a_batch_in_order_through_hangs(local_ray):
    pool = RewardPool(RewardConfig(processes=1, timeout_s=0.5), workers=2)
    try:
        scored = pool.score(batch(16))
        assert [item["id"] for item in scored] == list(range(16))
        assert [item["correct"] for item in scored] == [i % 4 in (0, 2) for i in range(16)]
        assert [item["timed_out"] for item in scored] == [i % 4 == 3 for i in range(16)]
        stats = pool.stats()
        assert [s["alive"] for s in stats] == [1, 1] and sum(s["timeouts"] for s in stats) == 4
        assert max(s["max_call_s"] for s in stats) <= 0.5 * 2  # 1.5x is the spec; slack for a loaded CI box
    finally:
        pool.shutdown()


def test_a_dead_worker_is_restarted_and_its_chunk_rescored(local_ray):
    pool = RewardPool(RewardConfig(processes=1, timeout_s=0.5), workers=2)
    try:
        pool.stats()  # both actors up, so the kill lands mid-chunk, not during start-up
        refs = pool.score_async(batch(16))
        time.sleep(0.5)  # mid-chunk: each chunk holds two hangs of 0.5 s
        ray.kill(pool.workers[0], no_restart=False)
        scored = [item for chunk in ray.get(refs, timeout=120) for item in chunk]
        assert [item["id"] for item in scored] == list(range(16))
        assert [item["correct"] for item in scored] == [i % 4 in (0, 2) for i in range(16)]
    finally:
        pool.shutdown()
