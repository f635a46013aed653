"""Training survives SIGKILL: resumed runs finish with the same consumption and the same losses."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from train.checkpointing import STATE_FILE, find_resume, valid_states

REPO = Path(__file__).resolve().parents[1]
LORA = str(REPO / "train" / "lora.py")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    train = {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
             "gradient_checkpointing": False, "projector_lr": 1e-3, "num_workers": 1, "learning_rate": 1e-3,
             "warmup_steps": 2, "ds_config": "none", "save_steps": 2, "save_total_limit": 3,
             "record_samples": True, "max_steps": 12}
    (d / "vid.yaml").write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}],
                                                "samples": 48, "frames": 3, "shard_size": 16, "train": train}))
    return d


def _env(work: Path) -> dict:
    return dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", PYTHONPATH=str(REPO))


def _run(work: Path, *args: str) -> None:
    p = subprocess.run([sys.executable, LORA, "--recipe", "vid.yaml", *args], cwd=work, env=_env(work),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]


def _losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(work):
    _run(work, "--run_name", "ref")
    ref = json.loads((work / "ckpt" / "ref" / "run.json").read_text())
    rng = random.Random(7)
    for attempt in range(2):
        name = f"killed{attempt}"
        run_dir = work / "ckpt" / name
        p = subprocess.Popen([sys.executable, LORA, "--recipe", "vid.yaml", "--run_name", name], cwd=work,
                             env=_env(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment after the first state exists: mid-step or mid-save.
        deadline = time.time() + 300
        while not valid_states(run_dir) and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        states = valid_states(run_dir)
        assert states, "no state was saved before the kill"
        for s in states:  # nothing half-written is ever listed
            assert (s / STATE_FILE).exists()
        _run(work, "--run_name", name, "--resume", "latest")
        info = json.loads((run_dir / "run.json").read_text())
        assert info["consumed"] == ref["consumed"] and info["steps"] == ref["steps"] == 12
        got, want = _losses(run_dir), _losses(work / "ckpt" / "ref")
        assert sorted(got) == list(range(1, 13))
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
        seen = (run_dir / "samples" / "rank-0.txt").read_text()
        assert seen == (work / "ckpt" / "ref" / "samples" / "rank-0.txt").read_text()


def test_half_written_states_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-2").mkdir(parents=True)
    (root / "step-2" / STATE_FILE).write_text("{}")
    (root / "step-4").mkdir()                      # killed before its state file was written
    (root / ".step-6.tmp").mkdir()                 # killed mid-save
    (root / ".step-6.tmp" / STATE_FILE).write_text("{}")
    assert find_resume(tmp_path, "latest") == root / "step-2"
    assert find_resume(tmp_path, "") is None
    with pytest.raises(FileNotFoundError, match="not a complete training state"):
        find_resume(tmp_path, str(root / "step-4"))
