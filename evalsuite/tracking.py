"""The evaluation suite's only contact with MLflow.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts`. One run per checkpoint evaluation (tasks evaluated one at a time, as a study
does, join the run of the checkpoint's other tasks), in the experiment of the checkpoint's
training run and nested under it (`mlflow.parentRunId`) when that run is in the same store, so the
compare view lines image and video checkpoints up by metric name (`vcot/f5/gain`, ...). A base model
has no training run: its evaluation joins the experiment of a run trained on it. The store is opened,
the experiment created and every write retried with the trainer's helpers (`train.tracking`), so
evaluations and training runs can share one sqlite file at the same time.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from train.run_record import RunRecord
# One store convention and one retry policy for the whole toolkit: the trainer's.
from train.tracking import artifact_root, default_tracking_uri, experiment_id, make_client, parent_run_tags, retry

DEFAULT_EXPERIMENT = "evalsuite"


def tracking_uri() -> str:
    return default_tracking_uri()


def _same_store(a: str, b: str) -> bool:
    norm = [str(Path(u.removeprefix("sqlite:///")).resolve()) if u.startswith("sqlite:///") else u.rstrip("/")
            for u in (a, b)]
    return norm[0] == norm[1]


@contextlib.contextmanager
def _run_written(client, run_id: str, on_error: str = "FAILED"):
    """The writes to a run: FINISHED when they all succeed; when one fails, the run is marked `on_error` (when
    the store lets us) and the error raised. Before, it stayed RUNNING for ever, and a retry of the evaluation
    made a second run beside it. A run joined by one more task (`EvalTracker._joinable`) goes back to
    FINISHED: its other tasks' results are whole, and the retry logs the failed task again into it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, on_error)
        raise
    retry(client.set_terminated, run_id, "FINISHED")


class EvalTracker:
    def __init__(self, uri: str | None = None, experiment: str | None = None):
        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = make_client(self.uri)  # a fresh store is created by one process at a time
        self.experiment = experiment or DEFAULT_EXPERIMENT

    def _training_run(self, run: RunRecord | None):
        """The training run of a run.json's record, if it lives in this store."""
        run_id, uri = (run.mlflow_run_id, run.tracking_uri) if run is not None else (None, None)
        if not run_id or (uri and not _same_store(uri, self.uri)):
            return None
        try:
            return retry(self.client.get_run, run_id)
        except Exception:  # noqa: BLE001 - deleted or never synced: record the id as a tag only
            return None

    @staticmethod
    def _tasks(run) -> set[str]:
        return {t for t in run.data.tags.get("evalsuite.tasks", "").split(",") if t}

    def _joinable(self, exp_id: str, tags: dict, tasks: list[str], params: dict[str, str]):
        """The finished evaluation run of the same checkpoint (and the same parent: training run or study) that
        other tasks logged to, holds none of `tasks`, and agrees with `params` on every param both have: the
        evaluation of one more task of that checkpoint joins it, so the UI shows a checkpoint's tasks in one
        row (a study evaluates each task in its own job). Returns that run, or None: a new run."""
        path = tags["evalsuite.checkpoint"]
        if "'" in path:
            return None  # not expressible in a filter string; a new run is correct, only less tidy
        runs = retry(self.client.search_runs, [exp_id], filter_string=f"tags.`evalsuite.checkpoint` = '{path}'",
                     order_by=["attributes.start_time DESC"], max_results=50)
        for run in runs:
            have = run.data.params
            same_parent = run.data.tags.get("mlflow.parentRunId") == tags.get("mlflow.parentRunId")
            if (run.info.status == "FINISHED" and same_parent
                    and not self._tasks(run) & set(tasks) and all(have.get(k, v) == v for k, v in params.items())):
                return run
        return None

    def _experiment_id(self, name: str) -> str:
        return experiment_id(self.client, name, artifact_root(self.uri))

    def log_evaluation(self, ckpt, metrics: dict[str, float], params: dict[str, str],
                       artifacts: list[tuple[Path, str]], siblings=()) -> str:
        """The finished run of checkpoint `ckpt` (a CheckpointRef) holding these tasks' results: a new run, or the
        run of the checkpoint's other tasks (`_joinable`); returns its id."""
        from mlflow.entities import Metric, Param, RunTag

        parent = self._training_run(ckpt.run)
        exp_id = parent.info.experiment_id if parent else None
        if exp_id is None and ckpt.is_base:
            for other in siblings:  # a base joins the experiment of a run trained on it
                if other.base_model == ckpt.model_path and (run := self._training_run(other.run)):
                    exp_id = run.info.experiment_id
                    break
        if exp_id is None:
            exp_id = self._experiment_id(self.experiment)
        tags = {"evalsuite.checkpoint": str(ckpt.path), "evalsuite.kind": "base" if ckpt.is_base else ckpt.kind,
                "evalsuite.model_path": str(ckpt.model_path)}
        if ckpt.base_model is not None:
            tags["evalsuite.base_model"] = str(ckpt.base_model)
        if ckpt.run is not None and ckpt.run.mlflow_run_id:
            tags["training_run_id"] = ckpt.run.mlflow_run_id
        if ckpt.run is not None and ckpt.run.recipe:
            tags["recipe"] = ckpt.run.recipe
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        tags.update(parent_run_tags())  # under a study: a child of the study's run, beside the training runs
        tasks = sorted({k.split("/")[0] for k in metrics})
        params = {k: str(v)[:6000] for k, v in params.items()}
        joined = self._joinable(exp_id, tags, tasks, params)
        if joined is None:
            run_id = retry(self.client.create_run, exp_id, run_name=f"eval-{ckpt.name}", tags=tags).info.run_id
            held = {}
        else:  # its params are not logged again (MLflow refuses a param twice), its tasks are kept
            run_id, held = joined.info.run_id, joined.data.params
            tasks = sorted(set(tasks) | self._tasks(joined))
            retry(self.client.update_run, run_id, status="RUNNING")
        with _run_written(self.client, run_id, "FAILED" if joined is None else "FINISHED"):
            items = [Param(k, v) for k, v in sorted(params.items()) if k not in held]
            for i in range(0, len(items), 100):
                retry(self.client.log_batch, run_id, params=items[i:i + 100])
            now = int(time.time() * 1000)
            values = [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
            for i in range(0, len(values), 500):
                retry(self.client.log_batch, run_id, metrics=values[i:i + 500])
            retry(self.client.log_batch, run_id, tags=[RunTag("evalsuite.tasks", ",".join(tasks))])
            for path, artifact_path in artifacts:
                if Path(path).is_file():
                    retry(self.client.log_artifact, run_id, str(path), artifact_path)
        return run_id


def log_comparison(root: Path, report: Path, fig_dir: Path, metrics: dict[str, float], ckpts,
                   verdicts: list[dict] = ()) -> str | None:
    """The "comparison" run: the report, its figures and CSV as artifacts, the contrasts as metrics and
    each finding's verdict as a tag (`verdict/<pair>/<finding>[/f<F>]` = supported, contradicted, ...).

    It joins the experiment of the compared training runs (so the UI shows it beside them) and
    lists their run ids as tags. Names MLflow would refuse (characters of checkpoint names) are
    rewritten (`_` for any character but letters, digits and `_-. /:`).
    """
    import re

    from mlflow.entities import Metric, RunTag

    def _mlflow_key(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)[:250]

    tracker = EvalTracker()
    train_ids = [c.run.mlflow_run_id for c in ckpts if c.run is not None and c.run.mlflow_run_id]
    exp_id = None
    for rid in train_ids:
        run = tracker._training_run(RunRecord(mlflow_run_id=rid))
        if run is not None:
            exp_id = run.info.experiment_id
            break
    exp_id = exp_id or tracker._experiment_id(tracker.experiment)
    tags = {"evalsuite.kind": "comparison", "evalsuite.ckpt_dir": str(root),
            "compared_runs": ",".join(train_ids), "compared_checkpoints": ",".join(c.name for c in ckpts)}
    for v in verdicts:
        frames = f"/f{v['frames']}" if v.get("frames") is not None else ""
        tags[_mlflow_key(f"verdict/{v['subject']}_vs_{v['video']}/{v['finding']}{frames}")] = str(v["verdict"])
    run = retry(tracker.client.create_run, exp_id, run_name=f"comparison-{root.name}", tags=tags)
    run_id = run.info.run_id
    with _run_written(tracker.client, run_id):
        now = int(time.time() * 1000)
        values = [Metric(_mlflow_key(k), float(v), now, 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(values), 500):
            retry(tracker.client.log_batch, run_id, metrics=values[i:i + 500])
        retry(tracker.client.log_artifact, run_id, str(report), "report")
        retry(tracker.client.log_artifacts, run_id, str(fig_dir), "report/report")
        retry(tracker.client.log_batch, run_id, tags=[RunTag("evalsuite.report", str(report))])
    return run_id
