"""Evaluation outputs on disk: `CKPT/eval/<task>/{settings.json, predictions.jsonl, metrics.json}`.

- `predictions.jsonl` holds one JSON line per prediction row, each with a unique `key`. Rows are
  appended and flushed as items finish, so a killed run resumes where it stopped: rows already there
  are skipped, a last line cut mid-write is truncated away (repair), and a merge at the end drops
  duplicates and writes the rows in the task's canonical order, so a resumed run's files equal an
  uninterrupted run's.
- Under several ranks each rank appends to `predictions.part<rank>.jsonl`; the main process merges.
- `settings.json` is written when an evaluation starts; a rerun with other settings moves the old
  directory aside (`<task>.stale-<hash>`) rather than mixing predictions made two ways.
- `metrics.json` is written last, atomically; its presence with matching settings means "done".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from data_recipes.files import atomic_write_text


class OutputError(ValueError):
    pass


STALE = ".stale-"
"""What a task directory's name gets, with its old settings' hash, when a rerun with other settings moves it aside."""


def is_live_task(name: str) -> bool:
    """Whether `CKPT/eval/<name>` holds a task's current outputs (not ones moved aside, not a hidden file)."""
    return STALE not in name and not name.startswith(".")


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file; a last line cut mid-write is dropped (and cut from the file when `repair`)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # tail is b"" when the file ends with a newline
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise OutputError(f"{path}:{n}: corrupt line in the middle of the file ({e}); "
                              f"delete the file to start this evaluation over") from None
    if tail.strip():
        try:
            rows.append(json.loads(tail))  # complete, only its newline was lost
            fix = "newline"
        except json.JSONDecodeError:
            fix = "truncate"
        if repair:
            with open(path, "r+b") as f:
                if fix == "truncate":
                    f.truncate(len(data) - len(tail))
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
    return rows


class TaskOutputs:
    """The output directory of one task on one checkpoint, for one rank."""

    def __init__(self, ckpt_path: Path, task: str, rank: int = 0, world_size: int = 1):
        self.dir = Path(ckpt_path) / "eval" / task
        self.rank, self.world_size = rank, world_size
        self.predictions = self.dir / "predictions.jsonl"
        self.metrics = self.dir / "metrics.json"
        self.settings = self.dir / "settings.json"

    @property
    def part(self) -> Path:
        return self.predictions if self.world_size == 1 else self.dir / f"predictions.part{self.rank}.jsonl"

    def is_done(self, settings: dict) -> bool:
        if not self.metrics.is_file():
            return False
        try:
            return json.loads(self.metrics.read_text()).get("settings") == settings
        except json.JSONDecodeError:
            return False

    def prepare(self, settings: dict) -> str | None:
        """Main process: make the directory ready for `settings`; return where stale outputs went."""
        moved = None
        if self.settings.is_file() and json.loads(self.settings.read_text()) != settings:
            old = json.loads(self.settings.read_text())
            target = self.dir.with_name(f"{self.dir.name}{STALE}{settings_hash(old)}")
            if target.exists():
                shutil.rmtree(target)
            self.dir.rename(target)
            moved = str(target)
        elif self.dir.is_dir() and not self.settings.is_file() and any(self.dir.iterdir()):
            raise OutputError(f"{self.dir}: outputs without settings.json; move them away to re-evaluate")
        if not self.settings.is_file():
            write_json_atomic(self.settings, settings)
        self.metrics.unlink(missing_ok=True)  # stale once predictions change
        for tmp in self.dir.glob(".*.tmp-*"):  # left by a process killed inside an atomic write
            tmp.unlink(missing_ok=True)
        return moved

    def _all_parts(self) -> list[Path]:
        return [self.predictions] + sorted(self.dir.glob("predictions.part*.jsonl"))

    def done_keys(self) -> set[str]:
        """Keys already predicted (in any file); repairs this rank's own file."""
        keys = set()
        for p in self._all_parts():
            keys |= {r["key"] for r in read_rows(p, repair=(p == self.part))}
        return keys

    def append(self, rows: Iterable[dict]) -> None:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        with open(self.part, "a") as f:
            f.write(data)
            f.flush()

    def merge(self, order: list[str]) -> list[dict]:
        """Main process after the barrier: all rows, deduplicated, in `order`; parts are folded in."""
        rows: dict[str, dict] = {}
        for p in self._all_parts():
            for r in read_rows(p):
                rows.setdefault(r["key"], r)
        missing = [k for k in order if k not in rows]
        if missing:
            raise OutputError(f"{self.dir}: {len(missing)} predictions missing after all ranks finished "
                              f"(first: {missing[0]})")
        rank = {k: i for i, k in enumerate(order)}
        merged = sorted((r for k, r in rows.items() if k in rank), key=lambda r: rank[r["key"]])
        atomic_write_text(self.predictions, "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged))
        for p in self._all_parts()[1:]:
            p.unlink()
        return merged

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics, metrics)
