"""MLflow tracking: one run per training job, resumable into the same run.

The store defaults to `sqlite:///<run_dir>/mlflow.db`; `MLFLOW_TRACKING_URI` or `tracking.uri`
points it at a server. Metric names are grouped (`reward/*`, `eval/*`, `perf/*`, ...) so the
MLflow UI shows them as sections.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping



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


class Tracker:
    """A handle on one MLflow run. `run_id=None` starts a new run with `params` (a config as a nested dict,
    flattened); a given id resumes it.

    It talks to its store through its own `MlflowClient`, never MLflow's process-global active
    run or URI: an SFT stage and an RL job in one process each keep their own store."""

    def __init__(self, params: Mapping[str, Any], uri: str, experiment: str, run_id: str | None = None,
                 run_name: str = ""):
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._client, self._metric = MlflowClient(uri), Metric
        if run_id is None:
            found = self._client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self._client.create_experiment(
                experiment, artifact_location=artifact_location(uri))
            run_id = self._client.create_run(experiment_id, run_name=run_name or None).info.run_id
            self._client.log_batch(run_id, params=[
                Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(params).items()])
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[self._metric(k, float(v), now, step) for k, v in metrics.items()])

    def history(self, prefixes: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
        """`(step, value)` pairs of every metric whose name starts with one of `prefixes`, across resumes
        (a step logged again after a resume counts once, its latest value)."""
        names = [k for k in self._client.get_run(self.run_id).data.metrics if k.startswith(prefixes)]
        out = {}
        for name in names:
            latest = {m.step: m.value for m in sorted(self._client.get_metric_history(self.run_id, name),
                                                      key=lambda m: m.timestamp)}
            out[name] = sorted(latest.items())
        return out

    def tags(self, tags: Mapping[str, str]) -> None:
        """Facts about the run that are no hyperparameters (the precision `auto` resolved to, the machine)."""
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=folder)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def close(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)
