"""One writer per directory: two builds of a recipe, or two trainers of one run directory (a study rerun while
the first job still runs, a job requeued beside its old self), would overwrite each other's files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from data_recipes.__main__ import main as data_cli
from data_recipes.build import build
from data_recipes.files import DirLock, LockHeld
from helpers import run_lora


def _held_by(path, **holder) -> None:
    """A lock file as another process left it."""
    path.write_text(json.dumps({"host": "node-b", "pid": 4242, "slurm_job": None, "slurm_restart": None} | holder))


def test_a_held_lock_is_refused_and_names_its_holder(tmp_path):
    lock = DirLock(tmp_path / ".x.lock", "writing x").acquire()
    with pytest.raises(LockHeld) as e:
        DirLock(tmp_path / ".x.lock", "writing x").acquire()  # this very process: alive
    assert f"{tmp_path / '.x.lock'}: writing x is already in progress (host {socket.gethostname()}, pid " \
           f"{os.getpid()}" in str(e.value) and f"delete {tmp_path / '.x.lock'}" in str(e.value)
    lock.release()
    assert not (tmp_path / ".x.lock").exists()
    DirLock(tmp_path / ".x.lock", "writing x").acquire().release()  # free again


def test_a_lock_left_by_a_process_that_is_gone_is_taken_over(tmp_path, monkeypatch, capsys):
    path = tmp_path / ".x.lock"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _held_by(path, host=socket.gethostname(), pid=int(done.stdout))  # same host, its pid no longer runs
    DirLock(path, "x").acquire().release()
    assert "taking over (its process" in capsys.readouterr().out
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # killed, not yet reaped by its parent
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)
    _held_by(path, host=socket.gethostname(), pid=zombie.pid)
    DirLock(path, "x").acquire().release()
    zombie.wait()
    _held_by(path)  # another node, touched just now: may still run
    with pytest.raises(LockHeld):
        DirLock(path, "x").acquire()
    os.utime(path, (time.time() - 2000, time.time() - 2000))  # ... but not for 2,000 s: a lost node
    DirLock(path, "x", stale_s=900).acquire().release()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _held_by(path, slurm_job="77", slurm_restart="0")  # this job before Slurm requeued it, on another node
    DirLock(path, "x").acquire().release()
    _held_by(path, slurm_job="78")
    with pytest.raises(LockHeld):
        DirLock(path, "x").acquire()
    # Another process of this same incarnation of the job (a second trainer in one allocation): not gone,
    # whether it runs on another node or, alive, on this one.
    _held_by(path, slurm_job="77", slurm_restart="1")
    with pytest.raises(LockHeld):
        DirLock(path, "x").acquire()
    _held_by(path, host=socket.gethostname(), pid=os.getppid(), slurm_job="77", slurm_restart="1")
    with pytest.raises(LockHeld):
        DirLock(path, "x").acquire()
    monkeypatch.delenv("SLURM_RESTART_COUNT")  # never requeued: the count is unset for both
    _held_by(path, slurm_job="77")
    with pytest.raises(LockHeld):
        DirLock(path, "x").acquire()


def test_a_held_lock_is_touched_and_release_leaves_anothers_lock(tmp_path):
    path = tmp_path / ".x.lock"
    lock = DirLock(path, "x", heartbeat_s=0.05).acquire()
    os.utime(path, (time.time() - 500, time.time() - 500))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 5  # the heartbeat touched it
    _held_by(path)  # taken over meanwhile by another holder: not ours to delete
    lock.release()
    assert path.exists()


def test_a_second_build_of_a_recipe_is_refused(tmp_path):
    rec = tmp_path / "img.yaml"
    rec.write_text(yaml.safe_dump({"kind": "image", "sources": [{"type": "synthetic_image"}], "samples": 4}))
    (tmp_path / "shards").mkdir()
    _held_by(tmp_path / "shards" / ".img.lock")
    with pytest.raises(LockHeld, match="a build of img into .* is already in progress"):
        build(str(rec), tmp_path / "shards" / "img")
    assert not (tmp_path / "shards" / "img").exists() and not (tmp_path / "shards" / ".img.building").exists()
    assert data_cli(["build", str(rec), "--out", str(tmp_path / "shards" / "img")]) == 2
    (tmp_path / "shards" / ".img.lock").unlink()
    build(str(rec), tmp_path / "shards" / "img")
    assert not (tmp_path / "shards" / ".img.lock").exists()  # released


@pytest.mark.slow
def test_a_second_trainer_of_a_run_directory_stops_every_process(tmp_path):
    """Both processes of the second job stop at once with the holder named (no rank left waiting in a
    collective), before anything in the run directory is read or written; a finished run leaves no lock."""
    (tmp_path / "vid.yaml").write_text(yaml.safe_dump({
        "kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 16, "frames": 2, "image_size": 64,
        "train": {"base_model": "tiny:llava", "per_device_batch_size": 2, "num_workers": 0, "save_steps": 0}}))
    run_dir = tmp_path / "ckpt" / "r"
    run_dir.mkdir(parents=True)
    _held_by(run_dir / ".train.lock")
    p = run_lora(tmp_path, "--recipe", str(tmp_path / "vid.yaml"), "--run_name", "r", "--max_steps", "2",
                 "--ds_config", "none", procs=2, check=False)
    assert p.returncode != 0
    assert p.stderr.count("error: ckpt/r/.train.lock: training into ckpt/r is already in progress "
                          "(host node-b, pid 4242") == 2, p.stderr[-3000:]
    assert sorted(x.name for x in run_dir.iterdir()) == [".train.lock"]  # untouched
    (run_dir / ".train.lock").unlink()
    p = run_lora(tmp_path, "--recipe", str(tmp_path / "vid.yaml"), "--run_name", "r", "--max_steps", "2",
                 "--base_model", str(tmp_path / "no-model"), check=False)  # a set-up error after the lock
    assert p.returncode == 2 and "no-model" in p.stderr, p.stderr[-2000:]
    assert not run_dir.exists()  # the directory it made is not left behind empty
    run_lora(tmp_path, "--recipe", str(tmp_path / "vid.yaml"), "--run_name", "r", "--max_steps", "2",
             "--ds_config", "none")
    assert (run_dir / "run.json").is_file() and not (run_dir / ".train.lock").exists()
