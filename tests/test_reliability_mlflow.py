"""Concurrent writers lose nothing: a training run and two evaluations log to one fresh sqlite store at once.

The three writers are separate processes using the toolkit's own trackers (`train.tracking.Tracker`,
`evalsuite.tracking.EvalTracker`). They import everything first, then start together on a signal, so
they also race to create the store's tables and the shared experiment, which MLflow alone does not
survive ("table ... already exists"): `train.tracking.make_client` serialises the store's creation and
`experiment_id` tolerates a creator that won the race; `retry` covers "database is locked".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from train import tracking

REPO = Path(__file__).resolve().parents[1]
STEPS, EVAL_METRICS, EVAL_RUNS, PARAMS = 200, 200, 3, 40

WORKER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    role, uri, tag, ready, go = sys.argv[1:6]
    from train.tracking import Tracker
    from evalsuite.tracking import EvalTracker
    from evalsuite.checkpoints import CheckpointRef
    import mlflow.tracking  # everything imported before the start signal: the writers start together
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    if role == "train":
        t = Tracker(uri, "shared", f"train-{tag}", {"who": tag})
        t.log_params({f"p{i}": i for i in range(PARAMS)})
        for step in range(STEPS):
            t.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-3}, step=step)
        t.end()
    else:
        tr = EvalTracker(uri, "shared")
        for k in range(EVAL_RUNS):
            ref = CheckpointRef(Path(f"/ckpt/{tag}-{k}"), Path(f"/ckpt/{tag}-{k}"), "model")
            tr.log_evaluation(ref, {f"vcot/f5/m{i}": float(i) for i in range(EVAL_METRICS)}, {"seed": k}, [])
''').replace("PARAMS", str(PARAMS)).replace("STEPS", str(STEPS)).replace(
    "EVAL_RUNS", str(EVAL_RUNS)).replace("EVAL_METRICS", str(EVAL_METRICS))


def test_training_and_two_evaluations_share_a_fresh_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    go = tmp_path / "go"
    roles = [("train", "t"), ("eval", "e1"), ("eval", "e2")]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, role, uri, tag, str(tmp_path / f"ready-{tag}"), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role, tag in roles]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{tag}").exists() for _, tag in roles):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    for p, (role, tag) in zip(procs, roles):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{role} {tag} failed:\n{err[-3000:]}"

    client = tracking.make_client(uri)
    exps = [e for e in client.search_experiments() if e.name == "shared"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id], max_results=1000)
    assert all(r.info.status == "FINISHED" for r in runs)
    train = [r for r in runs if r.info.run_name == "train-t"]
    evals = [r for r in runs if r.info.run_name.startswith("eval-")]
    assert len(train) == 1 and len(evals) == 2 * EVAL_RUNS == len(runs) - 1
    assert len(train[0].data.params) == PARAMS
    for key in ("loss", "lr"):
        history = client.get_metric_history(train[0].info.run_id, key)
        assert sorted(m.step for m in history) == list(range(STEPS))  # every step, once
    assert sorted(r.info.run_name for r in evals) == sorted(f"eval-{t}-{k}" for t in ("e1", "e2")
                                                            for k in range(EVAL_RUNS))
    for r in evals:
        assert len(r.data.metrics) == EVAL_METRICS and r.data.params["seed"] in {"0", "1", "2"}


class _Locked(Exception):
    """What MLflow raises when sqlite is busy: its own type, sqlite's text inside."""


def test_retry_backs_off_while_locked_and_raises_anything_else(monkeypatch):
    sleeps = []
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise _Locked("(sqlite3.OperationalError) database is locked")
        return x * 2

    assert tracking.retry(flaky, 21) == 42 and len(calls) == 3 and len(sleeps) == 2 and sleeps[1] >= 0.4  # backs off

    def broken():
        raise _Locked("(sqlite3.IntegrityError) NOT NULL constraint failed")

    with pytest.raises(_Locked, match="NOT NULL"):
        tracking.retry(broken)
    with pytest.raises(_Locked, match="locked"):
        tracking.retry(lambda: (_ for _ in ()).throw(_Locked("database is locked")), attempts=3)
    assert len(sleeps) == 2 + 2  # the last attempt raises without sleeping


def test_experiment_created_by_another_process_in_between_is_found():
    class Exp:
        experiment_id = "7"

    class RacingClient:
        """get says 'missing', another process creates it, create then fails as MLflow does."""
        def __init__(self):
            self.gets = 0

        def get_experiment_by_name(self, name):
            self.gets += 1
            return None if self.gets == 1 else Exp()

        def create_experiment(self, name, artifact_location=None):
            raise _Locked(f"RESOURCE_ALREADY_EXISTS: Experiment '{name}' already exists.")

    assert tracking.experiment_id(RacingClient(), "shared", None) == "7"


def test_evalsuite_uses_the_trainers_store_helpers():
    import evalsuite.tracking as ev

    assert ev.retry is tracking.retry and ev.make_client is tracking.make_client
    assert ev.experiment_id is tracking.experiment_id


# --- an MLflow store that stops answering mid-run ---------------------------------------------------------
OUTAGE = textwrap.dedent('''
    # Loaded by the trainer's interpreter (sitecustomize): while the file $OUTAGE_FLAG exists, MLflow's client
    # writes metrics once, then the store stops answering metric writes and artifact uploads.
    import os
    from pathlib import Path

    flag = os.environ.get("OUTAGE_FLAG")
    if flag:
        from mlflow.tracking import MlflowClient

        real, written = MlflowClient.log_batch, []

        def log_batch(self, run_id, metrics=(), *args, **kwargs):
            if metrics and Path(flag).exists() and written:
                raise ConnectionError("Connection refused: the tracking server is down")
            if metrics:
                written.append(len(metrics))
            return real(self, run_id, metrics, *args, **kwargs)

        def refuse(*args, **kwargs):
            if Path(flag).exists() and written:
                raise ConnectionError("Connection refused: the tracking server is down")

        MlflowClient.log_batch = log_batch
        real_artifact = MlflowClient.log_artifact
        MlflowClient.log_artifact = lambda self, *a, **k: refuse() or real_artifact(self, *a, **k)
''')


@pytest.mark.slow
def test_an_outage_mid_run_stops_no_training_and_nothing_is_lost(tmp_path):
    """The store stops answering after the first metric write. (1) A run goes on through it to its end:
    exit 0, run.json and the adapter written, a warning naming metrics.jsonl and the sync command, and
    `python -m train.tracking sync` then gives MLflow every step. (2) A run killed during the outage
    and resumed once the store is back: the resumed trainer writes the points its predecessor could not,
    so MLflow has every step exactly once."""
    import json
    import signal

    import yaml

    from train.checkpointing import STATE_FILE, valid_states

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OUTAGE)
    flag = tmp_path / "down"
    train = {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_checkpointing": False,
             "num_workers": 1, "learning_rate": 1e-3, "warmup_steps": 2, "ds_config": "none", "save_steps": 2,
             "logging_steps": 1, "max_steps": 12, "system_metrics": False, "tracking_grace_s": 1}
    (tmp_path / "vid.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                       "samples": 48, "frames": 3, "shard_size": 16, "train": train}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{REPO}", OUTAGE_FLAG=str(flag), MLFLOW_TRACKING_URI=uri,
               OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1")
    lora = [sys.executable, str(REPO / "train" / "lora.py"), "--recipe", "vid.yaml"]

    def steps_in_mlflow(run_dir: Path, run_id: str) -> list[int]:
        losses = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert losses["step"] == 12
        return sorted(m.step for m in tracking.make_client(uri).get_metric_history(run_id, "loss"))

    flag.touch()
    p = subprocess.run([*lora, "--run_name", "through"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    run = tmp_path / "ckpt" / "through"
    info = json.loads((run / "run.json").read_text())
    assert (run / "adapter_model.safetensors").is_file() and info["steps"] == 12
    assert p.stderr.count("the store does not answer (ConnectionError") == 1
    assert f"every point is in {run / 'metrics.jsonl'}" in p.stderr and f"train.tracking sync {run}" in p.stderr
    assert "still does not answer after 1 s" in p.stderr and "artifact run.json not written" in p.stderr
    assert len(steps_in_mlflow(run, info["mlflow_run_id"])) < 12
    flag.unlink()
    s = subprocess.run([sys.executable, "-m", "train.tracking", "sync", str(run)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert s.returncode == 0, s.stderr
    assert steps_in_mlflow(run, info["mlflow_run_id"]) == list(range(1, 13))

    flag.touch()
    killed = tmp_path / "ckpt" / "killed"
    proc = subprocess.Popen([*lora, "--run_name", "killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        states = valid_states(killed)
        if states and json.loads((states[-1] / STATE_FILE).read_text())["step"] >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed during the outage"
    flag.unlink()
    subprocess.run([*lora, "--run_name", "killed", "--resume", "latest"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=600)
    run_id = json.loads((killed / "run.json").read_text())["mlflow_run_id"]
    assert steps_in_mlflow(killed, run_id) == list(range(1, 13))


def test_an_evaluation_run_whose_writes_fail_is_marked_failed_not_left_running(tmp_path, monkeypatch):
    """The evaluation's MLflow run is created, then its params, metrics and artifacts are written: when one of
    those writes fails, the run is marked FAILED and the error raised. Left RUNNING, it looked live for ever,
    and the evaluation's retry (which logs again) put a second run beside it."""
    from mlflow.tracking import MlflowClient

    from evalsuite.checkpoints import CheckpointRef
    from evalsuite.tracking import EvalTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = EvalTracker(uri, "exp")
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")

    def refused(*args, **kwargs):
        raise PermissionError("artifact store refused the write")

    monkeypatch.setattr(tracker.client, "log_artifact", refused)
    ref = CheckpointRef(Path("/ckpt/a"), Path("/ckpt/a"), "model")
    with pytest.raises(PermissionError, match="refused"):
        tracker.log_evaluation(ref, {"vcot/f5/acc": 0.5}, {"seed": 0}, [(artifact, "vcot")])
    monkeypatch.undo()
    runs = MlflowClient(uri).search_runs([tracker._experiment_id("exp")])
    assert [r.info.status for r in runs] == ["FAILED"] and runs[0].data.metrics["vcot/f5/acc"] == 0.5
    run_id = tracker.log_evaluation(ref, {"vcot/f5/acc": 0.5}, {"seed": 0}, [(artifact, "vcot")])
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_tasks_evaluated_one_at_a_time_share_the_checkpoints_run(tmp_path, monkeypatch):
    """A study evaluates each task of a checkpoint in its own job: the second task's log joins the run of the
    first, so the compare view shows a checkpoint's vcot and iraven metrics in one row. A task evaluated again,
    other weights (fingerprint param), another checkpoint or another study parent get a run of their own."""
    from mlflow.tracking import MlflowClient

    from evalsuite.checkpoints import CheckpointRef
    from evalsuite.tracking import EvalTracker

    monkeypatch.delenv("BETWEENFRAMES_PARENT_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracker = EvalTracker(uri, "exp")
    ref = CheckpointRef(Path("/ckpt/a"), Path("/ckpt/a"), "model")
    who = {"checkpoint.name": "a", "checkpoint.fingerprint": "f1"}
    first = tracker.log_evaluation(ref, {"vcot/f5/acc": 0.5}, who | {"vcot.limit": 300}, [])
    second = tracker.log_evaluation(ref, {"iraven/acc": 0.1}, who | {"iraven.limit": 20}, [])
    assert second == first
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["evalsuite.tasks"] == "iraven,vcot"
    assert run.data.metrics == {"vcot/f5/acc": 0.5, "iraven/acc": 0.1}
    assert run.data.params == {"checkpoint.name": "a", "checkpoint.fingerprint": "f1", "vcot.limit": "300",
                               "iraven.limit": "20"}
    again = tracker.log_evaluation(ref, {"vcot/f5/acc": 0.6}, who | {"vcot.limit": 300}, [])
    retrained = tracker.log_evaluation(ref, {"shuffle/acc": 0.3}, who | {"checkpoint.fingerprint": "f2"}, [])
    other = tracker.log_evaluation(CheckpointRef(Path("/ckpt/b"), Path("/ckpt/b"), "model"), {"shuffle/acc": 0.3},
                                   {"checkpoint.name": "b", "checkpoint.fingerprint": "f3"}, [])
    assert len({first, again, retrained, other}) == 4
    assert client.get_run(first).data.metrics["vcot/f5/acc"] == 0.5  # a record is never overwritten
    monkeypatch.setenv("BETWEENFRAMES_PARENT_RUN_ID", first)  # (any existing run id will do as a parent)
    in_study = tracker.log_evaluation(ref, {"shuffle/acc": 0.2}, who, [])
    assert in_study not in (first, again, retrained)
    assert client.get_run(in_study).data.tags["mlflow.parentRunId"] == first
