"""`--dry_run` on config-only 7B directories of four families: wall time and peak memory of each plan.

Each plan runs `python train/lora.py --recipe video_demo --base_model DIR --dry_run --gpus 8 --nodes 2`
in a fresh process (imports included); the target is under 30 s and 2 GB per model on a laptop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_7b import PUBLISHED, write_config_dir  # tests/, on the path through tests/conftest.py

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench


def test_dry_run_cost(tmp_path, subprocess_env, table):
    seconds, peaks = {}, {}
    for family in PUBLISHED:
        model = write_config_dir(family, tmp_path / family)
        cmd = [sys.executable, str(REPO / "train" / "lora.py"), "--recipe", "video_demo", "--base_model", str(model),
               "--shards_root", str(tmp_path / "shards"), "--dry_run", "--gpus", "8", "--nodes", "2"]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        seconds[family] = time.perf_counter() - t0
        assert os.waitstatus_to_exitcode(status) == 0, p.stderr.read().decode()[-3000:]
        peaks[family] = usage.ru_maxrss / 2**20  # KiB -> GiB
    detail = ", ".join(f"{f} {seconds[f]:.1f} s / {peaks[f]:.2f} GB" for f in PUBLISHED)
    table.check("Training", "--dry_run of a config-only 7B model: slowest of 4 families, s", max(seconds.values()),
                fmt="{:.1f}", at_most=30, detail=detail, note="a fresh process per plan, imports included")
    table.check("Training", "--dry_run peak memory: largest of 4 families, GB", max(peaks.values()), fmt="{:.2f}",
                at_most=2.0, note="meta device: no weight is read or allocated")
