"""An evaluation killed with SIGKILL mid-task resumes to the files of an uninterrupted run.

A real `python -m evalsuite vcot` runs in a subprocess on a tiny checkpoint; it is killed at a random
moment after its first prediction line exists (twice, the second time with its last line also cut in
half, as a kill inside `write` leaves it), then run again to the end. Its `predictions.jsonl` must hold
every key exactly once and equal, with `metrics.json`, the files of a run that was never interrupted.
(the same logic in-process: `tests/test_eval_resume.py::test_killed_run_resumes_to_identical_outputs`,
with ranks: `tests/test_eval_resume.py::test_two_ranks_merge_to_the_single_process_outputs`; this is the
real kill.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalsuite.outputs import read_rows
from helpers import tiny_model

REPO = Path(__file__).resolve().parents[1]
ITEMS, FRAMES = 24, ("3", "4")
ROWS = ITEMS * len(FRAMES) * 6  # items x F x conditions (base, caption, vcot, blind, text_only, reversed)


def _cmd(ckpt: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "evalsuite", "vcot", str(ckpt), "--limit", str(ITEMS), "--frames", *FRAMES,
            "--infills", "oracle", "--no-tracking", "--no-progress", "--n-boot", "200", "--cache-dir", str(cache)]


def _env(tmp: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'm.db'}")


def _run(ckpt: Path, tmp: Path) -> float:
    """One uninterrupted run; returns how long it predicted (first prediction line to exit)."""
    pred = ckpt / "eval" / "vcot" / "predictions.jsonl"
    p = subprocess.Popen(_cmd(ckpt, tmp / "cache"), env=_env(tmp), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None:
        if first is None and pred.exists() and pred.stat().st_size:
            first = time.time()
        time.sleep(0.01)
    assert p.returncode == 0, p.stderr.read()[-4000:]
    return time.time() - (first or time.time())


def _kill_mid_task(ckpt: Path, tmp: Path, delay: float) -> int | None:
    """Start the evaluation and SIGKILL it `delay` s after its first new prediction line.

    Returns the rows left behind, or None when the run finished before the kill landed.
    """
    pred = ckpt / "eval" / "vcot" / "predictions.jsonl"
    start = len(read_rows(pred)) if pred.exists() else 0
    p = subprocess.Popen(_cmd(ckpt, tmp / "cache"), env=_env(tmp), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline and (
                not pred.exists() or len(pred.read_bytes().splitlines()) <= start):
            time.sleep(0.005)
        time.sleep(delay)
        finished = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return None if finished else len(read_rows(pred))


@pytest.mark.slow
def test_sigkilled_evaluation_resumes_to_the_uninterrupted_files(tmp_path, tmp_path_factory):
    ckpt = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "ckpt")
    predicting = _run(ckpt, tmp_path)
    ref = tmp_path / "eval-uninterrupted"
    (ckpt / "eval").rename(ref)
    want_pred = (ref / "vcot" / "predictions.jsonl").read_bytes()
    want_metrics = (ref / "vcot" / "metrics.json").read_bytes()
    assert len(read_rows(ref / "vcot" / "predictions.jsonl")) == ROWS

    rng = random.Random(11)
    pred = ckpt / "eval" / "vcot" / "predictions.jsonl"
    left: list[int] = []
    for _ in range(6):  # two kills that land; a run that outpaced its kill is started over
        got = _kill_mid_task(ckpt, tmp_path, rng.uniform(0.0, 0.5 * predicting))
        if got is None:
            shutil.rmtree(ckpt / "eval")
            left.clear()
            continue
        left.append(got)
        assert not (ckpt / "eval" / "vcot" / "metrics.json").exists()
        if len(left) == 2:  # a kill inside `write` leaves half a line: cut the last line as it would be
            data = pred.read_bytes()
            last = data.rstrip(b"\n").rfind(b"\n") + 1
            pred.write_bytes(data[: last + max(1, (len(data) - last) // 2)])
            break
    assert len(left) == 2 and 0 < left[0] <= left[1] <= ROWS and left[0] < ROWS, left

    _run(ckpt, tmp_path)
    rows = read_rows(pred)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == ROWS  # no duplicate, no gap
    assert set(keys) == {r["key"] for r in read_rows(ref / "vcot" / "predictions.jsonl")}
    assert pred.read_bytes() == want_pred  # same rows, same canonical order, same values
    assert (ckpt / "eval" / "vcot" / "metrics.json").read_bytes() == want_metrics
    assert not list((ckpt / "eval" / "vcot").glob(".*tmp*"))  # no temporary file left behind
    m = json.loads(want_metrics)
    assert m["n_rows"] == ROWS and not m["errors"]
