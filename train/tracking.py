"""The trainer's only contact with MLflow: a thin tracker the main process uses.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlruns/mlflow.db` with artifacts in
`<repo>/mlruns/artifacts` (MLflow 3's file store is in maintenance mode and refuses to start).

Several processes (a training run, evaluations) may share one sqlite file at once:
- `make_client` opens the store under an exclusive file lock beside the database, so that only one
  process creates the tables of a fresh store (MLflow's own store creation is not safe when two
  processes race: "table ... already exists");
- `retry` repeats a write while another process holds the sqlite lock ("database is locked");
- `experiment_id` creates an experiment or, when another process created it first, reads it.

A training run's metrics never wait for the store: `Tracker.log_metrics` queues them and one
background thread writes them (see `Tracker` for flush, errors and system metrics).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

from data_recipes.files import REPO_ROOT as REPO

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")



def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"


PARENT_RUN_ENV = "BETWEENFRAMES_PARENT_RUN_ID"
"""Set by `python -m evalsuite study` for the processes it starts: the study's MLflow run id, under which
every training and evaluation run is created as a child."""


def parent_run_tags() -> dict:
    """{"mlflow.parentRunId": ID} when a study started this process ($BETWEENFRAMES_PARENT_RUN_ID), else {}."""
    parent = os.environ.get(PARENT_RUN_ENV)
    return {"mlflow.parentRunId": parent} if parent else {}


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


METRICS_PER_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_BACKOFF_S = 60.0
"""Longest pause between two writes while the store does not answer (under `Tracker.tolerate_outages`)."""


class MetricsWriteError(RuntimeError):
    """The metrics writer thread is gone with points unwritten (a bug: store errors are raised as themselves)."""


class Tracker:
    """One MLflow run. Construct only on the main process (see NullTracker).

    Metrics are written off the caller's thread: `log_metrics` queues the points and returns at
    once, and one daemon thread writes what is queued in `log_batch` calls (every
    `write_interval_s`, at once when `flush()` asks, or when a full batch of 1,000 points waits),
    retrying while another process holds the sqlite lock. No point is dropped and each metric's
    points reach the store in the order they were logged:

    - `flush()` blocks until every point queued before the call is in the store (with a `timeout`, under
      `tolerate_outages`, at most that long). The trainer calls it before saving a resumable state, with a
      timeout: a resumed run also writes what the store lacks from metrics.jsonl (`backfill`);
    - when a write fails even after `retry`, its points stay queued, the writer pauses, and the
      store's own exception is raised by the next `flush()`, `end()` or `log_metrics()` (the points of
      that `log_metrics` call are queued all the same); the writer then tries them again, after
      `write_interval_s` or at the next `flush()`;
    - at interpreter exit (a crashed trainer), whatever is still queued is flushed, for up to a minute;
    - `end()` stops the system metrics monitor, flushes, stops the writer and marks the run terminated.

    A training run switches on `tolerate_outages(hint)` once its run exists: a store that stops answering
    mid-run (a server restarted, a network cut) then never stops the training. Nothing is raised: the
    first failed write prints one warning (with `hint`: where the points are kept and how to write them
    later), the writer keeps the points and tries again with a growing pause (up to `MAX_BACKOFF_S`),
    and says when the store answers again; `flush()` returns False at once while the store is down
    (the trainer saves its state anyway); `set_tags` and `log_artifact` warn and go on; `end()` waits
    up to `grace_s` for the store, then warns with the number of points left and returns.

    Timestamps are taken when a point is logged and made strictly increasing per metric (a burst
    of more than one point per millisecond is spread a millisecond apart): MLflow orders a metric's
    history by timestamp, so the history shows the points in the order they were logged.

    With `system_metrics`, MLflow's system metrics monitor samples CPU, memory, disk, network and,
    when `nvidia-ml-py` is installed (`pip install betweenframes[gpu]`), GPU utilisation and memory
    every `system_metrics_interval_s` seconds into this run (`system/...` metrics, steps counting
    samples and continuing after a resume); its points go through the same queue.

    `log_params`, `set_tags` and `log_artifact` are rare and stay synchronous.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict, resume_run_id: str | None = None, *,
                 system_metrics: bool = False, system_metrics_interval_s: float = 10,
                 write_interval_s: float = 1.0):
        import mlflow

        self.uri = uri
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = make_client(uri)
        exp_id = experiment_id(self.client, experiment, artifact_root(uri))
        self.resumed = False
        """Whether this is the run of `resume_run_id` (False: a new run; its params are not logged yet)."""
        if resume_run_id:
            try:
                retry(self.client.update_run, resume_run_id, status="RUNNING")
                self.run_id, self.resumed = resume_run_id, True
            except Exception as e:  # noqa: BLE001 - only a run this store lacks; anything else is raised
                if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                print(f"[tracking] MLflow run {resume_run_id} is not in {uri} (the state was tracked elsewhere): "
                      "this run goes on in a new MLflow run", file=sys.stderr, flush=True)
        if not self.resumed:
            run = retry(self.client.create_run, exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        self._mlflow = mlflow
        self.write_interval_s = write_interval_s

        self._cond = threading.Condition()
        self._pending: list = []      # points not yet in the store, in the order logged
        self._logged = 0              # points queued since the start
        self._written = 0             # of which in the store (always the oldest ones)
        self._wanted = 0              # a flush waits for _written to reach this: write without delay
        self._oldest = 0.0            # monotonic time the oldest pending point has waited since
        self._error: BaseException | None = None  # a failed write, until raised to the caller
        self._tolerant, self._hint, self.grace_s = False, "", 60.0
        self._outage: tuple[float, int] | None = None  # (monotonic start, failed writes) while the store is down
        self._sync_down = False  # a synchronous call failed under tolerate_outages, and nothing was written since
        self._closed = False
        self._last_ms: dict[str, int] = {}
        self._pid = os.getpid()
        # Started by the first point, not here: the trainer forks its loader workers in between, and
        # a fork copies only the forking thread (and whatever lock another thread held).
        self._writer: threading.Thread | None = None
        atexit.register(self._flush_at_exit)
        self._monitor = None
        if system_metrics:
            self._monitor = self._start_system_metrics(system_metrics_interval_s, resume=self.resumed)

    def tolerate_outages(self, hint: str = "", grace_s: float = 60.0) -> None:
        """From now on a store that stops answering warns instead of raising (see the class docstring)."""
        with self._cond:
            self._tolerant, self._hint, self.grace_s = True, hint, grace_s

    def _warn(self, text: str) -> None:
        print(f"[tracking] MLflow run {self.run_id}: {text}" + (f"; {self._hint}" if self._hint else ""),
              file=sys.stderr, flush=True)

    def _sync_call(self, what: str, fn, *args, **kwargs) -> None:
        """A rare synchronous write: raised, or under `tolerate_outages` warned about and skipped.

        While the store is known to be down (a metrics write or an earlier such call failed, and no write
        has succeeded since) the call is skipped at once: MLflow's client retries a request to a server
        that does not answer for minutes (7 tries, 120 s each when the host is unreachable), and the
        trainer calls these on its main thread, with every other process waiting for it."""
        with self._cond:
            down = self._tolerant and (self._outage is not None or self._sync_down)
        if down:
            self._warn(f"{what} not written (the store does not answer)")
            return
        try:
            retry(fn, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self._tolerant:
                raise
            with self._cond:
                self._sync_down = True
            self._warn(f"{what} not written ({type(e).__name__}: {e})")

    def backfill(self, metrics_log: Path) -> None:
        """Write the points of a metrics.jsonl that this run's history lacks (see `backfill`)."""
        self._sync_call(f"backfill from {metrics_log}", backfill, self.client, self.run_id,
                        read_metrics_log(metrics_log))

    # --- synchronous, rare -------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self._sync_call(f"tags {', '.join(tags)}", self.client.log_batch, self.run_id,
                        tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        log = self.client.log_artifacts if p.is_dir() else self.client.log_artifact
        self._sync_call(f"artifact {p.name}", log, self.run_id, str(p), artifact_path)

    # --- metrics, written in the background --------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int) -> None:
        """Queue one point per metric at `step` and return; raises a write error held from before."""
        self._enqueue(metrics, step)
        with self._cond:
            error = self._take_error()
        if error is not None:
            raise error

    def _enqueue(self, metrics: dict, step) -> None:
        from mlflow.entities import Metric

        values = [(str(k), float(v)) for k, v in metrics.items()]  # a bad value fails here, in the caller
        step = int(step)
        now = int(time.time() * 1000)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"MLflow run {self.run_id}: log_metrics after end()")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                name=f"mlflow-metrics-{self.run_id[:8]}")
                self._writer.start()
            if not self._pending:
                self._oldest = time.monotonic()
                self._cond.notify_all()  # the writer may be idle, waiting for a first point
            for key, value in values:
                ms = max(now, self._last_ms.get(key, -1) + 1)
                self._last_ms[key] = ms
                self._pending.append(Metric(key, value, ms, step))
            self._logged += len(values)
            if len(self._pending) >= METRICS_PER_BATCH:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every point queued so far is in the store (True); raise a failed write's error.
        Under `tolerate_outages`: False at once while the store is down, and False when `timeout` runs out
        (a first write still in MLflow's own retries), instead of waiting or raising."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._logged
            if self._wanted < target:
                self._wanted = target
                self._cond.notify_all()
            while self._written < target and self._error is None:
                if self._outage is not None:
                    return False
                if not self._writer.is_alive():
                    raise MetricsWriteError(f"MLflow run {self.run_id}: the metrics writer stopped with "
                                            f"{target - self._written} points unwritten")
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    if self._tolerant:
                        return False
                    raise TimeoutError(f"MLflow run {self.run_id}: {target - self._written} metric points "
                                       f"still unwritten after {timeout} s")
                self._cond.wait(wait)
            error = self._take_error()
        if error is not None:
            raise error
        return True

    def end(self, status: str = "FINISHED") -> None:
        """Stop the system metrics monitor, write every queued point, stop the writer, end the run.

        When the queued points cannot be written, the run is marked FAILED (when the store lets us),
        the points stay queued and the store's error is raised."""
        if self._monitor is not None:
            self._monitor.finish()  # its last points join the queue
            self._monitor = None
        if self._tolerant:
            deadline = time.monotonic() + self.grace_s
            while not self.flush() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._outage is not None:
                with self._cond:
                    self._closed = True
                    unwritten = self._logged - self._written
                    self._cond.notify_all()
                atexit.unregister(self._flush_at_exit)
                self._warn(f"the store still does not answer after {self.grace_s:g} s: {unwritten} metric points "
                           f"not written and the run not marked {status}")
                return
        try:
            self.flush()
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, "FAILED")
            raise
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        atexit.unregister(self._flush_at_exit)
        retry(self.client.set_terminated, self.run_id, status)

    def _take_error(self) -> BaseException | None:
        """The held write error, if any, annotated (lock held). Taking it lets the writer try again,
        after `write_interval_s` or at the next flush (the flush that raises it no longer waits)."""
        error, self._error = self._error, None
        if error is not None:
            self._wanted = self._written
            self._oldest = time.monotonic()
            unwritten = self._logged - self._written
            if hasattr(error, "add_note"):
                error.add_note(f"MLflow run {self.run_id}: writing logged metrics failed; {unwritten} points are "
                               f"still queued and will be tried again")
            self._cond.notify_all()
        return error

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._pending and self._error is None:
                        wait = self._oldest + self.write_interval_s - time.monotonic()
                        if wait <= 0 or self._closed or self._written < self._wanted \
                                or len(self._pending) >= METRICS_PER_BATCH:
                            break
                        self._cond.wait(wait)
                    elif self._closed:
                        return
                    else:
                        self._cond.wait()
                batch = self._pending[:METRICS_PER_BATCH]
            try:
                retry(self.client.log_batch, self.run_id, metrics=batch)
            except BaseException as e:  # noqa: BLE001 - kept for the caller; the points stay queued
                with self._cond:
                    if not self._tolerant:
                        self._error = e
                        self._cond.notify_all()
                        continue
                    if self._closed:  # end() gave up on the store and said so
                        return
                    since, failures = self._outage or (time.monotonic(), 0)
                    self._outage = (since, failures + 1)
                    self._cond.notify_all()  # a waiting flush returns
                    if not failures:
                        self._warn(f"the store does not answer ({type(e).__name__}: {e}); training goes on, "
                                   f"{self._logged - self._written} metric points are kept and tried again")
                    until = time.monotonic() + min(MAX_BACKOFF_S, self.write_interval_s * 2 ** min(failures, 10))
                    while not self._closed and (left := until - time.monotonic()) > 0:
                        self._cond.wait(left)  # a flush or a full queue does not shorten the pause
                continue
            with self._cond:
                del self._pending[:len(batch)]
                self._written += len(batch)
                self._sync_down = False
                self._oldest = time.monotonic()
                if self._outage is not None:
                    self._warn(f"the store answers again after {time.monotonic() - self._outage[0]:.0f} s and "
                               f"{self._outage[1]} failed writes; no metric point was lost")
                    self._outage = None
                self._cond.notify_all()

    def _flush_at_exit(self) -> None:
        """atexit: a run that never reached end() (a crash) still gets the points it logged."""
        if os.getpid() != self._pid or self._closed:  # a forked child inherited the handler
            return
        try:
            if not self.flush(timeout=60):
                self._warn(f"{self._logged - self._written} metric points could not be written at exit: the store "
                           f"does not answer")
        except BaseException as e:  # noqa: BLE001 - nothing left to raise to at exit
            print(f"[tracking] MLflow run {self.run_id}: {self._logged - self._written} metric points could not "
                  f"be written at exit: {e}", file=sys.stderr, flush=True)

    # --- system metrics ------------------------------------------------------------------------------
    def _start_system_metrics(self, interval_s: float, resume: bool):
        """MLflow's monitor, bound to this run (not to a global active run); its points join our queue.

        System metrics are an aid, not the run's record: when the monitor cannot start (psutil
        missing, say), the run goes on without them and says so on stderr."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, samples_before_logging=1,
                                           resume_logging=resume, tracking_uri=self.uri)
        except Exception as e:  # noqa: BLE001
            print(f"[tracking] MLflow run {self.run_id}: no system metrics ({type(e).__name__}: {e})",
                  file=sys.stderr, flush=True)
            return None
        if hasattr(monitor, "mlflow_logger"):
            monitor.mlflow_logger = _QueuedSystemMetrics(self)
        monitor.monitor = functools.partial(_sample_until_stopped, monitor, self.run_id)  # the thread's target
        monitor.start()
        return monitor


def _sample_until_stopped(monitor, run_id: str) -> None:
    """The system metrics monitor's loop, kept alive for the whole run.

    MLflow's own loop asks the store for the run's status before every sample and returns for good at the
    first failed call, or at the first sample that raises (a network blip to a remote tracking server, a
    NVML error): a week-long run then has no system metrics from that moment on, with one warning in
    MLflow's log. Here the tracker decides when the monitor stops (`Tracker.end` calls `finish`), the store
    is not asked anything (points go to the tracker's queue, which rides out outages), and a failed sample
    is skipped: the first failure is printed, and how many, when it stops."""
    failures = 0
    while not monitor._shutdown_event.is_set():
        try:
            for _ in range(monitor.samples_before_logging):
                monitor.collect_metrics()
                if monitor._shutdown_event.wait(monitor.sampling_interval):
                    break
            else:
                monitor.publish_metrics(monitor.aggregate_metrics())
        except Exception as e:  # noqa: BLE001 - an aid, not the run's record: skip the sample, go on
            failures += 1
            if failures == 1:
                print(f"[tracking] MLflow run {run_id}: a system metrics sample failed ({type(e).__name__}: {e}); "
                      "the monitor goes on", file=sys.stderr, flush=True)
            for m in monitor.monitors:
                m.clear_metrics()  # a half-collected sample is not averaged into the next
            monitor._shutdown_event.wait(monitor.sampling_interval)
    if failures:
        print(f"[tracking] MLflow run {run_id}: {failures} system metrics sample(s) failed and were skipped",
              file=sys.stderr, flush=True)


class _QueuedSystemMetrics:
    """Stands in for the system metrics monitor's own BatchMetricsLogger (which writes synchronously,
    without retrying a locked store): its points join the tracker's queue instead. A held write error
    is left for the trainer's next call, never raised in the monitor's thread."""

    data: tuple = ()
    total_training_time = 0.0
    total_log_batch_time = 0.0

    def __init__(self, tracker: Tracker):
        self._tracker = tracker

    def record_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._tracker._enqueue(metrics, step or 0)

    def flush(self) -> None:
        pass


def backfill(client, run_id: str, rows: list[dict]) -> int:
    """Write the points of `rows` (metrics.jsonl records, {"step": N, name: value, ...}) that the run's
    history lacks, by metric and step; returns how many it wrote."""
    from mlflow.entities import Metric

    now, missing = int(time.time() * 1000), []
    for key in sorted({k for r in rows for k in r if k != "step"}):
        have = {m.step for m in retry(client.get_metric_history, run_id, key)}
        for r in rows:
            value = r.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and int(r["step"]) not in have:
                missing.append(Metric(key, float(value), now + len(missing), int(r["step"])))
    for i in range(0, len(missing), METRICS_PER_BATCH):
        retry(client.log_batch, run_id, metrics=missing[i:i + METRICS_PER_BATCH])
    return len(missing)


def read_metrics_log(path: Path) -> list[dict]:
    """A run's metrics.jsonl as records (a line cut short by a crash is left out)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def sync(run_dir: str | os.PathLike, tracking_uri: str = "") -> int:
    """Write to a run's MLflow run every point of its metrics.jsonl that the store lacks (after an outage
    outlasted the run); the run id comes from run.json, else from the newest saved state."""
    from train.checkpointing import STATE_FILE, valid_states

    run_dir = Path(run_dir)
    record = run_dir / "run.json"
    states = valid_states(run_dir)
    if record.is_file():
        info = json.loads(record.read_text())
    elif states:
        info = json.loads((states[-1] / STATE_FILE).read_text())
    else:
        raise FileNotFoundError(f"{run_dir}: no run.json and no saved state, so no MLflow run id to write to")
    run_id = info.get("mlflow_run_id")
    if not run_id:
        raise ValueError(f"{record if record.is_file() else states[-1] / STATE_FILE}: field 'mlflow_run_id' is "
                         f"empty (a run trained without tracking)")
    uri = tracking_uri or info.get("tracking_uri") or default_tracking_uri()
    return backfill(make_client(uri), run_id, read_metrics_log(run_dir / "metrics.jsonl"))


class NullTracker:
    """What non-main processes hold: every call is a no-op."""

    run_id = None
    uri = None

    def log_metrics(self, metrics: dict, step: int) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None


def run_metrics(uri: str, run_id: str) -> dict:
    """Latest value of every metric of a run (used to match a run by its MLflow id)."""
    return dict(retry(make_client(uri).get_run, run_id).data.metrics)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train.tracking", description="MLflow helpers of the trainer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sync", help="write a run's metrics.jsonl points that its MLflow run lacks")
    p.add_argument("run_dir")
    p.add_argument("--tracking_uri", default="", help="default: the run's own (run.json), else the project's store")
    args = parser.parse_args(argv)
    try:
        n = sync(args.run_dir, args.tracking_uri)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run_dir}: wrote {n} metric points missing from its MLflow run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
