"""MLflow tracking: one run per training job, resumable into the same run.

The store defaults to `sqlite:///<run_dir>/mlflow.db`; `MLFLOW_TRACKING_URI` or `tracking.uri`
points it at a server. Metric names are grouped (`reward/*`, `eval/*`, `perf/*`, ...) so the
MLflow UI shows them as sections.

A tracking server that goes away costs no training: a call it cannot take is kept in a spool
(`Tracker(spool=...)`, JSON lines in the run folder) and sent, in order, on a later call, at `close`,
or by the next Tracker of the same run (`--resume`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from configs import ConfigError

CALL_TIMEOUT_S = 5
"""How long one logging call may wait for the server. MLflow's own default (120 s, after 7 retries with
exponential backoff: minutes) would stall a training step for as long as an outage lasts."""
ARTIFACT_TIMEOUT_S = 60
"""An upload waits longer: the server may answer only after writing a checkpoint's shards."""
START_RETRIES = 2
"""At start a refused connection is tried again at once and after 2-3 s (urllib3's backoff with factor 1),
so a server that is just coming up is not reported unreachable, and one that is down is, in seconds."""
OUTAGE_TAG = "tracking.outage"


class TrackingUnreachable(ConfigError):
    """The tracking server does not answer when a job starts. A `ConfigError`, so the CLI prints the one
    line without a traceback: the fix is the server or the config, not the code."""


def tracking_uri(configured: str, run_dir: str | Path) -> str:
    """Config first, then the environment, then a SQLite file in the run folder."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its database (`mlartifacts/`); MLflow's default would be
    `./mlruns` of whatever folder the job was started from. A server decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: MLflow params are flat."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@contextmanager
def bounded_http(timeout_s: int, retries: int = 0) -> Iterator[None]:
    """MLflow's HTTP client takes its timeout and retries from the environment on every request and has
    no per-client setting, so the Tracker narrows them around its own calls and restores them after."""
    wanted = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def network_failure(err: BaseException) -> BaseException | None:
    """The failure to reach the server behind an MLflow error, or None when the server answered and
    rejected the call (a 4xx: a bug to raise, not something to send again later). Refused and timed-out
    connections count, and so do 5xx answers, which MLflow's client turns into a `RetryError`."""
    import requests

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)):
            return seen
        if isinstance(seen, requests.HTTPError) and seen.response is not None and seen.response.status_code >= 500:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def reason(failure: BaseException) -> str:
    """The innermost cause (`[Errno 111] Connection refused`), not urllib3's line of nested wrappers."""
    while True:
        inner = getattr(failure, "reason", None)
        if not isinstance(inner, BaseException):
            inner = failure.__cause__ or next((a for a in failure.args if isinstance(a, BaseException)), None)
        if inner is None:
            return str(failure)
        failure = inner


def step_ranges(steps: set[int]) -> str:
    """`{1, 2, 3, 7}` -> `1-3, 7`."""
    out, ordered = [], sorted(steps)
    for i, step in enumerate(ordered):
        if i and step == ordered[i - 1] + 1:
            out[-1][1] = step
        else:
            out.append([step, step])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in out)


class Tracker:
    """A handle on one MLflow run. `run_id=None` starts a new run with `params` (a config as a nested dict,
    flattened); a given id resumes it.

    It talks to its store through its own `MlflowClient`, never MLflow's process-global active
    run or URI: an SFT stage and an RL job in one process each keep their own store.

    A server that does not answer at start is a `TrackingUnreachable` error, in seconds. One that stops
    answering later is an outage: `log`, `tags` and `artifact` return at once (after at most
    `CALL_TIMEOUT_S`) and keep what they could not send in `spool` (None: in memory, lost if the server is
    still away at `close`); each later call first sends what is kept, in order. Metrics keep their original
    timestamps, so a batch the server stored before its answer timed out is the same row when sent again
    (MLflow's SQL store ignores an identical key, step, timestamp and value): no step is logged twice.
    When everything is through, the run's `tracking.outage` tag says which steps came late.

    With `hold`, `log` keeps metric rows in `held` until `release` (`tracking.log_at: checkpoint`): the RL
    loop releases them once their step is checkpointed, and stores them in the checkpoint's state first, so
    a resumed run sends them again (`send_rows`; a row already stored is the same row)."""

    def __init__(self, params: Mapping[str, Any], uri: str, experiment: str, run_id: str | None = None,
                 run_name: str = "", spool: str | Path | None = None, hold: bool = False):
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client, self._metric, self._tag, self._error = MlflowClient(uri), Metric, RunTag, MlflowException
        self.uri = uri
        self.spool = Path(spool) if spool else None
        self._pending = [json.loads(line) for line in self.spool.read_text().splitlines()] \
            if self.spool and self.spool.is_file() else []
        self._late_steps: set[int] = set()
        self._late_batches = self._late_other = 0
        self._earlier_outages = ""
        self._known: list[tuple[str, float, int, int]] | None = None
        """The metric rows of the last `history` read; with `_recent`, those logged since, and the kept ones,
        what `history` answers while the server is away."""
        self._recent: list[tuple[str, float, int, int]] = []
        self.hold = hold
        self.held: list[tuple[str, float, int, int]] = []
        try:
            with bounded_http(CALL_TIMEOUT_S, START_RETRIES):
                if run_id is None:
                    found = self._client.get_experiment_by_name(experiment)
                    experiment_id = found.experiment_id if found else self._client.create_experiment(
                        experiment, artifact_location=artifact_location(uri))
                    run_id = self._client.create_run(experiment_id, run_name=run_name or None).info.run_id
                    self._client.log_batch(run_id, params=[
                        Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                        for k, v in flatten(params).items()])
                else:
                    self._client.update_run(run_id, status="RUNNING")
                    self._earlier_outages = self._client.get_run(run_id).data.tags.get(OUTAGE_TAG, "")
        except MlflowException as err:
            failure = network_failure(err)
            if failure is None:
                raise
            source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else "tracking.uri"
            folder = self.spool.parent.resolve() if self.spool else "<run folder>"
            raise TrackingUnreachable(
                f"{source} {uri}: MLflow server unreachable ({reason(failure)}); start it, or unset {source} "
                f"to log to sqlite:///{folder}/mlflow.db") from None
        self.run_id = run_id
        if self._pending:
            print(f"tracking: sending {len(self._pending)} calls kept in {self.spool} while {uri} was unreachable",
                  file=sys.stderr)
            self._flush()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        rows = [(k, float(v), now, step) for k, v in metrics.items()]
        if self.hold:
            self.held.extend(rows)
        else:
            self.send_rows(rows)

    def send_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Metric rows `(key, value, timestamp_ms, step)` as they are: sent again, a row is not stored twice."""
        rows = [tuple(row) for row in rows]
        if not rows:
            return
        if self._known is not None:
            self._recent.extend(rows)
        self._send({"run_id": self.run_id, "metrics": rows})

    def release(self) -> None:
        """Sends the held rows: their steps are checkpointed, no crash can make them be redone."""
        rows, self.held = self.held, []
        self.send_rows(rows)

    def forget(self, after_step: int) -> None:
        """Drops the held rows of steps after `after_step`: they will be redone."""
        self.held = [row for row in self.held if row[3] <= after_step]

    def history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        """`(step, value)` pairs of every metric whose name starts with one of `prefixes`, across resumes
        (a step logged again after a resume counts once, its latest value).

        During an outage: the last read plus what this Tracker logged since (before its first read, only
        what is kept in the spool), so plots go on and are complete again once the server is back. Held
        rows count too."""
        if self._pending:
            self._flush()
        if not self._pending:
            try:
                with bounded_http(CALL_TIMEOUT_S):
                    names = [k for k in self._client.get_run(self.run_id).data.metrics if k.startswith(prefixes)]
                    self._known = [(m.key, m.value, m.timestamp, m.step) for name in names
                                   for m in self._client.get_metric_history(self.run_id, name)]
                self._recent = []
            except self._error as err:
                if network_failure(err) is None:
                    raise
        latest: dict[str, dict[int, float]] = {}
        kept = [tuple(row) for record in self._pending for row in record.get("metrics", [])] + self.held
        for key, value, _, step in sorted([*(self._known or []), *self._recent, *kept], key=lambda row: row[2]):
            if key.startswith(prefixes):
                latest.setdefault(key, {})[step] = value
        return {key: sorted(steps.items()) for key, steps in latest.items()}

    def tags(self, tags: Mapping[str, str]) -> None:
        """Facts about the run that are no hyperparameters (the precision `auto` resolved to, the machine)."""
        self._send({"run_id": self.run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        """During an outage only the path is kept: the file is read when it is sent."""
        self._send({"run_id": self.run_id, "artifact": str(Path(path).resolve()), "folder": folder})

    def close(self, status: str = "FINISHED") -> None:
        """Sends what is kept, then ends the run. A server still away leaves the spool for `--resume`."""
        if self._pending:
            self._flush()
        if not self._pending:
            try:
                with bounded_http(CALL_TIMEOUT_S):
                    self._client.set_terminated(self.run_id, status=status)
                return
            except self._error as err:
                if network_failure(err) is None:
                    raise
        if self.spool is None:
            print(f"tracking: MLflow server {self.uri} still unreachable; {len(self._pending)} calls to run "
                  f"{self.run_id} are lost", file=sys.stderr)
        else:
            print(f"tracking: MLflow server {self.uri} still unreachable; {len(self._pending)} calls to run "
                  f"{self.run_id} are kept in {self.spool}; resuming the run (--resume {self.spool.parent}) "
                  f"sends them first, and it stays RUNNING in MLflow until then", file=sys.stderr)

    # ---------------------------------------------------------------- delivery
    def _deliver(self, record: dict) -> None:
        run_id = record["run_id"]
        if "metrics" in record:
            with bounded_http(CALL_TIMEOUT_S):
                self._client.log_batch(run_id, metrics=[self._metric(*row) for row in record["metrics"]])
        elif "tags" in record:
            with bounded_http(CALL_TIMEOUT_S):
                self._client.log_batch(run_id, tags=[self._tag(k, v) for k, v in record["tags"].items()])
        else:
            path = Path(record["artifact"])
            if not path.exists():
                print(f"tracking: {path} is gone, so it is not sent to run {run_id}", file=sys.stderr)
                return
            with bounded_http(ARTIFACT_TIMEOUT_S):
                if path.is_dir():
                    self._client.log_artifacts(run_id, str(path), artifact_path=record["folder"])
                else:
                    self._client.log_artifact(run_id, str(path), artifact_path=record["folder"])

    def _send(self, record: dict) -> None:
        """Keeps the order of calls: what is kept goes first, and while any of it is, a new call is kept
        behind it without a try of its own (a dead server costs one short try per call)."""
        if self._pending:
            self._flush()
            if self._pending:
                self._keep(record)
                return
        try:
            self._deliver(record)
        except self._error as err:
            failure = network_failure(err)
            if failure is None:
                raise
            where = self.spool or "memory"
            print(f"tracking: MLflow server {self.uri} unreachable ({reason(failure)}); training goes on, "
                  f"logging is kept in {where} and sent when the server is back", file=sys.stderr)
            self._keep(record)

    def _keep(self, record: dict) -> None:
        self._pending.append(record)
        if self.spool:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with self.spool.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _flush(self) -> None:
        """Sends kept calls in order until one fails (one short try while the server is away)."""
        sent = 0
        try:
            for record in self._pending:
                self._deliver(record)
                sent += 1
        except self._error as err:
            if network_failure(err) is None:
                raise
        finally:
            delivered, self._pending = self._pending[:sent], self._pending[sent:]
            if delivered and self.spool:
                self._rewrite_spool()
        for record in delivered:
            if "metrics" in record:
                self._late_batches += 1
                self._late_steps.update(row[3] for row in record["metrics"])
            elif set(record.get("tags", {})) != {OUTAGE_TAG}:
                self._late_other += 1
        if delivered and not self._pending:
            self._outage_over(len(delivered))

    def _rewrite_spool(self) -> None:
        if not self._pending:
            self.spool.unlink(missing_ok=True)
            return
        part = self.spool.with_suffix(".part")
        part.write_text("".join(json.dumps(record) + "\n" for record in self._pending))
        part.replace(self.spool)

    def _outage_over(self, sent: int) -> None:
        parts = []
        if self._late_batches:
            parts.append(f"metrics from steps {step_ranges(self._late_steps)} were delivered late "
                         f"({self._late_batches} batches)")
        if self._late_other:
            parts.append(f"{self._late_other} tag or artifact calls were delivered late")
        print(f"tracking: MLflow server {self.uri} is back; sent {sent} kept calls "
              f"({'; '.join(parts) or 'the outage tag'})", file=sys.stderr)
        if parts:
            self._send({"run_id": self.run_id,
                        "tags": {OUTAGE_TAG: "; ".join(filter(None, [self._earlier_outages, *parts]))}})
