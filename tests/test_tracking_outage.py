"""Tracking outages cost no training (issue 15): a real `mlflow server` on loopback is stopped and
started again under a Tracker; what it missed arrives late, exactly once, and the run says so."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.tracking import CALL_TIMEOUT_S, OUTAGE_TAG, Tracker, TrackingUnreachable
from configs import ConfigError

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group, so that stopping it also stops its uvicorn worker; one
    worker, since four take several times as long to start on a small machine."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'db.sqlite'}",
             "--default-artifact-root", str(self.root / "art")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise TimeoutError((self.root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def steps_logged(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_unreachable_at_start_is_one_clear_error_in_seconds(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable) as err:
        Tracker({"a": 1}, uri, "outage", spool=tmp_path / "mlflow_spool.jsonl")
    took = time.monotonic() - t0
    assert isinstance(err.value, ConfigError) and took < 10, took
    assert str(err.value) == (f"tracking.uri {uri}: MLflow server unreachable ([Errno 111] Connection refused); "
                              f"start it, or unset tracking.uri to log to sqlite:///{tmp_path.resolve()}/mlflow.db")


@pytest.mark.system
def test_outage_mid_run_is_spooled_and_delivered_once(server, tmp_path, capsys):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    spool = tmp_path / "mlflow_spool.jsonl"
    report = tmp_path / "report.json"
    report.write_text("{}")
    tracker = Tracker({"a": 1}, server.uri, "outage", spool=spool)
    tracker.log({"m": 1, "n": -1}, 1)
    assert tracker.history(("m",)) == {"m": [(1, 1.0)]}
    tracker.log({"m": 2, "n": -2}, 2)
    server.stop()

    took = []
    for step in (3, 4, 5):
        t0 = time.monotonic()
        tracker.log({"m": step, "n": -step}, step)
        took.append(time.monotonic() - t0)
    tracker.tags({"machine": "cpu"})
    tracker.artifact(report)
    print(f"failed log calls took {[round(t, 3) for t in took]} s", file=sys.__stderr__)
    assert max(took) < CALL_TIMEOUT_S
    kept = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [sorted(r) for r in kept] == [["metrics", "run_id"]] * 3 + [["run_id", "tags"],
                                                                       ["artifact", "folder", "run_id"]]
    assert tracker.history(("m",)) == {"m": [(step, float(step)) for step in (1, 2, 3, 4, 5)]}
    assert capsys.readouterr().err.count("unreachable") == 1

    server.start()
    tracker.log({"m": 6, "n": -6}, 6)
    assert not spool.exists()
    assert "is back" in capsys.readouterr().err
    for key in ("m", "n"):
        assert steps_logged(server.uri, tracker.run_id, key) == [1, 2, 3, 4, 5, 6]
    # A batch the server stored before its answer timed out is sent again as the same rows: no duplicate.
    MlflowClient(server.uri).log_batch(tracker.run_id, metrics=[Metric(*row) for row in kept[0]["metrics"]])
    assert steps_logged(server.uri, tracker.run_id, "m") == [1, 2, 3, 4, 5, 6]
    run = MlflowClient(server.uri).get_run(tracker.run_id)
    assert run.data.tags["machine"] == "cpu"
    assert run.data.tags[OUTAGE_TAG] == ("metrics from steps 3-5 were delivered late (3 batches); "
                                         "2 tag or artifact calls were delivered late")
    assert [a.path for a in MlflowClient(server.uri).list_artifacts(tracker.run_id)] == ["report.json"]
    tracker.close()
    assert MlflowClient(server.uri).get_run(tracker.run_id).info.status == "FINISHED"


@pytest.mark.system
def test_server_down_at_close_leaves_spool_for_resume(server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    spool = tmp_path / "mlflow_spool.jsonl"
    tracker = Tracker({"a": 1}, server.uri, "outage", spool=spool)
    tracker.log({"m": 1}, 1)
    server.stop()
    tracker.log({"m": 2}, 2)
    tracker.close()
    assert spool.is_file() and f"kept in {spool}" in capsys.readouterr().err

    server.start()
    resumed = Tracker({}, server.uri, "outage", run_id=tracker.run_id, spool=spool)
    assert not spool.exists()
    assert steps_logged(server.uri, tracker.run_id, "m") == [1, 2]
    resumed.log({"m": 3}, 3)
    resumed.close()
    run = MlflowClient(server.uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[OUTAGE_TAG] == "metrics from steps 2 were delivered late (1 batches)"


def test_held_steps_reach_the_store_once_when_released(tmp_path):
    """`tracking.log_at: checkpoint`: rows wait for their step's checkpoint; those of steps to be redone are
    forgotten; rows sent again after a resume (the checkpoint's `mlflow_rows`) are not stored twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker({"a": 1}, uri, "held", hold=True)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step}, step)
    assert steps_logged(uri, tracker.run_id, "train/loss") == []
    assert [s for s, _ in tracker.history(("train/",))["train/loss"]] == [1, 2, 3]  # the plots see held steps
    tracker.forget(after_step=2)  # a learner died in step 3: it is redone from the checkpoint of step 2
    saved = list(tracker.held)
    tracker.release()
    tracker.log({"train/loss": 0.25}, 3)
    tracker.release()
    resumed = Tracker({}, uri, "held", run_id=tracker.run_id, hold=True)
    resumed.send_rows(json.loads(json.dumps(saved)))  # as read back from state.json
    assert steps_logged(uri, tracker.run_id, "train/loss") == [1, 2, 3]
    assert dict(resumed.history(("train/",))["train/loss"]) == {1: 1.0, 2: 0.5, 3: 0.25}
