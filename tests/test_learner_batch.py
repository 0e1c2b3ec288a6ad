import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from configs.schema import ModelConfig, OptimConfig, SFTConfig, TaskConfig
from learners.batch import BatchError, Sample, as_samples, collate, split_by_tokens, validate
from learners.learner import clear_stale_build_lock, lr_factor
from learners.sft import TraceStream, trace_samples
from models.build import build_tiny_model
from tasks.arithmetic import gold_trace, lax_steps, problems


@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.integers(1, 4), st.integers(1, 1200))
def test_split_covers_every_sample_once_and_ranks_run_equal_micro_batch_counts(lengths, world, budget):
    plan = split_by_tokens(lengths, world, budget)
    flat = sorted(i for rank in plan for micro in rank for i in micro)
    assert flat == list(range(len(lengths)))
    assert len({len(rank) for rank in plan}) == 1
    for rank in plan:
        for micro in rank:
            if len(micro) > 1:
                assert len(micro) * max(lengths[i] for i in micro) <= budget


def test_a_build_lock_left_by_a_stopped_job_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert not clear_stale_build_lock("op")
    lock = tmp_path / "op" / "lock"
    lock.touch()  # a build under way
    assert not clear_stale_build_lock("op", older_than_s=60) and lock.exists()
    os.utime(lock, (time.time() - 61, time.time() - 61))  # its builder was stopped a minute ago
    assert clear_stale_build_lock("op", older_than_s=60) and not lock.exists()


def test_split_balances_tokens_not_counts():
    plan = split_by_tokens([100, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10], 2, 10_000)
    assert [sum(len(m) for m in rank) for rank in plan] == [1, 10]


def test_validate_names_the_sample_and_field():
    ok = Sample([1, 2], [3, 4], 0.5, old_logprobs=[-1.0, -2.0])
    assert validate([ok, Sample([1] * 10, [2] * 10)], max_length=15) == [1]
    with pytest.raises(BatchError, match="empty batch"):
        validate([], 10)
    with pytest.raises(BatchError, match="sample 1: old_logprobs has 1 values for 2 response tokens"):
        validate([ok, Sample([1], [2, 3], old_logprobs=[-1.0])], 10)
    with pytest.raises(BatchError, match="sample 0: response_ids is empty"):
        validate([Sample([1], [])], 10)
    with pytest.raises(BatchError, match=r"sample 0: unknown key\(s\) \['reward'\]"):
        as_samples([{"prompt_ids": [1], "response_ids": [2], "reward": 1.0}])


def test_collate_aligns_positions_with_the_tokens_they_predict():
    mb = collate([Sample([5, 6, 7], [8, 9], 1.0), Sample([5], [8, 9, 10], -1.0)], pad_id=0)
    assert mb["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert mb["positions"].tolist() == [[2, 3, 0], [0, 1, 2]]
    # The logit at `positions` is the one predicting `response_ids`: input_ids[pos + 1] == response.
    for b in range(2):
        for pos, tok, m in zip(mb["positions"][b], mb["response_ids"][b], mb["mask"][b]):
            if m:
                assert mb["input_ids"][b, pos + 1] == tok
    assert mb["mask"].tolist() == [[1, 1, 0], [1, 1, 1]] and "old_logprobs" not in mb
    dummy = collate([], pad_id=0)
    assert dummy["mask"].sum() == 0 and dummy["input_ids"].shape == (1, 2)


def test_collate_puts_the_budget_choice_advantage_on_response_token_0_only():
    mb = collate([Sample([5], [8, 9, 10], 1.0, first_advantage=-0.5), Sample([5], [8, 9], 2.0)], pad_id=0)
    assert mb["advantage"].tolist() == [[-0.5, 1.0, 1.0], [2.0, 2.0, 0.0]]
    assert mb["choice"].tolist() == [1.0, 0.0]
    with pytest.raises(BatchError, match="sample 0: .*first_advantage nan"):
        validate([Sample([1], [2], 1.0, first_advantage=float("nan"))], 10)


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, decay_steps=10, min_lr_ratio=0.1)
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == 1.0 and lr_factor(14, cfg) == pytest.approx(0.1) and lr_factor(99, cfg) == pytest.approx(0.1)
    assert lr_factor(50, OptimConfig(lr=1.0)) == 1.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = build_tiny_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1, intermediate_size=32),
                            tmp_path_factory.mktemp("tok"))
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("budget", [None, 40])
def test_fold_samples_rebuild_the_unfold_trace_and_loss_covers_responses_only(tokenizer, budget):
    problem = problems(TaskConfig(min_steps=3, max_steps=3), "eval")[0]
    (unfold,) = trace_samples(tokenizer, problem, fold=False, lax_fraction=0.5, budget=budget)
    fold = trace_samples(tokenizer, problem, fold=True, lax_fraction=0.5, budget=budget)
    assert len(fold) == 4  # three steps and the answer segment
    # Unfold prompt + response is the chat prompt followed by the whole gold trace and EOS.
    trace = gold_trace(problem, lax_steps(problem, 0.5, 0), budget or 100, budget)
    assert tokenizer.decode(unfold.prompt_ids + unfold.response_ids, skip_special_tokens=False).endswith(
        tokenizer.decode(tokenizer.encode(trace, add_special_tokens=False)) + "</s>")
    assert sum((s.response_ids for s in fold), []) == unfold.response_ids
    assert fold[0].prompt_ids == unfold.prompt_ids
    # Segment k's prompt holds the summaries before it and none of their reasoning.
    assert "after op 2" in tokenizer.decode(fold[2].prompt_ids) and "ones" not in tokenizer.decode(fold[2].prompt_ids)


@pytest.mark.parametrize("fold", [False, True])
def test_policy_samples_ask_with_comp_auto_and_answer_with_the_budget_token_first(tokenizer, fold):
    from actors.fold import first_context, parse_segment

    problem = problems(TaskConfig(min_steps=2, max_steps=2), "eval")[0]
    samples = trace_samples(tokenizer, problem, fold=fold, budget=40, policy=True)
    fixed = trace_samples(tokenizer, problem, fold=fold, budget=40)
    prompt = tokenizer.decode(samples[0].prompt_ids, skip_special_tokens=False)
    assert prompt.endswith("<COMP_AUTO><|assistant|>") and first_context("auto") == ""
    # The same tokens as the fixed-budget sample, but `<COMP_40> <think>` moved from prompt to response.
    assert samples[0].prompt_ids + samples[0].response_ids == \
        tokenizer.apply_chat_template([{"role": "user", "content": problem.question + " <COMP_AUTO>"}],
                                      add_generation_prompt=True, return_dict=False) + \
        tokenizer.encode(tokenizer.decode(fixed[0].prompt_ids[-2:]) + tokenizer.decode(fixed[0].response_ids),
                         add_special_tokens=False)
    first = tokenizer.decode(samples[0].response_ids)
    assert first.startswith("<COMP_40><think>")
    if fold:  # what the generator's Fold protocol reads from a policy-mode first segment
        assert parse_segment(first, "stop", True, first=True, policy=True).chosen_budget == 40
        # Later contexts carry the chosen budget, as `FoldChain.context` builds them after that choice.
        assert "<COMP_AUTO><|assistant|><COMP_40><think><step> after op 1" in tokenizer.decode(
            samples[1].prompt_ids, skip_special_tokens=False)


def test_trace_stream_depends_only_on_position(tokenizer):
    task, sft = TaskConfig(train_size=50), SFTConfig(fold_fraction=0.5, budgets=(20, 100))
    a, b = TraceStream(tokenizer, task, sft), TraceStream(tokenizer, task, sft)
    assert a.batch(3, 5) == b.batch(3, 5) == [s for i in range(3, 8) for s in b.sample(i)]
    # A second epoch visits every problem again, in a different order.
    first = [tokenizer.decode(a.sample(i)[0].prompt_ids) for i in range(50)]
    second = [tokenizer.decode(a.sample(i)[0].prompt_ids) for i in range(50, 100)]
    strip = lambda p: p.split("<COMP")[0]  # noqa: E731
    assert sorted(map(strip, first)) == sorted(map(strip, second)) and first != second


def test_a_budget_listed_twice_is_drawn_twice_as_often(tokenizer):
    stream = TraceStream(tokenizer, TaskConfig(train_size=50), SFTConfig(budgets=(40, 40, 100)))
    asked = [tokenizer.decode(stream.sample(i)[0].prompt_ids) for i in range(600)]
    forties = sum("<COMP_40>" in p for p in asked)
    assert forties + sum("<COMP_100>" in p for p in asked) == 600 and 360 <= forties <= 440  # 400 +- 5 sigma


def test_a_step_trace_file_trains_as_the_same_samples_with_its_budgets_and_holds_out_its_tail(tokenizer, tmp_path):
    from configs import ConfigError
    from tasks.files import write_jsonl

    task = TaskConfig(min_steps=2, max_steps=3)
    rows = [{"question": p.question, "answer": str(p.answer), "budget": b,
             "response": gold_trace(p, lax_steps(p, task.lax_fraction, task.seed), b, b)}
            for p in problems(task, "eval")[:10] for b in (40, 100)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    sft = SFTConfig(data=str(path), budgets=(40,), eval_traces=2, fold_fraction=0.5)
    train, held_out = TraceStream(tokenizer, task, sft), TraceStream(tokenizer, task, sft, split="eval")
    assert [r["budget"] for r in train.items] == [40] * 8 and held_out.items == [rows[16], rows[18]]
    for i in range(8):  # the same samples as the gold trace of the problem the prompt asks, at budget 40
        samples = train.sample(i)
        problem = next(p for p in problems(task, "eval") if p.question in tokenizer.decode(samples[0].prompt_ids))
        assert samples == trace_samples(tokenizer, problem, len(samples) > 1, task.lax_fraction, task.seed, 40)
    with pytest.raises(ConfigError, match="sft.data .*: 2 traces with budgets \\[20\\]"):
        TraceStream(tokenizer, task, SFTConfig(data=str(write_jsonl(tmp_path / "few.jsonl", [
            {**rows[0], "budget": 20}, {**rows[1], "budget": 20}])), budgets=(20,), eval_traces=2))
