"""read_frames with seeking returns the same frames as decoding from the start.

Every clip here draws its own frame index in each frame (8 black/white blocks, one bit each, above a
pattern that moves so the encoder has motion to predict), so a frame's identity is checked twice:
pixel-identical to the from-start read, and carrying the expected number.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest

from data_recipes import video
from data_recipes.video import read_frames, seek_stats, uniform_indices
from helpers import count_decoded

W, H = 64, 48
N = 150
BITS = 8
BLOCK = W // BITS


def numbered(i: int) -> np.ndarray:
    """Frame i: index bits as blocks in the top 8 rows, a diagonal pattern moving with i below."""
    arr = np.empty((H, W, 3), np.uint8)
    for b in range(BITS):
        arr[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255 if (i >> b) & 1 else 0
    y, x = np.mgrid[BLOCK:H, 0:W]
    arr[BLOCK:, :, 0] = (x * 4 + i * 3) % 256
    arr[BLOCK:, :, 1] = (y * 5 + i * 2) % 256
    arr[BLOCK:, :, 2] = ((x + y) * 3 + i * 5) % 256
    return arr


def frame_number(img) -> int:
    a = np.asarray(img, dtype=float)
    return sum(1 << b for b in range(BITS) if a[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() > 127)


def encode(path, codec, options, pts=None, time_base=None, fmt="mp4", rate=30):
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate, options=options)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if time_base is not None:
            s.codec_context.time_base = time_base
            s.time_base = time_base
        for i in range(N):
            f = av.VideoFrame.from_ndarray(numbered(i), format="rgb24")
            f.pts = i if pts is None else pts[i]
            if time_base is not None:
                f.time_base = time_base
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return path


X264_BFRAMES = {"preset": "fast", "crf": "18", "bf": "2", "g": "12", "keyint_min": "12", "sc_threshold": "0"}
# irregular frame durations (ms): a variable-frame-rate clip
VFR_PTS = np.cumsum([0] + [[33, 17, 50, 8, 100, 33, 41][i % 7] for i in range(N - 1)]).tolist()

CLIPS = {
    "x264_bframes": dict(codec="libx264", options=X264_BFRAMES),
    "x264_open_gop": dict(codec="libx264", options={
        "preset": "fast", "crf": "18",
        "x264-params": "open-gop=1:keyint=12:min-keyint=12:bframes=3:b-pyramid=normal:scenecut=0"}),
    "x264_vfr": dict(codec="libx264", options=X264_BFRAMES, pts=VFR_PTS, time_base=Fraction(1, 1000)),
    "mpeg4_bframes": dict(codec="mpeg4", options={"qmin": "3", "qmax": "3", "bf": "2", "g": "12"}),
    "mpeg4_write_video": None,  # the project's own writer (mpeg4 at its defaults)
}


@pytest.fixture(scope="module", params=list(CLIPS))
def clip(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    spec = CLIPS[request.param]
    if spec is None:
        return video.write_video(d / "clip.mp4", [numbered(i) for i in range(N)], fps=30, codec="mpeg4")
    return encode(d / "clip.mp4", **spec)


@pytest.fixture(scope="module")
def from_start(clip):
    """Every frame, decoded from the start: the ground truth."""
    frames = read_frames(clip, seek=False)
    assert len(frames) == N
    assert [frame_number(f) for f in frames] == list(range(N))
    return [np.asarray(f) for f in frames]


def test_clips_have_what_they_claim(clip):
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        packets = [(p.pts, p.dts, p.is_keyframe) for p in c.demux(s) if p.size]
    keys = sum(k for _, _, k in packets)
    assert len(packets) == N and keys >= N // 20  # several GOPs to seek between
    if "bframes" in clip.parent.name or "gop" in clip.parent.name:
        pts = [p for p, _, _ in packets]  # in decode order
        assert any(b < a for a, b in zip(pts, pts[1:]))  # reordered: B-frames
    if "vfr" in clip.parent.name:
        durations = {b - a for a, b in zip(sorted(p for p, _, _ in packets), sorted(p for p, _, _ in packets)[1:])}
        assert len(durations) > 3


INDEX_SETS = {
    "first": [0],
    "last": [N - 1],
    "uniform8": uniform_indices(N, 8),
    "repeated": [70, 5, 70, 70, 5],
    "unsorted": [140, 3, 97, 12, 61],
    "around_keyframes": [11, 12, 13, 23, 24, 35, 36, 47, 48, 59, 60, 119, 120, 121],
    "every_7th": list(range(0, N, 7)),
}


@pytest.mark.parametrize("min_skip", [0, video.MIN_SEEK_SKIP], ids=["seek_always", "default"])
@pytest.mark.parametrize("name", list(INDEX_SETS))
def test_seek_matches_decoding_from_start(clip, from_start, name, min_skip, monkeypatch):
    monkeypatch.setattr(video, "MIN_SEEK_SKIP", min_skip)
    wanted = INDEX_SETS[name]
    before = seek_stats()
    got = read_frames(clip, indices=wanted)
    after = seek_stats()
    assert after.get("seek", 0) == before.get("seek", 0) + 1  # served by seeking, no fallback
    assert after.get("fallback", 0) == before.get("fallback", 0)
    assert [frame_number(f) for f in got] == wanted
    for i, f in zip(wanted, got):
        assert np.array_equal(np.asarray(f), from_start[i]), f"frame {i} differs from the from-start decode"


def test_num_frames_and_resize_match(clip):
    a = read_frames(clip, num_frames=8, size=32)
    b = read_frames(clip, num_frames=8, size=32, seek=False)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]


def test_seeking_decodes_a_few_gops_not_the_clip(tmp_path, monkeypatch):
    path = encode(tmp_path / "long.mp4", "libx264", X264_BFRAMES)
    decoded = count_decoded(monkeypatch)
    frames = read_frames(path, indices=[140, 100])
    assert [frame_number(f) for f in frames] == [140, 100]
    # the first frame (checked against the index) + at most a GOP (12) and a few frames of reordering
    # delay per target, instead of 141 frames from the start
    assert len(decoded) < 2 * (12 + 8) + 4, len(decoded)
    decoded.clear()
    read_frames(path, indices=[140, 100], seek=False)
    assert len(decoded) == 141


def test_stream_without_timestamps_falls_back(tmp_path, caplog):
    """A raw H.264 stream has no packet pts to index: decoded from the start, counted and logged."""
    path = encode(tmp_path / "raw.h264", "libx264", X264_BFRAMES, fmt="h264")
    before = seek_stats()
    with caplog.at_level(logging.DEBUG, logger="data_recipes.video"):
        got = read_frames(path, indices=[100, 7, 100])
    assert [frame_number(f) for f in got] == [100, 7, 100]
    after = seek_stats()
    assert after["fallback"] == before.get("fallback", 0) + 1
    assert after["fallback:no_index"] == before.get("fallback:no_index", 0) + 1
    assert any("cannot seek to frames (no_index" in r.getMessage() and "raw.h264" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("damage", ["drop_one", "shift", "false_keyframe"])
def test_wrong_index_is_caught_not_trusted(tmp_path, monkeypatch, damage):
    """An index that disagrees with the decoder is detected: the frames still come from the start."""
    path = encode(tmp_path / "c.mp4", "libx264", X264_BFRAMES)
    real = video._frame_pts_index

    def damaged(container, stream):
        pts, keys, discarded = real(container, stream)
        if damage == "drop_one":  # a frame is missing from the index (it disagrees with the sample table)
            del pts[50]
            keys = [k - (k > 50) for k in keys]
        elif damage == "shift":  # every pts off by one tick
            pts = [t + 1 for t in pts]
        else:  # a non-keyframe claimed as keyframe: the seek lands on the real one before it
            keys = sorted(set(keys) | {90})
        return pts, keys, discarded

    monkeypatch.setattr(video, "_frame_pts_index", damaged)
    monkeypatch.setattr(video, "MIN_SEEK_SKIP", 0)
    before = seek_stats()
    wanted = [30, 95, 130]
    got = read_frames(path, indices=wanted)
    assert [frame_number(f) for f in got] == wanted
    after = seek_stats()
    if damage == "false_keyframe":
        assert after.get("fallback", 0) == before.get("fallback", 0)  # harmless: only a longer decode
    else:
        assert after["fallback:inconsistent"] == before.get("fallback:inconsistent", 0) + 1


def test_out_of_range_still_names_the_frame_count(tmp_path):
    path = encode(tmp_path / "c.mp4", "libx264", X264_BFRAMES)
    with pytest.raises(video.VideoError, match=rf"frame index {N} is out of range; the file has {N} frames"):
        read_frames(path, indices=[3, N])
