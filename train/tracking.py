"""The trainer's only contact with MLflow: a thin tracker the main process uses.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts` (MLflow 3's file store is in maintenance mode and refuses to start). Writes
retry when several processes share the sqlite file ("database is locked").
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a sqlite store (mlruns/artifacts), None for a server that decides itself."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def retry(fn, *args, attempts: int = 8, **kwargs):
    """Call an MLflow write, backing off while another process holds the sqlite lock."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # mlflow wraps sqlite's OperationalError in its own exception types
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i * (1 + random.random()))


class Tracker:
    """One MLflow run. Construct only on the main process (see NullTracker)."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict, resume_run_id: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = uri
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(uri)
        exp = retry(self.client.get_experiment_by_name, experiment)
        if exp is None:
            exp_id = retry(self.client.create_experiment, experiment, artifact_location=artifact_root(uri))
        else:
            exp_id = exp.experiment_id
        if resume_run_id:
            self.run_id = resume_run_id
            retry(self.client.update_run, resume_run_id, status="RUNNING")
        else:
            run = retry(self.client.create_run, exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        self._mlflow = mlflow

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        retry(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        retry(self.client.log_batch, self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            retry(self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            retry(self.client.log_artifact, self.run_id, str(p), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, self.run_id, status)


class NullTracker:
    """What non-main processes hold: every call is a no-op."""

    run_id = None
    uri = None

    def __getattr__(self, name):
        return lambda *a, **k: None


def run_metrics(uri: str, run_id: str) -> dict:
    """Latest value of every metric of a run (used to match a run by its MLflow id)."""
    from mlflow.tracking import MlflowClient

    return dict(retry(MlflowClient(uri).get_run, run_id).data.metrics)
