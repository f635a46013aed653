"""The trainer's only contact with MLflow: a thin tracker the main process uses.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts` (MLflow 3's file store is in maintenance mode and refuses to start).

Several processes (a training run, evaluations) may share one sqlite file at once:
- `make_client` opens the store under an exclusive file lock beside the database, so that only one
  process creates the tables of a fresh store (MLflow's own store creation is not safe when two
  processes race: "table ... already exists");
- `retry` repeats a write while another process holds the sqlite lock ("database is locked");
- `experiment_id` creates an experiment or, when another process created it first, reads it.
"""

from __future__ import annotations

import contextlib
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


def _lock_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return db.with_name(f".{db.name}.init.lock")


@contextlib.contextmanager
def _store_lock(uri: str):
    """Exclusive across processes (flock) while a sqlite store is opened; a no-op for servers."""
    lock = _lock_file(uri)
    if lock is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; MLflow's own check is all there is
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_client(uri: str):
    """An MlflowClient whose store is opened (and, when fresh, created) by one process at a time."""
    from mlflow.tracking import MlflowClient

    with _store_lock(uri):
        return retry(MlflowClient, uri)  # the constructor opens the store and creates missing tables


def experiment_id(client, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing (tolerating another process creating it too)."""
    for attempt in range(3):
        exp = retry(client.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        try:
            return retry(client.create_experiment, name, artifact_location=artifact_location)
        except Exception as e:  # noqa: BLE001 - RESOURCE_ALREADY_EXISTS / UNIQUE constraint: look it up again
            if attempt == 2 or not any(w in str(e).lower() for w in ("already exists", "unique constraint")):
                raise
    raise AssertionError("unreachable")


class Tracker:
    """One MLflow run. Construct only on the main process (see NullTracker)."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict, resume_run_id: str | None = None):
        import mlflow

        self.uri = uri
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = make_client(uri)
        exp_id = experiment_id(self.client, experiment, artifact_root(uri))
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
    return dict(retry(make_client(uri).get_run, run_id).data.metrics)
