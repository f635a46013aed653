"""Resumable training states and the final checkpoint directory.

A state lives in `RUN/checkpoints/step-N/`: `accelerator.save_state` (model, optimizer, scheduler,
DeepSpeed partitions, every process's RNG) plus `trainer_state.json` (step, micro-batches consumed,
consumption, passes, schedule length, MLflow run id). It is written to `.step-N.tmp` and renamed
only once complete, so a crash mid-save leaves the previous state the newest valid one; a directory
without `trainer_state.json` is never picked up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from data_recipes.files import atomic_write_json

STATE_FILE = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")


def valid_states(run_dir: Path) -> list[Path]:
    """Complete states, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def find_resume(run_dir: Path, resume: str) -> Path | None:
    """The state to resume from: 'latest' (None when there is none yet) or an explicit directory."""
    if not resume:
        return None
    if resume == "latest":
        states = valid_states(run_dir)
        return states[-1] if states else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise FileNotFoundError(f"--resume {p}: not a complete training state (no {STATE_FILE})")
    return p


def save_state(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write a complete resumable state for `step` (all processes call this)."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)  # the marker of completeness, written last
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in valid_states(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> dict:
    """The trainer's bookkeeping of a state (step, consumption, data position...)."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_state(accelerator, path: Path) -> None:
    """Model, optimizer, scheduler and RNG of every process (all processes call this)."""
    accelerator.load_state(str(path))
