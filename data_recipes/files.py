"""Writes that a crash cannot leave half done, and content hashes.

Every file the toolkit writes for another process or a later run to read (results, manifests, state
files, plots, cached frames, videos, I-RAVEN arrays) goes through `atomic_path`, directly or through
`atomic_write_text` / `atomic_write_json`: the data goes to a hidden temporary file in the same
directory (`.NAME.tmp-PID-XXXXXXXX`), which is renamed over the target only once it is complete, so a
reader (or a resumed run) sees the old file or the new one, never a torn one. A temporary file left by
a killed process matches `.*.tmp-*` (`evalsuite.outputs` sweeps them).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` written to `path` through `atomic_path`, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
