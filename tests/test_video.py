"""Tests for data_recipes.video: frame sampling, PyAV round trips and error reporting."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data_recipes import video
from data_recipes.video import VideoError, count_frames, read_frames, uniform_indices, write_video
from helpers import count_decoded

N_FRAMES = 12
W, H = 48, 32
# Frame i is a flat grey of level LEVELS[i]; 20 grey levels apart survives codec loss.
LEVELS = [10 + 20 * i for i in range(N_FRAMES)]
CODECS = ["libx264", "mpeg4"]


def grey_frames(n=N_FRAMES, w=W, h=H):
    return [Image.new("RGB", (w, h), (LEVELS[i],) * 3) for i in range(n)]


def frame_id(img: Image.Image) -> int:
    """Index of the frame whose grey level is closest to the image's mean colour."""
    mean = np.asarray(img, dtype=float).mean()
    return int(np.argmin([abs(mean - level) for level in LEVELS]))


@pytest.fixture(scope="module", params=CODECS)
def clip(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "grey.mp4"
    write_video(path, grey_frames(), fps=8, codec=request.param)
    return path


# -------------------------------------------------------------------- uniform_indices


@pytest.mark.parametrize(
    "n, f, expected",
    [
        (32, 5, [5, 10, 16, 21, 26]),
        (10, 1, [5]),
        (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
        (1, 3, [0, 0, 0]),
        (100, 4, [20, 40, 60, 80]),
    ],
)
def test_uniform_indices_hand_cases(n, f, expected):
    assert uniform_indices(n, f) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 64))
def test_uniform_indices_matches_reference_formula(n, f):
    got = uniform_indices(n, f)
    assert got == [int(i * n / (f + 1)) for i in range(1, f + 1)]
    assert all(0 <= i < n for i in got) and got == sorted(got)


@pytest.mark.parametrize("n, f", [(0, 4), (5, 0), (-1, 2), (3.0, 2), (True, 2)])
def test_uniform_indices_rejects_bad_arguments(n, f):
    with pytest.raises(ValueError):
        uniform_indices(n, f)


# --------------------------------------------------------------------- round trips


def test_count_frames(clip):
    assert count_frames(clip) == N_FRAMES
    assert count_frames(clip, exact=True) == N_FRAMES


def test_read_selected_indices_identifies_frames(clip):
    wanted = [0, 3, 7, 11, 5, 5]  # any order, repeats allowed
    frames = read_frames(clip, indices=wanted)
    assert [frame_id(f) for f in frames] == wanted
    assert all(f.mode == "RGB" and f.size == (W, H) for f in frames)


def test_read_all_frames_in_order(clip):
    frames = read_frames(clip)
    assert [frame_id(f) for f in frames] == list(range(N_FRAMES))


def test_read_uniform_num_frames(clip):
    frames = read_frames(clip, num_frames=5)
    assert [frame_id(f) for f in frames] == uniform_indices(N_FRAMES, 5) == [2, 4, 6, 8, 10]


def test_read_with_resize(clip):
    frames = read_frames(clip, indices=[1, 9], size=24)
    assert [f.size for f in frames] == [(24, 24), (24, 24)]
    assert [frame_id(f) for f in frames] == [1, 9]


def test_read_stops_after_last_needed_frame(clip, monkeypatch):
    decoded = count_decoded(monkeypatch)
    frames = read_frames(clip, indices=[4, 1])
    assert [frame_id(f) for f in frames] == [4, 1]
    assert len(decoded) == 5  # frames 0..4, not all 12


def test_colour_frames_survive_round_trip(tmp_path):
    # Hue-coded frames: checks the RGB <-> YUV conversion keeps channels in place.
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30)]
    path = write_video(tmp_path / "rgb.mp4", [Image.new("RGB", (32, 32), c) for c in colours])
    for got, want in zip(read_frames(path), colours):
        assert np.abs(np.asarray(got, dtype=float).mean(axis=(0, 1)) - want).max() < 12


@pytest.mark.parametrize("codec", CODECS)
def test_odd_dimensions_are_padded_with_a_warning(tmp_path, codec):
    frames = grey_frames(n=3, w=33, h=21)
    with pytest.warns(UserWarning, match="padding to 34x22"):
        path = write_video(tmp_path / "odd.mp4", frames, codec=codec)
    out = read_frames(path)
    assert [f.size for f in out] == [(34, 22)] * 3
    assert [frame_id(f) for f in out] == [0, 1, 2]


def test_write_accepts_numpy_frames_and_fractional_fps(tmp_path):
    arrays = [np.full((H, W, 3), LEVELS[i], np.uint8) for i in range(4)]
    path = write_video(tmp_path / "np.mp4", arrays, fps=Fraction(30000, 1001))
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
    assert [frame_id(f) for f in read_frames(path)] == [0, 1, 2, 3]
    with av.open(str(write_video(tmp_path / "f.mp4", arrays, fps=12.5))) as c:
        assert c.streams.video[0].average_rate == Fraction(25, 2)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    dest = tmp_path / "clip.mp4"
    write_video(dest, grey_frames(n=4))
    before = dest.read_bytes()

    calls = {"n": 0}
    real_from_ndarray = av.VideoFrame.from_ndarray

    def failing_from_ndarray(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash while encoding")
        return real_from_ndarray(*args, **kwargs)

    monkeypatch.setattr(video.av.VideoFrame, "from_ndarray", failing_from_ndarray)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_video(dest, grey_frames(n=6))
    assert dest.read_bytes() == before  # the old clip is untouched
    assert os.listdir(tmp_path) == ["clip.mp4"]  # and the temp file is gone

    monkeypatch.undo()
    write_video(dest, grey_frames(n=6))  # overwriting works
    assert count_frames(dest) == 6
    assert os.listdir(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize(
    "frames, kwargs, match",
    [
        ([], {}, "no frames"),
        (grey_frames(n=2), {"codec": "vp9"}, "codec must be one of"),
        (grey_frames(n=2), {"fps": 0}, "fps must be positive"),
        ([Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))], {}, "frame 1 is 16x16"),
    ],
)
def test_write_rejects_bad_arguments(tmp_path, frames, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "bad.mp4", frames, **kwargs)
    assert not (tmp_path / "bad.mp4").exists()


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        write_video(tmp_path / "nope" / "x.mp4", grey_frames(n=2))


# ------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "missing_clip.mp4"
    for fn in (count_frames, read_frames):
        with pytest.raises(VideoError, match="missing_clip.mp4: no such file"):
            fn(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty_clip.mp4"
    path.touch()
    for fn in (count_frames, read_frames):
        with pytest.raises(VideoError, match=r"empty_clip.mp4: file is empty \(0 bytes\)"):
            fn(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage_clip.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for fn in (count_frames, read_frames):
        with pytest.raises(VideoError, match="garbage_clip.mp4: cannot open as video"):
            fn(path)


def test_truncated_file(tmp_path, clip):
    path = tmp_path / "truncated_clip.mp4"
    path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(VideoError, match="truncated_clip.mp4"):
        read_frames(path, indices=[0])


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="not a regular file"):
        read_frames(tmp_path)


def test_index_out_of_range_says_how_many_frames(clip):
    with pytest.raises(VideoError, match=rf"{clip.name}: frame index 12 is out of range; the file has 12 frames"):
        read_frames(clip, indices=[3, 12])


def test_negative_index(clip):
    with pytest.raises(VideoError, match=rf"{clip.name}: frame index -1 is negative"):
        read_frames(clip, indices=[-1])


def test_video_error_is_a_value_error():
    assert issubclass(VideoError, ValueError)


def test_read_rejects_conflicting_arguments(clip):
    with pytest.raises(ValueError, match="either indices or num_frames"):
        read_frames(clip, indices=[0], num_frames=2)
    with pytest.raises(ValueError, match="size must be a positive int"):
        read_frames(clip, indices=[0], size=0)
