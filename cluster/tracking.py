"""MLflow tracking: one run per training job, resumable into the same run.

The store defaults to `sqlite:///<run_dir>/mlflow.db`; `MLFLOW_TRACKING_URI` or `tracking.uri`
points it at a server. Metric names are grouped (`reward/*`, `eval/*`, `perf/*`, ...) so the
MLflow UI shows them as sections.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from configs.schema import Config


def tracking_uri(configured: str, run_dir: str | Path) -> str:
    """Config first, then the environment, then a SQLite file in the run folder."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


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
    """A thin handle on one MLflow run. `run_id=None` starts a new run; a given id resumes it."""

    def __init__(self, config: Config, uri: str, experiment: str, run_id: str | None = None, run_name: str = ""):
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id, run_name=run_name or None)
        self.run_id = self.run.info.run_id
        if run_id is None:
            params = flatten(config.model_dump(mode="json"))
            mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=folder)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)
