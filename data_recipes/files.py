"""Writes that a crash cannot leave half done, and content hashes.

Every file the toolkit writes for another process or a later run to read (results, manifests, state
files, plots, cached frames, videos, I-RAVEN arrays) goes through `atomic_path`, directly or through
`atomic_write_text` / `atomic_write_json`: the data goes to a hidden temporary file in the same
directory (`.NAME.tmp-PID-XXXXXXXX`), which is renamed over the target only once it is complete, so a
reader (or a resumed run) sees the old file or the new one, never a torn one. A temporary file left by
a killed process matches `.*.tmp-*` (`evalsuite.outputs` sweeps them).

Every directory written whole (a data build, a training state, a tiny model, the generated I-RAVEN
set) goes through `atomic_dir` the same way: it is filled under a hidden sibling name and renamed to
its real name once complete.

`DirLock` keeps a second writer out of a directory another process is writing (two builds of one
recipe, two trainers of one run directory after a rerun or a requeue).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; renamed over `path` when the block ends
    without an error, removed when it raises. Unique per process and call, so concurrent writers of one
    file (threads, ranks) never share a temporary file; the last rename wins."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, existing: Literal["delete", "swap", "keep"] = "delete",
               tmp_name: str | None = None, reuse: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A new empty directory beside `path` for the caller to fill; renamed to `path` when the block ends
    without an error, removed with its content when it raises (`path` is then left as it was).

    The directory is `.NAME.XXXXXXXX`, unique per call (one a killed process leaves behind is never
    reused), or `tmp_name` in the same folder: a fixed name that callers and readers know (a data
    build's `.NAME.building`, a training state's `.step-N.tmp`, which checkpoint discovery skips); one
    left by a killed run is deleted first, unless `reuse(it)` says True: then it is handed to the caller as
    it is (a data build resuming what a killed build left). It is made with `mkdir`, so it and `path` get
    the usual permissions. A `path` that already exists when the block ends is
    - "delete": deleted, then the new directory renamed in (a kill during the delete can leave `path`
      partly deleted; "swap" cannot);
    - "swap": renamed aside to `.NAME.old`, the new one renamed in, and only then the old one deleted:
      at every instant `path` is the complete old directory, the complete new one, or (for the instant
      between the renames) absent with the old one in `.NAME.old`, which the next swap clears;
    - "keep": kept, and the new directory removed. For writers that each make an identical copy at the
      same time (evaluation ranks): the first rename wins, and since only complete copies are ever
      renamed, an existing `path` is complete.
    """
    path = Path(path)
    if existing not in ("delete", "swap", "keep"):
        raise ValueError(f"atomic_dir({path}): existing={existing!r}, expected 'delete', 'swap' or 'keep'")
    if existing == "keep" and tmp_name:
        raise ValueError(f"atomic_dir({path}): existing='keep' is for concurrent writers, which need "
                         f"unique temporary directories, not the fixed tmp_name={tmp_name!r}")
    if tmp_name:
        tmp = path.with_name(tmp_name)
        if tmp.exists() and not (reuse is not None and tmp.is_dir() and reuse(tmp)):
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    try:
        yield tmp
        if existing == "keep":
            try:
                tmp.rename(path)
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(tmp)  # another writer's complete copy is already in place
        elif existing == "swap":
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never hides the error being raised
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` written to `path` through `atomic_path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root: where the shipped recipes, DeepSpeed configs, `train/lora.py` and the default
MLflow store live."""


def shareable_path(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
                   outside: str = "as_given") -> str:
    """`path` as written into outputs users share (manifests, metrics.json, MLflow params), without the
    machine's layout: relative to `root` (default: the working directory) when it lies under it; otherwise
    as given (`outside="as_given"`: a model on shared storage, whose path is its name) or its file name
    alone (`outside="name"`)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path(root or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return p.name if outside == "name" else str(path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- one writer per directory --------------------------------------------------------------------------
LOCK_HEARTBEAT_S = 60.0
"""How often a held lock's file is touched."""
LOCK_STALE_S = 900.0
"""A lock whose file was not touched for this long belongs to a process that is gone (a node lost)."""


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names the file, the holder and what to do."""


def _holder() -> dict:
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT")}


def _restarts(holder: dict) -> int:
    """How often Slurm had restarted the holder's job when it took the lock (SLURM_RESTART_COUNT: unset before
    the first requeue). Processes of one allocation share the job id and this count; only a later incarnation
    of the job has a higher one."""
    try:
        return int(holder.get("slurm_restart") or 0)
    except (TypeError, ValueError):
        return 0


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class DirLock:
    """`path` (a file) held by one process at a time, across the nodes that share its filesystem.

    Taken with O_CREAT | O_EXCL, it records its holder (host, pid, Slurm job); a thread touches it every
    `LOCK_HEARTBEAT_S` while it is held, and `release` removes it. A lock left by a process that is gone
    is taken over: on the same host when its pid no longer runs; when the holder was this same Slurm job
    before Slurm requeued it (after preemption or a node failure: a lower SLURM_RESTART_COUNT; another
    process of the same allocation, with the same count, is not gone); or when nobody touched it for
    `LOCK_STALE_S`. Otherwise `acquire` raises `LockHeld`: two writers of one directory would overwrite each other's files."""

    def __init__(self, path: str | os.PathLike, what: str, stale_s: float = LOCK_STALE_S,
                 heartbeat_s: float = LOCK_HEARTBEAT_S):
        self.path, self.what, self.stale_s, self.heartbeat_s = Path(path), what, stale_s, heartbeat_s
        self.me = _holder()
        self._stop = None

    def _gone(self, holder: dict, age: float) -> str | None:
        """Why the lock's holder is gone (None: it may still run)."""
        if holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int) and \
                holder["pid"] != self.me["pid"] and not _pid_alive(holder["pid"]):
            return f"its process {holder['pid']} no longer runs"
        if holder.get("slurm_job") and holder.get("slurm_job") == self.me["slurm_job"] and \
                _restarts(holder) < _restarts(self.me):
            return f"it was this Slurm job ({holder['slurm_job']}) before a requeue"
        if age > self.stale_s:
            return f"nobody touched it for {age:.0f} s"
        return None

    def acquire(self) -> "DirLock":
        import threading
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                try:
                    holder, age = json.loads(self.path.read_text()), time.time() - self.path.stat().st_mtime
                except (OSError, ValueError):
                    holder, age = {}, time.time() - (self.path.stat().st_mtime if self.path.exists() else 0)
                why = self._gone(holder, age)
                if why is None or attempt:
                    who = ", ".join(f"{k} {v}" for k, v in holder.items() if v is not None) or "an unreadable record"
                    raise LockHeld(f"{self.path}: {self.what} is already in progress ({who}; touched {age:.0f} s "
                                   f"ago). Two at once would overwrite each other's files. Wait for it, or, if it "
                                   f"is gone, delete {self.path}") from None
                print(f"[lock] {self.path}: taking over ({why})", flush=True)
                self.path.unlink(missing_ok=True)
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)
        stop = self._stop = threading.Event()  # the thread's own: `release` drops the attribute

        def beat():
            while not stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        threading.Thread(target=beat, daemon=True, name=f"lock {self.path.name}").start()
        return self

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        try:
            if json.loads(self.path.read_text()) == self.me:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_on_main(path: str | os.PathLike, what: str, is_main: bool,
                 from_main: Callable[[str | None], str | None]) -> DirLock | None:
    """`DirLock(path, what)` for a job of several processes: the main process takes it, and every process
    learns whether it got it (`from_main`: the main process's value on every process), so that all stop
    together with the holder named (`LockHeld`) before anything is read or written. The lock on the main
    process, None elsewhere."""
    lock, error = None, None
    if is_main:
        try:
            lock = DirLock(path, what).acquire()
        except LockHeld as e:
            error = str(e)
    error = from_main(error)
    if error:
        raise LockHeld(error)
    return lock

