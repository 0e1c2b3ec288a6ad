"""The Fold protocol on hand-written segments: chains, malformed segments, limits, accounting."""
import pytest

from actors.fold import (
    AUTO, FoldChain, Limits, RolloutRequest, Segment, parse_segment, too_long, unfold_trajectory, unwritable_tokens,
)
from tasks.format import (
    BUDGET_TOKENS, FORMAT_TOKENS, POLICY_TOKEN, THINK_OPEN, count_tokens, fold_context, fold_segments, parse_trace,
    render_trace,
)

LIMITS = Limits(segment_tokens=64, max_segments=4, max_prompt_tokens=100, max_summary_tokens=8)
STEPS = [("3 + 4 = 7", "x = 7"), ("7 - 2 = 5", "x = 5")]
ANSWER = "the answer is \\boxed{5}"


def seg(text, index=0, finish="stop", prompt=10, version=0):
    n = count_tokens(text) + 1  # +1: the stop tag or EOS
    return Segment("t", index, list(range(prompt)), list(range(n)), [-0.5] * n, version, finish, text)


def run(texts, budget=None, limits=LIMITS, prompt_lengths=None):
    """Drive a chain with decoded segment texts (a text ending in </step> stopped at the step tag)."""
    chain = FoldChain(RolloutRequest("t", "q", budget=budget), limits, count_tokens)
    contexts = []
    for i, text in enumerate(texts):
        contexts.append(chain.context())
        if not chain.fits(prompt_lengths[i] if prompt_lengths else 10):
            break
        if not chain.add(seg(text, i, "length" if text.endswith("...") else "stop"), text.endswith("</step>")):
            break
    return chain.trajectory(), contexts


@pytest.mark.parametrize("budget", [None, 40])
def test_gold_fold_segments_answer_and_rebuild_the_unfold_response(budget):
    pairs = fold_segments(STEPS, ANSWER, budget)
    traj, contexts = run([s for _, s in pairs], budget)
    assert (traj.status, traj.reason) == ("answered", "answered at EOS")
    assert contexts == [c for c, _ in pairs]  # the generator's contexts are exactly fold_segments'
    assert traj.response == render_trace(STEPS, ANSWER, budget)
    assert parse_trace(traj.response) == (STEPS, ANSWER)
    assert traj.chosen_budget == budget


def test_contexts_hold_summaries_not_reasoning():
    pairs = fold_segments(STEPS, ANSWER)
    _, contexts = run([s for _, s in pairs])
    assert "3 + 4" not in contexts[1] and "x = 7" in contexts[1]
    assert contexts[2] == fold_context(["x = 7", "x = 5"])


def test_decoded_text_without_spaces_before_tags_parses_the_same():
    traj, _ = run([" 3 + 4 = 7<step> x = 7</step>", "</think> the answer is \\boxed{7}"])
    assert traj.status == "answered" and parse_trace(traj.response)[0] == [("3 + 4 = 7", "x = 7")]


def test_accounting():
    traj, _ = run([" a b <step> s </step>", " c <step> t </step>", " </think> 5"])
    assert traj.segment_tokens == [4, 3, 2] and traj.generated_tokens == 9  # count_tokens + the stop token
    assert traj.peak_context == 10 + 4 and traj.unfold_context == 10 + 9 and traj.versions == [0, 0, 0]


@pytest.mark.parametrize("text,stopped,reason", [
    ("", True, "empty segment"),
    ("   ", False, "empty segment"),
    (" r <step> </step>", True, "missing summary"),
    (" r <step> a <step> b </step>", True, "exactly one <step>"),
    (" r </step>", True, "exactly one <step>"),
    (" r <step> a </think> </step>", True, "no other tags"),
    (" r <step> a", False, "ended without </think>"),
    (" more reasoning </think> 5", False, "not closed by a step summary"),
    (" </think> 5 <step>", False, "format tags in the answer"),
    (" </think>  ", False, "empty answer"),
])
def test_malformed_segments(text, stopped, reason):
    parsed = parse_segment(text, "stop", stopped, first=False, policy=False)
    assert parsed.kind == "malformed" and reason in parsed.reason


def test_malformed_segment_ends_the_chain():
    traj, _ = run([" a <step> s </step>", " b <step> </step>", " </think> 5"])
    assert traj.status == "malformed" and "missing summary" in traj.reason and len(traj.segments) == 2


def test_segment_token_limit_is_unfinished():
    traj, _ = run([" a <step> s </step>", " b c d ..."])
    assert traj.status == "unfinished" and "token limit" in traj.reason


def test_segment_count_limit_is_unfinished():
    traj, _ = run([" a <step> s </step>"] * 6)
    assert traj.status == "unfinished" and "segment limit 4" in traj.reason and len(traj.segments) == 4


def test_prompt_limit_is_unfinished_before_generating():
    traj, _ = run([" a <step> s </step>", " b <step> t </step>"], prompt_lengths=[50, 101])
    assert traj.status == "unfinished" and "folded prompt of 101" in traj.reason and len(traj.segments) == 1


def test_long_summary_is_malformed():
    traj, _ = run([" a <step> one two three four five six seven eight nine </step>"])
    assert traj.status == "malformed" and "summary of 9 tokens exceeds 8" in traj.reason


def test_policy_mode_reads_the_chosen_budget():
    traj, contexts = run(["<COMP_40> <think> a <step> s </step>", " </think> 5"], budget=AUTO)
    assert contexts == ["", fold_context(["s"], 40)]
    assert traj.status == "answered" and traj.chosen_budget == 40 and traj.budget == AUTO
    assert parse_trace(traj.response) == ([("a", "s")], "5")
    bad, _ = run([" a <step> s </step>"], budget=AUTO)
    assert bad.status == "malformed" and "policy mode" in bad.reason


def test_only_policy_modes_first_segment_may_write_a_budget_and_think():
    opening = {*BUDGET_TOKENS.values(), THINK_OPEN}
    for budget, segment in [(None, 0), (40, 0), (None, 3), (AUTO, 1)]:
        assert set(unwritable_tokens(budget, segment)) == opening | {POLICY_TOKEN}
    assert unwritable_tokens(AUTO, 0) == (POLICY_TOKEN,)
    assert not set(unwritable_tokens(None, 0)) & {"<step>", "</step>", "</think>"} and opening < set(FORMAT_TOKENS)


def test_unfold_status():
    request = RolloutRequest("t", "q", mode="unfold", budget=20)
    body = render_trace(STEPS, ANSWER, 20)[len(fold_context([], 20)):]
    assert unfold_trajectory(request, seg(body)).status == "answered"
    assert unfold_trajectory(request, seg(body, finish="length")).status == "unfinished"
    assert unfold_trajectory(request, seg(" a <step> s </think> 5")).status == "malformed"
    assert unfold_trajectory(request, seg("")).reason == "malformed: empty segment"
    long = too_long(request, 600, 512)
    assert (long.status, long.segments, long.peak_context) == ("unfinished", [], 0) and "600" in long.reason


def test_bad_requests():
    with pytest.raises(ValueError, match="mode"):
        RolloutRequest("t", "q", mode="both")
    with pytest.raises(ValueError, match="budget 30"):
        RolloutRequest("t", "q", budget=30)


def test_model_folder_without_step_tokens_is_refused_at_start_up(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from actors.generator import Generator, ModelFolderError
    from configs.schema import GeneratorConfig, ModelConfig
    from models.build import build_tiny_model

    path = build_tiny_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1,
                                        intermediate_size=32), tmp_path / "m")
    bare = Tokenizer(models.WordLevel({"<unk>": 0, "x": 1}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    for f in path.glob("tokenizer*"):
        f.unlink()
    PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="<unk>").save_pretrained(path)
    with pytest.raises(ModelFolderError, match="no single token for <think> </think> <step> </step>"):
        Generator(path, GeneratorConfig())
    with pytest.raises(ModelFolderError, match="no config.json"):
        Generator(tmp_path, GeneratorConfig())
