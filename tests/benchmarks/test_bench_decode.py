"""Data: sampling 8 frames of a long clip by seeking vs decoding from the start (`read_frames(seek=...)`)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clips import write_moving_clip
from timing import interleave_measured

pytestmark = pytest.mark.bench

ROUNDS = 3
SECONDS, FPS, WIDTH, HEIGHT = 60, 30, 1280, 720
GOP = 2 * FPS  # a keyframe every 2 s, as in most streaming encodes (x264's own default is 250 frames)
FRAMES = 8


@pytest.fixture(scope="module")
def long_clip(bench_root):
    """60 s of 720p at 30 fps: a gradient that scrolls and a square that moves (libx264, ultrafast, B-frames)."""
    path = bench_root / "decode_60s_720p.mp4"
    if path.exists():
        return path
    t0 = time.perf_counter()
    write_moving_clip(path, width=WIDTH, height=HEIGHT, seconds=SECONDS, fps=FPS, gop=GOP)
    print(f"\n[decode bench] wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return path


def test_seek_vs_from_start(long_clip, table):
    from data_recipes import video

    n = video.count_frames(long_clip)
    assert n == SECONDS * FPS
    indices = video.uniform_indices(n, FRAMES)

    def reader(seek: bool):
        def run():
            before = video.seek_stats().get("fallback", 0)
            t0 = time.perf_counter()
            frames = video.read_frames(long_clip, indices=indices, seek=seek)
            seconds = time.perf_counter() - t0
            assert video.seek_stats().get("fallback", 0) == before  # really served by seeking
            return seconds, [np.asarray(f) for f in frames]
        return run

    t = interleave_measured({"seek": reader(True), "from start": reader(False)}, rounds=ROUNDS)
    for a, b in zip(t.results["seek"][-1], t.results["from start"][-1]):
        assert np.array_equal(a, b)  # the same pixels either way
    ratio = t.ratio("from start", "seek")
    table.check("Data", f"read_frames, {FRAMES} uniform frames of a {SECONDS} s 720p clip: seek vs from start",
                ratio, fmt="{:.1f}x", at_least=5,
                detail=f"{t.median('seek') * 1e3:.0f} vs {t.median('from start') * 1e3:.0f} ms",
                note=f"libx264 {FPS} fps, keyframe every {GOP} frames, 2 B-frames; from the start decodes "
                     f"{indices[-1] + 1} frames, seeking about one GOP per frame; the gain shrinks with "
                     f"longer GOPs (x264's default keyint is 250)")
