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


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it reached the step"
        f = run_dir / "metrics.jsonl"
        lines = f.read_text().splitlines() if f.exists() else []
        if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.mark.slow
def test_sigterm_saves_a_state_before_the_trainer_stops(work):
    """SIGTERM to the trainer's whole process group (as Slurm sends it on preemption: its loader worker gets
    it too) between two periodic saves: the trainer saves a state at the step it reached and exits 143,
    and the resumed run finishes all 12 steps from there. Before, the run died without a state (and its
    loader worker with it)."""
    from train.lora import STOPPED

    run_dir = work / "ckpt" / "term"
    p = subprocess.Popen([sys.executable, LORA, "--recipe", "vid.yaml", "--run_name", "term", "--save_steps", "100",
                          "--logging_steps", "1"], cwd=work, env=_env(work), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _wait_for_step(run_dir, p, 3)
    os.killpg(p.pid, signal.SIGTERM)
    err, _ = p.communicate(timeout=300)
    assert p.returncode == STOPPED, err[-3000:]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    states = valid_states(run_dir)
    assert [json.loads((s / STATE_FILE).read_text())["step"] for s in states] == [last] and 3 <= last < 12
    assert "on request: stopping (SIGTERM)" in err
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_env(work)["MLFLOW_TRACKING_URI"])
    run_id = json.loads((states[0] / STATE_FILE).read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"  # not RUNNING for ever
    _run(work, "--run_name", "term", "--resume", "latest", "--save_steps", "100", "--logging_steps", "1")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["steps"] == 12 and info["consumed"]["samples"] == 48
    assert sorted(_losses(run_dir)) == list(range(1, 13))
    assert info["mlflow_run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    # each step once in MLflow's history, the last one too (finish used to log consumed/* at it a second time)
    steps = [m.step for m in client.get_metric_history(run_id, "consumed/samples")]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 12


@pytest.mark.slow
def test_the_request_file_makes_every_process_save_at_the_same_step(work):
    """Two ZeRO-2 processes; `RUN_DIR/.save_now` (what a Slurm job warned of its time limit writes), which
    only the main process looks for: both save their partitions at the same step, the file is removed, and
    the run trains on to its end."""
    from helpers import ACCELERATE
    from train.lora import SAVE_REQUEST

    run_dir = work / "ckpt" / "asked"
    env = dict(_env(work), TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    p = subprocess.Popen([ACCELERATE, "launch", "--config_file", str(REPO / "ds_configs/accelerate/cpu_zero2_2proc.yaml"),
                          LORA, "--recipe", "vid.yaml", "--run_name", "asked", "--save_steps", "100",
                          "--logging_steps", "1", "--per_device_batch_size", "2"],
                         cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, p, 3)
    (run_dir / SAVE_REQUEST).touch()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    (state,) = valid_states(run_dir)
    step = json.loads((state / STATE_FILE).read_text())["step"]
    assert 3 <= step < 12 and not (run_dir / SAVE_REQUEST).exists()
    partitions = sorted(f.name for f in state.rglob("*optim_states.pt"))
    assert len(partitions) == 2 and any("rank_1" in f for f in partitions), partitions
    assert json.loads((run_dir / "run.json").read_text())["steps"] == 12
