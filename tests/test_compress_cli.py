"""`accordion compress` end to end on a small scale: `accordion data` traces -> train (MLflow, resume) -> apply -> bench, and the
rule labeler on real GSM8K solutions. A real (small) token classifier is trained; nothing is mocked."""
import json
import sqlite3
from pathlib import Path

import pytest

import cli
from compress.spans import read_trace
from tasks.files import read_jsonl
from tasks.format import BUDGET_TOKENS, parse_trace

pytestmark = pytest.mark.system  # a real MLflow store and a trained model: ~35 s

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = ["task.train_size=400", "task.eval_size=40", "compress.train_traces=300", "compress.eval_traces=40",
         "compress.hidden_size=64", "compress.save_every=10"]


def run(*argv: str) -> None:
    assert cli.main(["compress", *argv]) == 0


@pytest.fixture(scope="module")
def compressor(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    run("train", "--data", "builtin", "--out", str(out / "model"), *SMALL, "compress.epochs=2")
    return out / "model"


def test_training_logs_to_mlflow_and_resumes_where_it_stopped(compressor, capsys):
    state = json.loads((compressor / "training_state.json").read_text())
    metrics = json.loads((compressor / "metrics.json").read_text())
    # Learned after 38 steps: random keep scores would give F1 near the ratio itself (0.2 and 0.8).
    assert metrics["f1"]["20"] > 0.5 and metrics["f1"]["80"] > 0.88, metrics
    assert metrics["parse_ok"] == 1.0 and metrics["within_band"] >= 0.9
    with sqlite3.connect(compressor / "mlflow.db") as db:
        steps = db.execute("select count(*) from metrics where key = 'train/loss'").fetchone()[0]
    assert steps == state["step"]
    capsys.readouterr()
    run("train", "--data", "builtin", "--out", str(compressor), *SMALL, "compress.epochs=3")
    assert f"resuming {compressor} at step {state['step']}" in capsys.readouterr().out
    assert json.loads((compressor / "training_state.json").read_text())["step"] == state["step"] * 3 // 2
    with sqlite3.connect(compressor / "mlflow.db") as db:
        assert db.execute("select count(distinct run_uuid) from metrics").fetchone()[0] == 1


def test_apply_writes_each_trace_at_100_and_every_ratio_within_the_band(compressor, tmp_path, capsys):
    traces = tmp_path / "traces.jsonl"
    assert cli.main(["data", "arithmetic", "--out", str(traces), "--split", "eval", "--limit", "20", *SMALL]) == 0
    run("apply", "--model", str(compressor), "--data", str(traces), "--ratios", "20", "60", "--out", str(tmp_path / "sft.jsonl"))
    printed = capsys.readouterr().out
    assert " 20%: " in printed and " 60%: " in printed and "tokens/s" in printed
    rows = read_jsonl(tmp_path / "sft.jsonl")
    full = {r["question"]: r for r in rows if r["budget"] == 100}
    assert len(full) == 20 and sum(r["budget"] != 100 for r in rows) >= 30
    for row in rows:
        assert row["response"].startswith(BUDGET_TOKENS[row["budget"]]) and parse_trace(row["response"]) is not None
        assert abs(row["ratio"] - row["budget"] / 100) <= 0.05
        # Compression only drops pieces: the steps, their order and the answer stay.
        original = read_trace(full[row["question"]]["response"])
        assert read_trace(row["response"]).answer == original.answer
        assert len(parse_trace(row["response"])[0]) == len(parse_trace(original.response)[0])


def test_bench_reports_the_issue_figures(compressor, tmp_path):
    run("bench", "--model", str(compressor), "--out", str(tmp_path / "b.json"), *SMALL)
    figures = json.loads((tmp_path / "b.json").read_text())
    assert set(figures["f1"]) == {"20", "40", "60", "80"} and figures["traces"] == 40
    assert {"within_band", "parse_ok", "cpu", "precision"} <= set(figures)


@pytest.mark.skipif(not (DATA / "gsm8k_train.jsonl").is_file(), reason="needs ../shared/data")
def test_gsm8k_traces_labelled_by_rule_train_a_compressor(tmp_path):
    gsm8k = ["task.name=gsm8k", f"task.data_dir={DATA}", "compress.eval_traces=10", "compress.hidden_size=32",
             "compress.epochs=1"]
    assert cli.main(["data", "gsm8k", "--out", str(tmp_path / "traces.jsonl"), "--limit", "60", *gsm8k]) == 0
    run("label", "--data", str(tmp_path / "traces.jsonl"), "--out", str(tmp_path / "labels.jsonl"))
    labelled = read_jsonl(tmp_path / "labels.jsonl")
    assert len(labelled) == 60 and all(row["keep"] for row in labelled)
    run("train", "--data", str(tmp_path / "labels.jsonl"), "--out", str(tmp_path / "model"), *gsm8k)
    run("apply", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "traces.jsonl"), "--out",
        str(tmp_path / "sft.jsonl"), "--ratios", "40")
    assert all(parse_trace(r["response"]) for r in read_jsonl(tmp_path / "sft.jsonl"))
