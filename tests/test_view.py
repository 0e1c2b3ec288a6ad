"""`accordion view`: trajectory records from real Fold/Unfold chains, the page rendered from them (escaped,
filters, what Fold saw), bad files, the command on a run folder, and the page in a real headless Chromium."""
import base64
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

import cli
from actors.fold import AUTO, FoldChain, Limits, RolloutRequest, Segment, unfold_trajectory
from evals.traces import read_records, split_steps, trajectory_record
from tasks.files import write_jsonl
from evals.view import render_view, write_view
from tasks.files import DataFileError
from tasks.format import count_tokens, fold_context, fold_segments, render_trace

LIMITS = Limits(segment_tokens=64, max_segments=6, max_prompt_tokens=200, max_summary_tokens=16)
QUESTION = "x = 47 . op 1 : + 5 . op 2 : - 3 . op 3 : + 10 . what is x ?"
STEPS = [("op 1 : + 5 . 47 + 5 = 52", "after op 1 x = 52"), ("op 2 : - 3 . 52 - 3 = 49", "after op 2 x = 49"),
         ("op 3 : + 10 . 49 + 10 = 59", "after op 3 x = 59")]
ANSWER = "the answer is \\boxed{59}"
HOSTILE = "<script>window.pwned=1</script>"
OTHER = "x = 12 . op 1 : + 9 . op 2 : - 4 . what is x ?"


def seg(tid, index, text, version=0, last=None, finish="stop"):
    n = count_tokens(text) + 1  # +1: the stop tag or EOS
    return Segment(tid, index, list(range(20 + 6 * index)), list(range(n)), [-0.5] * n, version, finish, text, last)


def fold(tid, question, texts, budget=40, versions=None, finish="stop"):
    """A Fold trajectory from decoded segment texts, driven through the real chain (the last text ends
    with `finish`; `versions`: (version, last_version) per segment)."""
    chain = FoldChain(RolloutRequest(tid, question, budget=budget), LIMITS, count_tokens)
    for k, text in enumerate(texts):
        assert chain.fits(20 + 6 * k)
        version, last = (versions or [(0, 0)] * len(texts))[k]
        if not chain.add(seg(tid, k, text, version, last, finish if k == len(texts) - 1 else "stop"),
                         text.endswith("</step>")):
            break
    return chain.trajectory()


def records():
    """Three Fold and one Unfold trajectory of QUESTION (one Fold interrupted by a weight update, the Unfold
    one hostile) and a cut-off policy-mode Fold trajectory of OTHER."""
    texts = [s for _, s in fold_segments(STEPS, ANSWER, 40)]
    ok = fold("f0", QUESTION, texts, versions=[(3, 3)] * 4)
    interrupted = fold("f1", QUESTION, texts, versions=[(3, 3), (3, 4), (4, 4), (4, 4)])
    hostile = [STEPS[0], (STEPS[1][0], HOSTILE), STEPS[2]]
    text = render_trace(hostile, 'the answer is <img src=x onerror="window.pwned=2">', 40)
    unfold = unfold_trajectory(RolloutRequest("u0", QUESTION, "unfold", 40),
                               seg("u0", 0, text[len(fold_context([], 40)):], 3, 3))
    cut = fold("f2", OTHER, ["<COMP_60> <think> op 1 : + 9 . 12 + 9 = 21 <step> after op 1 x = 21 </step>",
                             " op 2 : - 4 . 21 - 4 ="], budget=AUTO, finish="length")
    return [trajectory_record(ok, source="eval", answer="59", correct=True, greedy=True, step=3),
            trajectory_record(interrupted, source="eval", answer="59", correct=False, step=3),
            trajectory_record(unfold, source="eval", answer="59", correct=True, step=3),
            trajectory_record(cut, source="rollout", answer="17", correct=False, reward=-0.5,
                              components={"correct": 0.0, "calibration": -0.5}, step=3)]


HAND = {"id": "h0", "question": OTHER, "mode": "unfold", "final": "the answer is \\boxed{17}", "budget": None,
        "steps": [{"reasoning": "12 + 9 = 21", "summary": "after op 1 x = 21"},
                  {"reasoning": "21 - 4 = 17", "summary": "after op 2 x = 17"}]}


def test_a_fold_record_has_one_step_per_segment_then_the_answer():
    ok, interrupted, unfold, cut = records()
    assert [(s["reasoning"], s["summary"]) for s in ok["steps"]] == STEPS and ok["final"] == ANSWER
    assert [s["segment"] for s in ok["steps"]] == [0, 1, 2] and len(ok["segments"]) == 4
    assert (ok["status"], ok["mode"], ok["budget"], ok["chosen"], ok["greedy"]) == ("answered", "fold", 40, 40, True)
    assert ok["peak_context"] < ok["unfold_context"]
    assert [(s["version"], s["last_version"]) for s in interrupted["steps"]] == [(3, 3), (3, 4), (4, 4)]
    assert [s["segment"] for s in unfold["steps"]] == [0, 0, 0] and unfold["steps"][1]["summary"] == HOSTILE
    # Cut off inside step 2: an unfinished step, and the budget the policy chose.
    assert cut["status"] == "unfinished" and cut["steps"][-1] == {
        "reasoning": "op 2 : - 4 . 21 - 4 =", "summary": None, "segment": 1, "version": 0, "last_version": 0}
    assert (cut["budget"], cut["chosen"], cut["final"]) == ("auto", 60, "")


def test_records_survive_the_jsonl_round_trip(tmp_path):
    rs = [*records(), HAND]
    assert read_records(write_jsonl(tmp_path / "evals" / "step_3.jsonl", rs)) == rs


def test_the_page_shows_summaries_folded_reasoning_and_every_header_fact():
    html = render_view([*records(), HAND], "run/evals/step_3.jsonl")
    for _, summary in STEPS:
        assert f"<summary>{summary}" in html
    assert "<pre>op 1 : + 5 . 47 + 5 = 52</pre>" in html  # reasoning folded in the step's <details>
    assert html.count("(unfinished step)") == 1
    assert 'class="badge ok">correct' in html and 'class="badge bad">wrong' in html
    assert "reward <b>-0.5</b> (correct 0, calibration -0.5)" in html
    assert "budget <b>auto</b> → chose <b>60</b>" in html and "greedy" in html and "sampled" in html
    assert "segment hit its token limit" in html
    # Segment 1 of f1 went on under version 4: marked in the header and on its step.
    assert html.count('title="a weight update interrupted segment 1">v3→4') == 2
    assert "5</b> trajectories of <b>2</b> questions" in html
    # Accuracy as the report counts it: sampled trajectories only (the greedy Fold one is shown, not counted),
    # per budget where a mode has several (a budget sweep), else per mode.
    assert "Fold, budget 40: <b>2</b>,\nsampled accuracy <b>0.0 %</b> over 1" in html
    assert "Fold, budget auto: <b>1</b>,\nsampled accuracy <b>0.0 %</b>" in html
    assert "Unfold, budget 40: <b>1</b>,\nsampled accuracy <b>100.0 %</b>" in html
    one_budget = render_view([r for r in records() if r["budget"] == 40], "run/evals/step_3.jsonl")
    assert "Fold: <b>2</b>,\nsampled accuracy <b>0.0 %</b> over 1" in one_budget


def test_model_text_is_escaped_and_only_the_pages_own_script_may_run():
    html = render_view(records(), HAND["question"])
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html and "window.pwned=1</script>" not in html
    assert "&lt;img src=x onerror=&#34;window.pwned=2&#34;&gt;" in html and "<img" not in html
    script = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(script) == 1 and not re.search(r"<[^>]+\b(?:src|href)=", html)  # nothing to load
    digest = base64.b64encode(hashlib.sha256(script[0].encode()).digest()).decode()
    assert f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'" in html


def test_fold_and_unfold_of_a_question_sit_side_by_side_with_what_fold_saw():
    html = render_view([*records(), HAND], "t")
    first, second = html.split('<section class="question">')[1:]
    assert first.index('data-mode="fold"') < first.index('data-mode="unfold"') and QUESTION in first
    assert [m for m in re.findall(r'data-mode="(\w+)"', second)] == ["fold", "unfold"] and OTHER in second
    saw = re.findall(r'<details class="saw">.*?<pre>(.*?)</pre>', first, re.S)
    assert len(saw) == 2  # Fold trajectories only
    summaries = " ".join(f"&lt;step&gt; {s} &lt;/step&gt;" for _, s in STEPS)
    assert saw[0] == f"{QUESTION} ⟶ &lt;COMP_40&gt; &lt;think&gt; {summaries}" and "47 + 5" not in saw[0]


def test_filters_offer_the_budgets_and_outcomes_present():
    html = render_view([*records(), HAND], "t")
    budgets = re.search(r'<select name="budget">(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'<option value="(\w*)">', budgets) == ["", "40", "auto", "none"]
    assert '<option value="?">unknown</option>' in html  # HAND has no correctness
    assert '<option value="?">' not in render_view(records(), "t")
    assert 'data-mode="fold" data-correct="0" data-budget="auto"' in html
    assert '<b id="shown">5</b> of 5 shown' in html


def test_a_thousand_trajectories_render_fast_into_a_sane_file(tmp_path):
    rs = [dict(r, id=f"{r['id']}-{k}", question=f"{r['question']} #{k}") for k in range(250) for r in records()]
    start = time.perf_counter()
    out = write_view(rs, tmp_path / "view.html", "1000")
    assert time.perf_counter() - start < 5
    assert 100_000 < out.stat().st_size < 10_000_000 and out.read_text().count("<article") == 1000


def test_an_empty_file_renders_an_empty_page():
    assert "no trajectories" in render_view([], "empty")


@pytest.mark.parametrize("response, steps, final", [
    ("<COMP_40> <think> a <step> s </step> b <step> t </step> </think> the answer is 3",
     [("a", "s"), ("b", "t")], "the answer is 3"),
    ("<think> a <step> s </step> b <step> cut summ", [("a", "s"), ("b <step> cut summ", None)], ""),
    ("<think> a <step> s </step> b </think> 3", [("a", "s"), ("b", None)], "3"),  # reasoning never summarized
    ("a <step> s </step> </think> 3", [("a", "s")], "3"),  # no <think>: read anyway
    ("<think> </think> 3", [], "3"),
    ("<think> <step> </step>", [("", "")], ""),
    ("", [], ""),
])
def test_split_steps_reads_malformed_and_unfinished_responses_leniently(response, steps, final):
    assert split_steps(response) == (steps, final)


@pytest.mark.parametrize("line, problem", [
    ('{"id": "x", "question": "q", "mode": "fold", "steps": []}', "not a trajectory record: final: Field required"),
    ('{"id": "x", "question": "q", "mode": "both", "steps": [], "final": ""}', "mode: Input should be"),
    ('[1, 2]', "not a trajectory record"),
    ('{"id": "x", "question": ', "malformed JSON"),
])
def test_a_line_that_is_not_a_trajectory_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(HAND) + "\n\n" + line + "\n")
    with pytest.raises(DataFileError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(problem)):
        read_records(path)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(HAND).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataFileError, match=re.escape(f"{path}:2: not UTF-8")):
        read_records(path)


@pytest.fixture
def run(tmp_path):
    """A run folder with an evaluation at step 3 and rollout samples of step 5."""
    ok, interrupted, unfold, cut = records()
    write_jsonl(tmp_path / "run" / "evals" / "step_3.jsonl", [ok, interrupted, unfold])
    write_jsonl(tmp_path / "run" / "samples" / "step_5.jsonl", [cut])
    return tmp_path / "run"


def test_a_run_folder_shows_its_newest_evaluation_then_the_step_asked_for(run, capsys):
    assert cli.main(["view", str(run)]) == 0
    assert capsys.readouterr().out == (f"wrote {run}/view.html: 3 trajectories of 1 questions from "
                                       f"{run}/evals/step_3.jsonl\n")
    assert "after op 3 x = 59" in (run / "view.html").read_text()
    (run / "evals" / "step_10.jsonl").write_text("")  # newest by number, not by name
    assert cli.main(["view", str(run), "--out", str(run / "empty.html")]) == 0
    assert "0 trajectories" in capsys.readouterr().out
    assert cli.main(["view", str(run), "--step", "5", "--out", str(run / "s5.html")]) == 0
    assert f"1 trajectories of 1 questions from {run}/samples/step_5.jsonl" in capsys.readouterr().out


def test_a_file_is_viewed_beside_it_and_limit_keeps_whole_questions(run, capsys):
    path = write_jsonl(run / "all.jsonl", [*records(), HAND])
    assert cli.main(["view", str(path), "--limit", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {run}/view.html: 3 trajectories of 1 questions")


def test_samples_stand_in_when_a_run_has_no_evaluation_yet(run, capsys):
    (run / "evals" / "step_3.jsonl").unlink()
    assert cli.main(["view", str(run)]) == 0
    assert f"from {run}/samples/step_5.jsonl" in capsys.readouterr().out


def test_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"accordion view: error: {tmp_path}/nope: no such trajectory file or run folder\n"


def test_a_folder_without_trajectories_is_named(tmp_path, capsys):
    (tmp_path / "evals").mkdir()
    assert cli.main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"accordion view: error: {tmp_path}: no trajectories: neither evals/step_N.jsonl nor "
                          "samples/step_N.jsonl") and err.count("\n") == 1


def test_a_missing_step_lists_the_steps_there_are(run, capsys):
    assert cli.main(["view", str(run), "--step", "4"]) == 2
    assert capsys.readouterr().err == (f"accordion view: error: {run}: no evals/step_4.jsonl or samples/step_4.jsonl "
                                       "(evals/ has steps 3; samples/ has steps 5)\n")
    with pytest.raises(SystemExit):  # --step names a file of a run folder
        cli.main(["view", str(write_jsonl(run / "t.jsonl", [HAND])), "--step", "3"])


def test_a_bad_line_stops_the_command_with_file_and_line(run, capsys):
    path = run / "bad.jsonl"
    path.write_text(json.dumps(HAND) + '\n{"id": "x"}\n')
    assert cli.main(["view", str(path)]) == 2
    assert capsys.readouterr().err == (f"accordion view: error: {path}:2: not a trajectory record: question: "
                                       "Field required\n")
    assert not (run / "view.html").exists()


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.system
def test_the_page_in_headless_chromium(run, tmp_path, capsys):
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium: apt-get install chromium (CI's .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    write_jsonl(run / "evals" / "step_3.jsonl", [*records(), HAND])
    assert cli.main(["view", str(run)]) == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto((run / "view.html").as_uri())
            first = page.locator("article.traj").first
            assert first.get_by_text("after op 2 x = 49", exact=True).is_visible()
            reasoning = first.get_by_text("op 2 : - 3 . 52 - 3 = 49", exact=True)
            assert reasoning.is_hidden()
            first.get_by_text("after op 2 x = 49", exact=True).click()
            assert reasoning.is_visible()
            # The hostile summary is shown as text and never ran, nor did its <img onerror>.
            assert page.evaluate("window.pwned") is None
            assert page.get_by_text(HOSTILE, exact=True).is_visible()
            assert page.locator("#shown").inner_text() == "5"
            page.select_option("select[name=mode]", "fold")
            assert page.locator("#shown").inner_text() == "3"
            assert page.locator("article.unfold").first.is_hidden() and first.is_visible()
            page.select_option("select[name=budget]", "none")
            assert page.locator("#shown").inner_text() == "0" and page.locator("section.question").first.is_hidden()
            page.select_option("select[name=mode]", "")
            page.select_option("select[name=budget]", "")
            shot = page.screenshot(path=str(tmp_path / "view.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "view.png").stat().st_size > 20_000 and shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []  # no script error, no CSP refusal
