"""Training: the trainer's loop against a bare PyTorch loop, time spent waiting for data, ZeRO-2/3.

Everything runs the demo's training settings (`video_demo`'s `train:` section: LoRA r16 + projector +
embeddings, batch 8 of 5 frames of 64 px) on the tiny Llava.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from timing import interleave_measured
from trainer_runs import WARMUP_STEPS, bare_step_seconds, samples_per_s, trainer_step_seconds, wait_share

pytestmark = pytest.mark.bench

ROUNDS = 4
LOOP_STEPS = 40
WAIT_STEPS, WAIT_SKIP = 80, 10
ZERO_STEPS = 30


def test_trainer_loop_against_a_bare_loop(train_work, table):
    """train/lora.py's loop (single process, --ds_config none) vs forward/backward/step, same batch in memory."""
    batch = train_work.first_batch()
    runs = itertools.count()

    def trainer(*extra):
        # (median step, median MLflow log call) of one in-process run of train.lora.main
        return lambda: trainer_step_seconds(train_work, batch, LOOP_STEPS, f"loop-{next(runs)}", *extra)

    t = interleave_measured({
        "trainer": trainer(),
        "trainer, logging every 10 steps": trainer("--logging_steps", "10"),
        "bare": lambda: (bare_step_seconds(train_work, batch, LOOP_STEPS), None),
    }, rounds=ROUNDS)
    ratio = t.ratio("trainer", "bare")
    sparse = t.ratio("trainer, logging every 10 steps", "bare")
    logging_ms = 1e3 * statistics.median(t.results["trainer"])
    note = ""
    if ratio > 1.15:
        note = (f"each step logs to MLflow synchronously (sqlite): {logging_ms:.0f} ms per step; "
                f"with --logging_steps 10 the loop is at {sparse:.2f}x")
    table.check("Training", "step time: trainer loop / bare PyTorch loop (same model, batch in memory)", ratio,
                fmt="{:.2f}x", at_most=1.15,
                detail=f"{t.median('trainer') * 1e3:.0f} vs {t.median('bare') * 1e3:.0f} ms, {t.rounds} rounds",
                note=note)
    table.check("Training", "the same, --logging_steps 10", sparse, fmt="{:.2f}x", at_most=1.15,
                detail=f"{t.median('trainer, logging every 10 steps') * 1e3:.0f} ms")


def test_time_waiting_for_data(train_work, subprocess_env, table):
    """data_wait_share of metrics.jsonl with 2 loader workers, streaming from the shards."""
    metrics = train_work.run("data-wait", "--max_steps", str(WAIT_STEPS), "--ds_config", "none",
                             "--num_workers", "2", env=subprocess_env)
    share = wait_share(metrics, skip=WAIT_SKIP)
    worst = max(m["data_wait_share"] for m in metrics[WAIT_SKIP:])
    table.check("Training", "share of step time waiting for data (2 loader workers)", 100 * share, fmt="{:.1f}%",
                at_most=5, detail=f"{len(metrics) - WAIT_SKIP} steps, worst step {100 * worst:.0f}%, "
                                  f"{samples_per_s(metrics, WAIT_SKIP):.0f} samples/s",
                note="see the hand-over row under Data" if share > 0.05 else "")


ZERO_SETUPS = [  # (label, processes, extra flags, accelerate launcher file)
    ("no DeepSpeed", 1, ("--ds_config", "none"), None),
    ("ZeRO-2", 1, ("--ds_config", "zero2"), None),
    ("ZeRO-3", 1, ("--ds_config", "zero3"), None),
    ("ZeRO-2", 2, (), "cpu_zero2_2proc.yaml"),
    ("ZeRO-3", 2, (), "cpu_zero3_2proc.yaml"),
]


def test_zero_throughput(train_work, subprocess_env, table):
    """Samples/s (summed over processes) under ZeRO-2 and ZeRO-3 with 1 and 2 processes."""
    rates = {}
    for label, procs, extra, launcher in ZERO_SETUPS:
        name = f"zero-{label.replace(' ', '_')}-{procs}p"
        metrics = train_work.run(name, "--max_steps", str(ZERO_STEPS), "--num_workers", "1", *extra,
                                 env=subprocess_env, launcher=launcher)
        rates[label, procs] = samples_per_s(metrics)
    base = rates["no DeepSpeed", 1]
    for (label, procs), rate in rates.items():
        how = "python train/lora.py" if procs == 1 else "accelerate launch (gloo)"
        relative = "" if (label, procs) == ("no DeepSpeed", 1) else f", {rate / base:.2f}x no DeepSpeed"
        table.add("Training", f"samples/s, {label}, {procs} process{'es' if procs > 1 else ''}",
                  f"{rate:.0f}{relative}",
                  note=f"{how}; 1 loader worker per process; median of steps {WARMUP_STEPS + 1}-{ZERO_STEPS}, one run each")
