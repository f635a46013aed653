"""Driving `train/lora.py` for the benchmarks: as a subprocess, in-process on a batch in memory, and bare.

- `TrainWork.run(...)`: the real command (`python train/lora.py` or `accelerate launch ...`) in a
  subprocess, as `run_lora` in `tests/helpers.py` drives it; returns the run's `metrics.jsonl` rows.
- `trainer_step_seconds(...)`: `train.lora.main` in this process with its data loader replaced by
  the same collated batch, again and again; the time between two requests for a batch is one full
  iteration of the trainer's loop (accounting, clipping, scheduler, logging included).
- `bare_step_seconds(...)`: the same peft model, optimizer and batch through a bare
  forward / backward / step / zero_grad loop: the limit the trainer is compared against.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[2]
LORA = REPO / "train" / "lora.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")
WARMUP_STEPS = 5  # first iterations (allocator, autograd graph, lazy inits) left out of every median
# Subprocess runs are sized in steps, never in wall time; the timeout only catches a hung run (a
# machine several times slower than this one must still finish, and be judged on its ratios).
RUN_TIMEOUT_S = 3 * 3600


@dataclass
class TrainWork:
    root: Path
    recipe: Path
    model: Path
    batch_size: int

    @classmethod
    def create(cls, root: Path, model: Path, samples: int = 1024) -> "TrainWork":
        """The demo's video recipe (5 frames of 64 px) and training section, on `model`; shards built.

        Every step is logged (`logging_steps: 1`, whatever the demo logs): the benchmarks read one
        metrics.jsonl row per step, and `--logging_steps N` on a run's command line still wins."""
        from data_recipes.build import build
        from data_recipes.recipe import load_recipe

        demo = load_recipe("video_demo")
        train = dict(demo.train, base_model=str(model), save_steps=0, num_workers=2, logging_steps=1)
        train.pop("max_samples", None)  # every benchmark run gives its own --max_steps
        root.mkdir(parents=True, exist_ok=True)
        recipe = root / "bench_video.yaml"
        recipe.write_text(yaml.safe_dump({
            "kind": "video", "sources": [{"type": "synthetic_video"}], "samples": samples,
            "frames": demo.frames, "image_size": demo.image_size, "seed": 0, "split": "train",
            "max_bad_fraction": 0.0, "shard_size": 64, "train": train}))
        build(load_recipe(recipe), root / "shards" / recipe.stem)
        return cls(root, recipe, model, int(train["per_device_batch_size"]))

    def argv(self, run_name: str, *extra: str) -> list[str]:
        return ["--recipe", str(self.recipe), "--run_name", run_name, "--output_root", str(self.root / "ckpt"),
                "--shards_root", str(self.root / "shards"), "--tracking_uri", f"sqlite:///{self.root / 'mlflow.db'}",
                *extra]

    def run(self, run_name: str, *extra: str, env: dict, launcher: str | None = None) -> list[dict]:
        """Train in a subprocess (`launcher`: a file of ds_configs/accelerate/); the metrics.jsonl rows."""
        if launcher:
            cmd = [str(ACCELERATE), "launch", "--config_file", str(REPO / "ds_configs" / "accelerate" / launcher),
                   "--main_process_port", str(free_port()), str(LORA)]
        else:
            cmd = [sys.executable, str(LORA)]
        cmd += self.argv(run_name, *extra)
        p = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
        lines = (self.root / "ckpt" / run_name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def first_batch(self):
        """The trainer's first micro-batch of the shards, collated (a `train.data.Batch`)."""
        from data_recipes.build import shard_urls
        from train.data import Batch, ShardStream
        from train.families import load_model

        _, processor, _ = load_model(self.model)
        stream = ShardStream(shard_urls(self.root / "shards" / self.recipe.stem), processor,
                             batch_size=self.batch_size, seed=0)
        pass_index, raw = next(stream.batches_of_reader(0, 1))
        return Batch(*stream.collate(raw), pass_index)


def free_port() -> int:
    # accelerate's default port may be taken by someone else's run on the same machine
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- metrics.jsonl -------------------------------------------------------------------------------
def steady(metrics: list[dict], skip: int = WARMUP_STEPS) -> list[dict]:
    """The rows of the steps after the first `skip` (by step number: a row may cover several steps
    when a run logs every N). Runs are sized in steps, so this fails only for a run given fewer steps
    than its warm-up, never for a slow machine."""
    rows = [m for m in metrics if m["step"] > skip]
    if not rows:
        steps = metrics[-1]["step"] if metrics else 0
        raise ValueError(f"the run logged {len(metrics)} rows up to step {steps}: give it more than the {skip} "
                         f"warm-up steps")
    return rows


def samples_per_s(metrics: list[dict], skip: int = WARMUP_STEPS) -> float:
    """Median of the trainer's own samples/s over the steps after the warm-up."""
    return statistics.median(m["samples_per_s"] for m in steady(metrics, skip))


def wait_share(metrics: list[dict], skip: int = WARMUP_STEPS) -> float:
    """Share of all steady steps' time spent waiting for data (each step weighted by its duration)."""
    rows = steady(metrics, skip)
    # a row's duration: its step_time_s, or (older trainers) 1 / samples_per_s for equal-sized steps
    durations = [m["step_time_s"] if "step_time_s" in m else 1 / m["samples_per_s"] for m in rows]
    return sum(m["data_wait_share"] * d for m, d in zip(rows, durations)) / sum(durations)


# --- in-process loops ----------------------------------------------------------------------------
def trainer_step_seconds(work: TrainWork, batch, steps: int, run_name: str, *extra: str) -> tuple[float, float]:
    """Median time of one iteration of `train.lora.main`'s loop fed `batch` from memory, and the
    median time of its MLflow `log_metrics` call after the warm-up (0 when it logged nothing then):
    the call only queues the points, a background thread writes them (`train.tracking.Tracker`)."""
    import train.lora as lora

    requested: list[float] = []
    logging: list[float] = []
    log_metrics = lora.Tracker.log_metrics

    def in_memory(stream, num_workers):
        def batches():
            while True:
                requested.append(time.perf_counter())
                yield batch
        return batches()

    def timed_log_metrics(self, metrics, step):
        t0 = time.perf_counter()
        log_metrics(self, metrics, step)
        logging.append(time.perf_counter() - t0)

    quiet = io.StringIO()
    with mock.patch.object(lora, "make_loader", in_memory), \
            mock.patch.object(lora.Tracker, "log_metrics", timed_log_metrics), \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        lora.main(work.argv(run_name, "--max_steps", str(steps), "--ds_config", "none", *extra))
    step = statistics.median(b - a for a, b in list(zip(requested, requested[1:]))[WARMUP_STEPS:])
    return step, statistics.median(logging[WARMUP_STEPS:]) if logging[WARMUP_STEPS:] else 0.0


def bare_step_seconds(work: TrainWork, batch, steps: int) -> float:
    """Median time of a bare forward/backward/step/zero_grad on the trainer's model, optimizer and batch."""
    from accelerate.utils import set_seed

    from data_recipes.recipe import load_recipe
    from train.config import resolve
    from train.families import load_model
    from train.models import wrap_lora
    from train.schedule import make_optimizer

    cfg = resolve(work.argv("bare", "--max_steps", str(steps)), recipe_train=lambda r: load_recipe(r).train)
    set_seed(cfg.seed)
    model, _, family = load_model(work.model)
    model = wrap_lora(model, family, cfg)
    optimizer = make_optimizer(model, cfg)
    model.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(**batch.inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[WARMUP_STEPS:])
