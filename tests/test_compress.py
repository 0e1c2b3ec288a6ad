"""The compressor's pure half: pieces, atoms, top-k by ratio, labels; and its data paths and errors."""
import json

import pytest

from compress.labels import KEPT, builtin_examples, levels_from_spans, rule_spans, span_examples
from compress.spans import RATIOS, TraceError, compress, measured_ratio, read_trace, render, select
from configs.schema import TaskConfig
from tasks.arithmetic import gold_trace, lax_steps, problems
from tasks.dataset import gsm8k_trace
from tasks.files import DataFileError
from tasks.format import STEP_CLOSE, STEP_OPEN, parse_trace, reasoning_tokens

TASK = TaskConfig(train_size=50, eval_size=20)
TRACE = "<think> Natalia sold 48/2 = 24 clips in May. <step> 24 clips in May. </step> 48 + 24 = 72 . <step> 72 </step> </think> the answer is \\boxed{72}"


def oracle(example):
    """Scores that rank pieces exactly by their labels."""
    return [0.0 if level is None else 5 - level / 20 for level in example.levels]


def test_a_number_is_one_atom_and_tags_have_none():
    trace = read_trace(TRACE)
    atom = {piece: a for piece, a in zip(trace.pieces, trace.atoms)}
    assert trace.atoms[trace.pieces.index(" 4")] == trace.atoms[trace.pieces.index("8")]
    assert atom[" <step>"] == atom[" </step>"] == -1
    assert trace.counted == reasoning_tokens(TRACE)


@pytest.mark.parametrize("ratio", RATIOS)
def test_top_k_keeps_the_ratio_every_tag_and_whole_numbers(ratio):
    trace = read_trace(TRACE)
    scores = [float(i % 7) for i in range(len(trace.pieces))]  # arbitrary order
    keep = select(trace, scores, ratio)
    assert sum(k for k, a in zip(keep, trace.atoms) if a >= 0) == round(trace.counted * ratio / 100)
    assert all(k for k, a in zip(keep, trace.atoms) if a < 0)
    for a in set(trace.atoms) - {-1}:
        assert len({k for k, b in zip(keep, trace.atoms) if b == a}) == 1, "half a number kept"
    out = compress(trace, scores, ratio)
    assert out.startswith(f"<COMP_{ratio}> <think>") and parse_trace(out) is not None
    assert abs(measured_ratio(trace, out) - ratio / 100) <= 0.05
    assert out.endswith("the answer is \\boxed{72}")


def test_top_k_keeps_the_highest_scores():
    trace = read_trace(TRACE)
    scores = [0.0] * len(trace.pieces)
    for i, piece in enumerate(trace.pieces):
        scores[i] = 1.0 if piece in (" clips", " May") else 0.0
    kept = [p for p, k in zip(trace.pieces, select(trace, scores, 20)) if k and not p.strip().startswith("<")]
    assert {" clips", " May"} <= set(kept)


def test_numbers_never_run_together_when_what_was_between_them_is_dropped():
    trace = read_trace("<think> 48 / 2 <step> x </step> </think> 24")
    keep = [p.strip() != "/" for p in trace.pieces]
    assert "48 2" in render(trace, keep, None)


def test_gold_labels_align_with_the_pieces_and_top_k_by_them_is_the_gold_trace():
    for example, problem in zip(builtin_examples(TASK, "eval", 10), problems(TASK, "eval")):
        lax = lax_steps(problem, TASK.lax_fraction, TASK.seed)
        for ratio in RATIOS:
            keep = select(example.trace, oracle(example), ratio)
            gold = example.gold_keep(ratio)
            same = sum(k == g for k, g, a in zip(keep, gold, example.trace.atoms) if a >= 0)
            assert same / example.trace.counted > 0.9
            assert reasoning_tokens(gold_trace(problem, lax, ratio)) == sum(
                g for g, a in zip(gold, example.trace.atoms) if a >= 0)


def test_levels_nest_summaries_survive_every_ratio():
    example = builtin_examples(TASK, "train", 1)[0]
    inside, summary_levels = False, []
    for piece, level in zip(example.trace.pieces, example.levels):
        if piece.strip() in (STEP_OPEN, STEP_CLOSE):
            inside = piece.strip() == STEP_OPEN
        elif inside:
            summary_levels.append(level)
    assert summary_levels and set(summary_levels) == {KEPT}
    assert {20, 40, 60, 80, 100} >= set(example.levels) - {None} and len(set(example.levels) - {None}) >= 4


def test_keep_spans_keep_touched_pieces_and_whole_numbers():
    trace = read_trace(TRACE)
    start = TRACE.index("48/2") + 1  # inside the number 48
    levels = levels_from_spans(trace, [(start, start + 1)])
    kept = [p for p, level in zip(trace.pieces, levels) if level == KEPT]
    assert kept == [" 4", "8"]
    with pytest.raises(TraceError, match=r"keep span \[0, 999\] falls outside"):
        levels_from_spans(trace, [(0, 999)])


def test_rule_labeler_keeps_summaries_equations_and_numbers_drops_narration():
    trace = read_trace(TRACE)
    kept = "".join(p for p, level in zip(trace.pieces, levels_from_spans(trace, rule_spans(trace))) if level == KEPT)
    assert "48/2 = 24" in kept and "48 + 24 = 72" in kept and "24 clips in May." in kept
    dropped = "".join(p for p, level in zip(trace.pieces, levels_from_spans(trace, rule_spans(trace))) if level == 100)
    assert "Natalia sold" in dropped


def test_gsm8k_solutions_become_step_traces():
    trace = gsm8k_trace("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072")
    steps, answer = parse_trace(trace)
    assert steps[0] == ("Natalia sold 48/2 = 24 clips in May.", "24 clips in May.")
    assert steps[1][1] == "72 clips." and answer == "the answer is \\boxed{1072}"


def test_bad_labels_files_name_the_file_and_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    good = {"question": "q", "response": TRACE, "keep": [[0, 5]]}
    for bad, message in [({**good, "response": "<think> no steps </think> 3"}, "not a step trace"),
                         ({**good, "keep": [[10, 5000]]}, "falls outside the response")]:
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataFileError, match=rf"labels.jsonl:3: .*{message}"):
            span_examples(path)
    path.write_text(json.dumps(good) + "\n")
    assert len(span_examples(path)) == 1


def test_an_unknown_ratio_is_refused_by_name(capsys):
    from cli import main

    with pytest.raises(SystemExit) as exit:
        main(["compress", "apply", "--model", "m", "--data", "d", "--out", "o", "--ratios", "30"])
    assert exit.value.code == 2
    assert "--ratios: invalid choice: 30" in capsys.readouterr().err


def test_a_step_trace_file_names_the_line_without_step_tags(tmp_path):
    from tasks.dataset import read_traces
    from tasks.files import write_jsonl

    good = {"question": "q", "answer": "72", "response": TRACE}
    path = write_jsonl(tmp_path / "traces.jsonl", [good, {**good, "response": "<think> 48 + 24 = 72 </think> 72"}])
    with pytest.raises(DataFileError, match=r"traces.jsonl:2: .*response: .*not a step trace"):
        read_traces(path)
    with pytest.raises(DataFileError, match=r"traces.jsonl:1: .*budget: .*30 is not a budget"):
        read_traces(write_jsonl(path, [{**good, "budget": 30}]))
