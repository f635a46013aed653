"""Data: shard build with 1 and 2 workers, the loader against the trainer, build memory at 2k vs 20k samples."""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import textwrap
import time
from unittest import mock

import pytest
import yaml

from timing import interleave, interleave_measured
from trainer_runs import RUN_TIMEOUT_S, trainer_step_seconds

# peft's get_peft_model calls a transformers API deprecated for v6: noise on every LoRA wrap
pytestmark = [pytest.mark.bench,
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]

ROUNDS = 3


def write_recipe(path, **fields):
    base = {"sources": [{"type": f"synthetic_{fields['kind']}"}], "image_size": 64, "seed": 0, "split": "train",
            "max_bad_fraction": 0.0}
    path.write_text(yaml.safe_dump(base | fields))
    return path


def test_shard_build_with_1_and_2_workers(bench_root, table):
    """`data_recipes.build.build(recipe, out, workers=K)`: samples/s, and the same bytes either way."""
    from data_recipes.build import build
    from data_recipes.recipe import load_recipe
    from data_recipes.shards import ShardWriter

    samples = 512
    recipe = load_recipe(write_recipe(bench_root / "build_video.yaml", kind="video", frames=5, samples=samples,
                                      shard_size=64))
    out = bench_root / "build"
    writing: list[float] = []
    write = ShardWriter.write

    def timed_write(self, members):
        t0 = time.perf_counter()
        write(self, members)
        writing.append(time.perf_counter() - t0)

    def builder(workers):
        def run():
            writing.clear()
            with mock.patch.object(ShardWriter, "write", timed_write):
                manifest = build(recipe, out / f"w{workers}", workers=workers)
            return [s["sha256"] for s in manifest["shards"]], sum(writing)
        return run

    t = interleave({"1 worker": builder(1), "2 workers": builder(2)}, rounds=ROUNDS)
    hashes = {name: [h for h, _ in results] for name, results in t.results.items()}
    assert hashes["1 worker"] == hashes["2 workers"]  # byte-identical shards whatever the workers
    one, two = samples / t.median("1 worker"), samples / t.median("2 workers")
    speedup = t.ratio("1 worker", "2 workers")
    write_share = statistics.median(w / s for (_, w), s in zip(t.results["2 workers"], t.seconds["2 workers"]))
    table.add("Data", "shard build, video recipe (5 frames of 64 px), 1 worker", f"{one:.0f} samples/s")
    table.add("Data", "shard build, 2 workers", f"{two:.0f} samples/s ({speedup:.2f}x 1 worker; same shard bytes)",
              note=f"the main process spends {write_share:.0%} of the build writing tar members, and the pool "
                   f"waits meanwhile (one blocking pool.map per chunk of 32 samples)")


def loader_samples_per_s(stream, batch_size: int, workers: int, warm: int = 8, timed: int = 40) -> tuple[float, float]:
    """(samples/s of `make_loader` after `warm` batches, median ms to hand over an already prefetched batch)."""
    from train.data import make_loader

    batches = iter(make_loader(stream, workers))
    for _ in range(warm):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(timed):
        next(batches)
    rate = timed * batch_size / (time.perf_counter() - t0)
    handover = []
    refill = max(0.1, 4 * batch_size / rate)  # the time the workers need for a few batches, on any machine
    for _ in range(10):
        time.sleep(refill)  # the workers refill the prefetch queue meanwhile
        t1 = time.perf_counter()
        next(batches)
        handover.append(time.perf_counter() - t1)
    del batches  # stops the workers
    return rate, statistics.median(handover)


def test_loader_against_the_trainer(train_work, table):
    """ShardStream + make_loader (2 workers) samples/s vs the samples/s the trainer's loop consumes."""
    from data_recipes.build import shard_urls
    from train.data import ShardStream
    from train.families import load_model

    _, processor, _ = load_model(train_work.model)
    urls = shard_urls(train_work.root / "shards" / train_work.recipe.stem)
    stream = ShardStream(urls, processor, batch_size=train_work.batch_size, seed=0)
    batch = train_work.first_batch()
    runs = itertools.count()

    def loader():
        rate, handover = loader_samples_per_s(stream, train_work.batch_size, workers=2)
        return train_work.batch_size / rate, handover  # seconds per batch, like the trainer's

    def trainer():
        return trainer_step_seconds(train_work, batch, 30, f"consume-{next(runs)}")

    t = interleave_measured({"loader": loader, "trainer": trainer}, rounds=ROUNDS)
    ratio = t.ratio("trainer", "loader")
    loader_rate = train_work.batch_size / t.median("loader")
    trainer_rate = train_work.batch_size / t.median("trainer")
    read_ms, collate_ms, encode_ms = worker_cost_per_sample(stream)
    table.check("Data", "loader samples/s (2 workers) / trainer samples/s", ratio, fmt="{:.1f}x", at_least=5,
                detail=f"{loader_rate:.0f} vs {trainer_rate:.0f} samples/s",
                note=f"a worker spends {read_ms:.1f} ms per sample reading the tar and {collate_ms:.1f} ms "
                     f"collating it: JPEG decode, then {encode_ms:.1f} ms in train.chat.encode (chat template, "
                     f"tokenizer, image processor, labels); the trainer logs every step")
    handover = statistics.median(t.results["loader"])
    table.add("Data", "hand-over of a prefetched batch to the trainer process",
              f"{handover * 1e3:.1f} ms ({handover / t.median('trainer'):.1%} of a trainer step)",
              note="the trainer's next() when the batch is already prefetched: receiving a worker's "
                   "shared-memory tensors while the workers collate the next batches")


def worker_cost_per_sample(stream, batches: int = 20) -> tuple[float, float, float]:
    """(ms reading, ms collating, of which ms in `train.chat.encode`) per sample, measured in this
    process on one reader's batches, after a first batch that pays the one-off costs (opening the
    first shard, lazy imports, the chat template's compilation)."""
    import train.data as data

    # no shuffle buffer: reading ahead to fill it would be charged to the few samples timed
    stream = data.ShardStream(stream.urls, stream.processor, batch_size=stream.batch_size, seed=0, shuffle_buffer=1)
    reader = stream.batches_of_reader(0, 1)
    stream.collate(next(reader)[1])
    t0 = time.perf_counter()
    raws = [raw for _, raw in itertools.islice(reader, batches)]
    t1 = time.perf_counter()
    encoding: list[float] = []
    encode = data.encode

    def timed_encode(*args, **kwargs):
        t = time.perf_counter()
        out = encode(*args, **kwargs)
        encoding.append(time.perf_counter() - t)
        return out

    with mock.patch.object(data, "encode", timed_encode):
        for raw in raws:
            stream.collate(raw)
    t2 = time.perf_counter()
    n = sum(len(raw) for raw in raws)
    return 1e3 * (t1 - t0) / n, 1e3 * (t2 - t1) / n, 1e3 * sum(encoding) / n


# Peak memory is read from /proc/self/status (VmHWM, the high-water mark of this process image), not
# from getrusage: on Linux ru_maxrss survives exec, so a child forked from this big pytest process
# would report pytest's own resident size.
BUILD_AND_REPORT = textwrap.dedent("""
    import json, re, sys, time
    from pathlib import Path
    from data_recipes.build import build
    from data_recipes.recipe import load_recipe
    t0 = time.perf_counter()
    manifest = build(load_recipe(sys.argv[1]), sys.argv[2], workers=1)
    seconds = time.perf_counter() - t0
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
    print(json.dumps({"samples": manifest["counts"]["samples"], "seconds": seconds, "peak_mb": peak_kb / 1024}))
""")


def test_build_memory_is_flat(bench_root, subprocess_env, table):
    """Peak RSS of a fresh process building 2k and 20k samples: streaming keeps it flat."""
    peaks = {}
    for samples in (2_000, 20_000):
        recipe = write_recipe(bench_root / f"memory_{samples}.yaml", kind="image", samples=samples, shard_size=500)
        p = subprocess.run([sys.executable, "-c", BUILD_AND_REPORT, str(recipe), str(bench_root / f"mem{samples}")],
                           env=subprocess_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=True)
        peaks[samples] = json.loads(p.stdout.strip().splitlines()[-1])
        assert peaks[samples]["samples"] == samples
    small, big = peaks[2_000], peaks[20_000]
    table.check("Data", "peak RSS of a build: 20k / 2k samples (image recipe, 1 worker)",
                big["peak_mb"] / small["peak_mb"], fmt="{:.2f}", at_most=1.2,
                detail=f"{big['peak_mb']:.0f} vs {small['peak_mb']:.0f} MB; "
                       f"{big['samples'] / big['seconds']:.0f} samples/s")
