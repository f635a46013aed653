"""`train.tracking.Tracker` writes metrics off the caller's thread and never loses one.

`log_metrics` queues and returns; one writer thread batches the queue into `log_batch` calls;
`flush()` waits for everything queued before it; a failed write keeps its points and surfaces at the
next call; `end()` flushes and terminates the run; system metrics land in the same run. All on real
sqlite stores (one per module: creating a store's tables takes seconds).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from train import tracking
from train.tracking import NullTracker, Tracker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'm.db'}"
    tracking.make_client(uri)  # creates the tables once
    return uri


def history(tracker: Tracker, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key)]


def test_log_metrics_returns_at_once_while_flush_waits_for_a_slow_store(uri):
    tracker = Tracker(uri, "async", "slow", {})
    real = tracker.client.log_batch
    writes = []

    def slow_log_batch(*args, **kwargs):
        time.sleep(0.3)
        writes.append(len(kwargs.get("metrics", ())))
        return real(*args, **kwargs)

    with mock.patch.object(tracker.client, "log_batch", slow_log_batch):
        calls = []
        for step in range(20):
            t0 = time.perf_counter()
            tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 1e-3}, step=step)
            calls.append(time.perf_counter() - t0)
        # A queue append, not a 0.3 s write: all 20 calls together take less than one write would (a
        # wall-clock bound far from the write's, so a loaded machine cannot make it flaky).
        assert sum(calls) < 0.3 and max(calls) < 0.1, calls
        t0 = time.perf_counter()
        tracker.flush()
        assert time.perf_counter() - t0 >= 0.25  # flush waited for the slow write
    assert sum(writes) == 40 and len(writes) <= 2  # batched: not one write per call
    assert history(tracker, "loss") == [(s, 1.0 / (s + 1)) for s in range(20)]
    tracker.end()


def test_a_thousand_points_at_random_steps_arrive_complete_and_in_order(uri):
    tracker = Tracker(uri, "async", "many", {}, write_interval_s=0.01)
    rng = random.Random(0)
    logged = {"a": [], "b": []}
    for i in range(1000):
        step = rng.randrange(50)  # repeats and goes back: order is the logging order, not the step's
        point = {"a": rng.random(), "b": float(i)}
        tracker.log_metrics(point, step=step)
        for k, v in point.items():
            logged[k].append((step, v))
        if i % 97 == 0:
            time.sleep(0.002)  # let some writes happen mid-way: several batches
    tracker.flush()
    for key in ("a", "b"):
        assert history(tracker, key) == logged[key]
    tracker.end()
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_locked_store_is_retried(uri, monkeypatch):
    tracker = Tracker(uri, "async", "locked", {})
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)  # retry's back-off
    real, failures = tracker.client.log_batch, []

    def locked_twice(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)

    with mock.patch.object(tracker.client, "log_batch", locked_twice):
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.flush()
    assert len(failures) == 2 and history(tracker, "loss") == [(1, 0.5)]
    tracker.end()


def test_a_failed_write_surfaces_at_the_next_call_and_loses_nothing(uri):
    tracker = Tracker(uri, "async", "failing", {})
    real = tracker.client.log_batch
    broken = True

    def maybe_broken(*args, **kwargs):
        if broken:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    with mock.patch.object(tracker.client, "log_batch", maybe_broken):
        tracker.log_metrics({"loss": 1.0}, step=1)
        with pytest.raises(RuntimeError, match="disk on fire"):
            tracker.flush()
        # the error is raised once; the writer tries again, fails again, and the next call says so
        tracker.log_metrics({"loss": 2.0}, step=2)
        deadline = time.time() + 10
        with pytest.raises(RuntimeError, match="disk on fire"):
            while time.time() < deadline:
                tracker.log_metrics({"loss": 3.0}, step=3)  # queued even when it raises
                time.sleep(0.05)
        broken = False
        tracker.flush()  # the store is back: every point is written
        hist = history(tracker, "loss")
        assert hist[:2] == [(1, 1.0), (2, 2.0)] and len(hist) >= 3 and all(p == (3, 3.0) for p in hist[2:])
        broken = True
        tracker.log_metrics({"loss": 4.0}, step=4)
        with pytest.raises(RuntimeError, match="disk on fire"):
            tracker.end()  # end() flushes first, so it raises too ...
        assert tracker.client.get_run(tracker.run_id).info.status == "FAILED"
        broken = False
        tracker.end()  # ... and the points are still there to write
    assert history(tracker, "loss")[-1] == (4, 4.0)
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError, match="after end"):
        tracker.log_metrics({"loss": 5.0}, step=5)


def test_an_outage_after_tolerate_outages_warns_and_stops_nothing(uri, capsys):
    """Once a run tolerates outages, a store that stops answering raises nowhere: one warning with the
    hint, flush() says False at once, tags and artifacts are skipped with a warning, the points wait and
    arrive in order when the store answers again. A store still down at end(): a warning after the
    grace period, the run not marked, and the writer stops trying."""
    tracker = Tracker(uri, "async", "outage", {}, write_interval_s=0.05)
    tracker.tolerate_outages("points kept in metrics.jsonl", grace_s=0.5)
    real, calls, down = tracker.client.log_batch, [], True

    def maybe_down(*args, **kwargs):
        calls.append(1)
        if down:
            raise ConnectionError("Connection refused: 127.0.0.1:5000")
        return real(*args, **kwargs)

    with mock.patch.object(tracker.client, "log_batch", maybe_down):
        for step in range(1, 31):
            tracker.log_metrics({"loss": 1.0 / step}, step=step)  # never raises
            time.sleep(0.01)
        deadline = time.time() + 10
        while tracker._outage is None and time.time() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        assert tracker.flush() is False and time.perf_counter() - t0 < 0.5
        tracker.set_tags({"a": 1})
        err = capsys.readouterr().err
        assert err.count("the store does not answer (ConnectionError: Connection refused") == 1
        assert "points kept in metrics.jsonl" in err and "tags a not written (the store does not answer)" in err
        down = False
        deadline = time.time() + 20
        while not tracker.flush() and time.time() < deadline:  # the writer's pause grows: 0.05, 0.1, 0.2 ...
            time.sleep(0.05)
        assert history(tracker, "loss") == [(s, 1.0 / s) for s in range(1, 31)]
        assert "the store answers again after" in capsys.readouterr().err
        down = True
        tracker.log_metrics({"loss": 0.0}, step=31)
        t0 = time.perf_counter()
        tracker.end()  # no exception: the grace period, then a warning
        assert 0.4 < time.perf_counter() - t0 < 10
        err = capsys.readouterr().err
        assert "still does not answer after 0.5 s: 1 metric points not written and the run not marked FINISHED" in err
        tries = len(calls)
        time.sleep(0.5)
        assert len(calls) <= tries + 1  # the writer gave up with end(): no loop of failing writes
    assert tracker.client.get_run(tracker.run_id).info.status == "RUNNING"
    assert history(tracker, "loss")[-1] == (30, 1.0 / 30)


def test_a_store_that_hangs_holds_the_trainer_once_at_most(uri, tmp_path, capsys):
    """MLflow's client retries a request to a server that does not answer for minutes, and the trainer makes
    its synchronous calls (tags, artifacts) on its main thread. Under tolerate_outages, once one such call has
    failed, the next are skipped at once (named on stderr) until a write succeeds again; a flush with a
    timeout (before a state is saved) returns False when the first write is still in the client's retries,
    instead of holding every process until it gives up."""
    tracker = Tracker(uri, "async", "hang", {}, write_interval_s=0.05)
    tracker.tolerate_outages("points kept", grace_s=0.5)
    (tmp_path / "run.json").write_text("{}")
    real, calls = tracker.client.log_batch, []

    def hangs_then_fails(*args, **kwargs):
        calls.append(1)
        time.sleep(0.4)
        raise ConnectionError("Read timed out")

    with mock.patch.object(tracker.client, "log_batch", hangs_then_fails), \
            mock.patch.object(tracker.client, "log_artifact", hangs_then_fails):
        t0 = time.perf_counter()
        tracker.set_tags({"a": 1})
        assert time.perf_counter() - t0 >= 0.4 and len(calls) == 1
        t0 = time.perf_counter()
        tracker.set_tags({"b": 2})
        tracker.log_artifact(tmp_path / "run.json", "checkpoint")
        assert time.perf_counter() - t0 < 0.1 and len(calls) == 1
        err = capsys.readouterr().err
        assert "tags a not written (ConnectionError: Read timed out)" in err
        assert "tags b not written (the store does not answer)" in err
        assert "artifact run.json not written (the store does not answer)" in err
        tracker.log_metrics({"loss": 1.0}, step=1)
        t0 = time.perf_counter()
        assert tracker.flush(timeout=0.2) is False and time.perf_counter() - t0 < 0.35
    deadline = time.time() + 20
    while not tracker.flush() and time.time() < deadline:  # back: the queued point is written
        time.sleep(0.05)
    assert history(tracker, "loss") == [(1, 1.0)]
    tracker.set_tags({"c": 3})  # and synchronous calls go through again
    assert tracker.client.get_run(tracker.run_id).data.tags["c"] == "3"
    tracker.end()


def test_a_state_tracked_in_another_store_goes_on_in_a_new_run(uri, capsys):
    """A resumed training names its MLflow run by id; in another store (MLFLOW_TRACKING_URI changed between the
    kill and the rerun) that run does not exist: the tracker makes a new run and says so (`resumed` False: the
    trainer then logs its params), instead of failing the resume."""
    first = Tracker(uri, "async", "here", {})
    first.end()
    again = Tracker(uri, "async", "here", {}, resume_run_id=first.run_id)
    assert again.resumed and again.run_id == first.run_id
    again.end()
    moved = Tracker(uri, "async", "here", {}, resume_run_id="0123456789abcdef0123456789abcdef")
    assert not moved.resumed and moved.run_id != "0123456789abcdef0123456789abcdef"
    assert "MLflow run 0123456789abcdef0123456789abcdef is not in" in capsys.readouterr().err
    assert moved.client.get_run(moved.run_id).info.run_name == "here"
    moved.end()


def test_sync_writes_what_the_run_lacks_from_metrics_jsonl(uri, tmp_path, capsys):
    """`python -m train.tracking sync RUN_DIR`: the points of metrics.jsonl missing from the run (by metric
    and step) are written, the others left alone; a cut-short last line is skipped."""
    import json

    tracker = Tracker(uri, "async", "sync", {})
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3 * s} for s in range(10, 110, 10)]
    for r in rows[:4]:
        tracker.log_metrics({"loss": r["loss"]}, step=r["step"])  # the store had these before it went down
    tracker.end()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 110, "lo')
    (run / "run.json").write_text(json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": uri}))
    assert tracking.main(["sync", str(run)]) == 0
    assert "wrote 16 metric points" in capsys.readouterr().out  # 6 losses and 10 learning rates
    assert history(tracker, "loss") == [(r["step"], r["loss"]) for r in rows]
    assert history(tracker, "lr") == [(r["step"], r["lr"]) for r in rows]
    assert tracking.main(["sync", str(run)]) == 0 and "wrote 0 metric points" in capsys.readouterr().out
    assert tracking.main(["sync", str(tmp_path / "nothing")]) == 2
    assert "no run.json and no saved state" in capsys.readouterr().err


def test_logging_from_several_threads(uri):
    tracker = Tracker(uri, "async", "threads", {}, write_interval_s=0.01)
    writer = f"mlflow-metrics-{tracker.run_id[:8]}"
    # no thread before the first point: the trainer forks its loader workers in between
    assert not any(t.name == writer for t in threading.enumerate())

    def log(key):
        for step in range(200):
            tracker.log_metrics({key: float(step)}, step=step)

    threads = [threading.Thread(target=log, args=(f"m{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tracker.end()
    for i in range(4):
        assert history(tracker, f"m{i}") == [(s, float(s)) for s in range(200)]


EXIT_WITHOUT_END = textwrap.dedent("""
    import sys
    from train.tracking import Tracker
    t = Tracker(sys.argv[1], "async", "crashed", {}, write_interval_s=60)
    for step in range(50):
        t.log_metrics({"loss": float(step)}, step=step)
    print(t.run_id)
    raise SystemExit(3)  # a crash: no flush(), no end()
""")


def test_points_queued_when_the_process_dies_of_an_exception_are_written(uri):
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
    p = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_END, uri], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    run_id = p.stdout.strip().splitlines()[-1]
    client = tracking.make_client(uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(50))


def test_system_metrics_are_logged_to_the_run(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", raising=False)
    tracker = Tracker(uri, "async", "system", {}, system_metrics=True, system_metrics_interval_s=0.2)
    tracker.log_metrics({"loss": 1.0}, step=1)
    time.sleep(0.7)
    tracker.end()
    key = "system/cpu_utilization_percentage"
    steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
    assert len(steps) >= 2 and steps == list(range(len(steps)))
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert "system/system_memory_usage_megabytes" in metrics and metrics["loss"] == 1.0
    assert not any(t.name == "SystemMetricsMonitor" and t.is_alive() for t in threading.enumerate())

    # a resumed run continues the system metrics' steps
    resumed = Tracker(uri, "async", "system", {}, resume_run_id=tracker.run_id, system_metrics=True,
                      system_metrics_interval_s=0.2)
    time.sleep(0.5)
    resumed.end()
    more = [m.step for m in tracker.client.get_metric_history(tracker.run_id, key)]
    assert more[:len(steps)] == steps and len(more) > len(steps) and more == sorted(set(more))


def test_system_metrics_go_on_through_a_store_that_does_not_answer_and_a_failed_sample(uri, monkeypatch, capsys):
    """MLflow's monitor loop stopped for good at its first failed status call to the store, or at a sample
    that raised: the rest of the run had no system metrics. The tracker's loop asks the store nothing
    and skips a failed sample."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.tracking.client import MlflowClient

    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", raising=False)
    real_collect, calls = CPUMonitor.collect_metrics, []

    def collect_failing_once(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("psutil: sensor vanished")
        return real_collect(self)

    tracker = Tracker(uri, "async", "system-outage", {}, system_metrics=True, system_metrics_interval_s=0.1)
    with mock.patch.object(MlflowClient, "get_run", side_effect=ConnectionError("tracking server unreachable")), \
            mock.patch.object(CPUMonitor, "collect_metrics", collect_failing_once):
        tracker.log_metrics({"loss": 1.0}, step=1)
        time.sleep(1.2)
        tracker.end()
    steps = [m.step for m in tracker.client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 4 and steps == list(range(len(steps))), steps
    err = capsys.readouterr().err
    assert "a system metrics sample failed (RuntimeError: psutil: sensor vanished); the monitor goes on" in err
    assert "1 system metrics sample(s) failed and were skipped" in err
    assert not any(t.name == "SystemMetricsMonitor" and t.is_alive() for t in threading.enumerate())


def test_a_monitor_that_cannot_start_leaves_the_run_without_system_metrics(uri, capsys):
    with mock.patch("mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor",
                    side_effect=ImportError("No module named 'psutil'")):
        tracker = Tracker(uri, "async", "no-system", {}, system_metrics=True)
    assert "no system metrics (ImportError: No module named 'psutil')" in capsys.readouterr().err
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.end()
    assert history(tracker, "loss") == [(1, 1.0)]


def test_null_tracker_is_a_no_op():
    t = NullTracker()
    t.log_metrics({"loss": 1.0}, step=1)
    t.flush()
    t.log_params({"a": 1})
    t.end()
    assert t.run_id is None
