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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal


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
               tmp_name: str | None = None) -> Iterator[Path]:
    """A new empty directory beside `path` for the caller to fill; renamed to `path` when the block ends
    without an error, removed with its content when it raises (`path` is then left as it was).

    The directory is `.NAME.XXXXXXXX`, unique per call (one a killed process leaves behind is never
    reused), or `tmp_name` in the same folder: a fixed name that callers and readers know (a data
    build's `.NAME.building`, a training state's `.step-N.tmp`, which checkpoint discovery skips); one
    left by a killed run is deleted first. It is made with `mkdir`, so it and `path` get the usual
    permissions. A `path` that already exists when the block ends is
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
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
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
