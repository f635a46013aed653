"""Reading and writing short video clips with PyAV.

Both the data recipes (which build training shards) and the evaluation suite (which
samples frames for vCoT/EgoSchema-style questions) go through this module, so it must
stay independent of `train` and `evalsuite`.

Design choices:

* Frame selection uses the EgoSchema/vCoT rule :func:`uniform_indices`, so training
  and evaluation see the same frames for the same clip.
* :func:`read_frames` seeks: for each wanted frame it jumps to the keyframe at or before
  it and decodes forward, so 8 frames of a long clip cost a few GOPs rather than the
  whole clip.  Frames are identified by presentation timestamp: the clip's packets are
  demuxed once (no decoding) and their pts, sorted, give index -> pts, the same order
  decoding from the start yields.  Every decoded run is checked against that index
  (see :func:`_read_by_seeking`); when there is no usable index or a check fails, the
  clip is decoded from the start instead (counted in :func:`seek_stats` and logged),
  so a frame is never returned for the wrong index.
* Every failure on the reading side raises :class:`VideoError` (a ``ValueError``)
  whose message starts with the file path, so a bad clip in a large dataset can be
  found and skipped from the log line alone.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Sequence, Union

import av
import numpy as np
from PIL import Image

from data_recipes.files import atomic_path

__all__ = [
    "VideoError",
    "uniform_indices",
    "count_frames",
    "read_frames",
    "seek_stats",
    "write_video",
    "CODECS",
]

PathLike = Union[str, os.PathLike]

#: Encoders supported by :func:`write_video`.
CODECS = ("libx264", "mpeg4")
# Encoder options.  libx264 at CRF 18 is visually lossless for training frames.
# mpeg4 (no GPL dependency, in every FFmpeg build) would otherwise aim at a low
# default bitrate that smears frames larger than thumbnails; pinning the quantiser to 3
# (qmin = qmax) gives constant high quality, like ``ffmpeg -q:v 3``.  PyAV cannot set
# the per-frame quality that ``-q:v`` relies on, hence qmin/qmax.
_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "preset": "medium"},
    "mpeg4": {"qmin": "3", "qmax": "3"},
}

# Container families whose per-stream frame count comes from the sample table, i.e.
# counts real encoded frames rather than an estimate from duration * rate.
_SAMPLE_TABLE_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2")


class VideoError(ValueError):
    """A video file is missing, empty, undecodable, or lacks the requested frames."""


# ------------------------------------------------------------------- frame sampling


def uniform_indices(n: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread evenly over a clip of ``n`` frames.

    This is the EgoSchema/vCoT rule ``int(i * n / (F + 1))`` for ``i = 1..F``: the clip
    is cut into ``F + 1`` equal parts and the frames at the inner cut points are taken,
    so the very first and last frames (often black or transitional) are avoided.
    Integer floor division gives the same values as the float formula without any
    rounding risk.  With ``F >= n`` some indices repeat, as in the reference code.

    >>> uniform_indices(32, 5)
    [5, 10, 16, 21, 26]
    """
    for name, value in (("n", n), ("num_frames", num_frames)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"n (frames in the clip) must be >= 1, got {n}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return [int(i * n // (num_frames + 1)) for i in range(1, num_frames + 1)]


# -------------------------------------------------------------------------- reading


def _open_input(path: PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` for decoding, turning every failure into a VideoError naming the file."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: no such file")
    if not p.is_file():
        raise VideoError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: file is empty (0 bytes)")
    try:
        container = av.open(str(p), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{p}: cannot open as video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: contains no video stream")
    return container, container.streams.video[0]


def _decode_count(path: Path, container, stream) -> int:
    try:
        return sum(1 for _ in container.decode(stream))
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: undecodable video data ({exc})") from exc


def count_frames(path: PathLike, exact: bool = False) -> int:
    """Number of decodable frames in the first video stream of ``path``.

    For MP4/MOV files the count stored in the sample table is exact for files we
    write (both libx264 and mpeg4) and costs no decoding, so it is used directly.
    Other containers (WebM/MKV, raw streams) often store no count or only an estimate,
    so their frames are counted by decoding.  ``exact=True`` always decodes, e.g. for
    downloaded MP4s whose edit lists hide some samples.

    Raises:
        VideoError: missing, empty or undecodable file, or a file with no frames.
    """
    p = Path(path)
    container, stream = _open_input(p)
    with container:
        fmt_names = set((container.format.name or "").split(","))
        trusted = stream.frames > 0 and bool(fmt_names & set(_SAMPLE_TABLE_FORMATS))
        n = stream.frames if (trusted and not exact) else _decode_count(p, container, stream)
    if n < 1:
        raise VideoError(f"{p}: video stream has no decodable frames")
    return int(n)


def frame_rate(path: PathLike) -> float | None:
    """Frames per second of the first video stream (None when the container does not say)."""
    p = Path(path)
    container, stream = _open_input(p)
    with container:
        rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def sampled_fps(num_frames: int, total_frames: int, fps: float | None) -> float | None:
    """Frames per second of `num_frames` frames sampled across a whole clip of `total_frames` at `fps`:
    what Qwen2.5-VL needs to space its temporal positions by real time."""
    return num_frames * fps / total_frames if fps and total_frames else None


def read_frames(
    path: PathLike,
    indices: Sequence[int] | None = None,
    num_frames: int | None = None,
    size: int | None = None,
    seek: bool = True,
) -> list[Image.Image]:
    """Decode ``path`` and return RGB frames as PIL images.

    Exactly one way of choosing frames may be given:

    * ``indices``: explicit 0-based frame indices (frame ``i`` is the ``i``-th frame in
      presentation order); the result follows their order and repeats frames if an
      index repeats.
    * ``num_frames``: ``uniform_indices(count_frames(path), num_frames)``.
    * neither: every frame of the clip.

    With ``seek`` (the default) chosen frames are reached by seeking to the keyframe
    before each of them and decoding forward (see :func:`_read_by_seeking`); otherwise,
    and whenever seeking cannot be trusted for the file, the clip is decoded once from
    the start, stopping after the highest index needed.  Both give the same frames.
    ``size`` resizes every frame to ``size x size`` (bicubic, aspect ratio not kept -
    the square input most vision encoders expect).

    Raises:
        VideoError: missing, empty or undecodable file, or an index outside the clip
            (the message gives the number of frames in the file).
        ValueError: both ``indices`` and ``num_frames`` given, or a bad ``size``.
    """
    p = Path(path)
    if indices is not None and num_frames is not None:
        raise ValueError("pass either indices or num_frames, not both")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int, got {size!r}")

    if num_frames is not None:
        indices = uniform_indices(count_frames(p), num_frames)
    if indices is None:
        decoded, n_seen = _read_from_start(p, None, size)
        if not decoded:
            raise VideoError(f"{p}: video stream has no decodable frames")
        return [decoded[i] for i in range(n_seen)]

    wanted = [int(i) for i in indices]
    if not wanted:
        return []
    negative = [i for i in wanted if i < 0]
    if negative:
        raise VideoError(f"{p}: frame index {negative[0]} is negative; indices are 0-based frame numbers")
    decoded = _read_by_seeking(p, sorted(set(wanted)), size) if seek else None
    if decoded is None:
        decoded, n_seen = _read_from_start(p, set(wanted), size)
        last = max(wanted)
        if last >= n_seen:
            # The decoder reached the end of the stream without reaching `last`.
            raise VideoError(
                f"{p}: frame index {last} is out of range; the file has {n_seen} frames "
                f"(valid indices 0..{n_seen - 1})"
            )
    return [decoded[i] for i in wanted]


def _to_pil(frame: av.VideoFrame, size: int | None) -> Image.Image:
    img = frame.to_image()  # converts from the codec's YUV to RGB
    return img.resize((size, size), Image.BICUBIC) if size is not None else img


def _read_from_start(p: Path, needed: set[int] | None, size: int | None) -> tuple[dict[int, Image.Image], int]:
    """Decode from the first frame, keeping the frames in ``needed`` (all if None) and stopping
    after the highest one.  Returns the kept frames by index and the number of frames decoded."""
    last = max(needed) if needed is not None else math.inf
    decoded: dict[int, Image.Image] = {}
    container, stream = _open_input(p)
    # Frame threading speeds up sequential decoding and keeps output order.
    stream.thread_type = "AUTO"
    n_seen = 0
    with container:
        try:
            for i, frame in enumerate(container.decode(stream)):
                n_seen = i + 1
                if needed is None or i in needed:
                    decoded[i] = _to_pil(frame, size)
                if i >= last:
                    break  # everything needed is decoded; skip the rest of the file
        except av.FFmpegError as exc:
            raise VideoError(f"{p}: undecodable video data after {n_seen} frames ({exc})") from exc
    return decoded, n_seen


# ------------------------------------------------------------------ seeking to frames

log = logging.getLogger(__name__)

#: Seek only when it skips at least this many frames: a seek flushes the decoder (and refills its
#: frame-threading pipeline) and re-reads from the keyframe, which costs about as much as decoding a
#: few small frames, so short gaps are decoded through.
MIN_SEEK_SKIP = 8

#: How :func:`read_frames` calls with ``seek=True`` were served in this process: "seek" (by
#: seeking), "fallback" (decoded from the start instead) and "fallback:REASON" per reason
#: (no_index, inconsistent, decode_error, out_of_range).  See :func:`seek_stats`.
_SEEK_STATS: Counter = Counter()


def seek_stats() -> dict[str, int]:
    """A copy of the per-process counts of seeking reads and of fallbacks to decoding from the start."""
    return dict(_SEEK_STATS)


class _NoSeek(Exception):
    """Seeking cannot be trusted for this file (or this request): decode from the start."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _frame_pts_index(container, stream) -> tuple[list[int], list[int], int]:
    """(pts of every frame in presentation order, indices of the keyframes among them, packets discarded).

    Built by demuxing the stream's packets without decoding them: one frame per packet, a
    frame's place in presentation order is its packet's place among the packets sorted by pts.
    Packets the demuxer marks as discard (e.g. samples an MP4 edit list hides) produce no
    output frame and are left out.
    """
    entries, discarded = [], 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the empty packet demux yields at the end of the stream
        if packet.is_discard:
            discarded += 1
            continue
        if packet.pts is None:
            raise _NoSeek("no_index", "a packet has no presentation timestamp")
        entries.append((packet.pts, packet.is_keyframe))
    if not entries:
        raise _NoSeek("no_index", "no packets")
    entries.sort()
    pts = [t for t, _ in entries]
    if any(a == b for a, b in zip(pts, pts[1:])):
        raise _NoSeek("no_index", "two packets share a presentation timestamp")
    return pts, [i for i, (_, key) in enumerate(entries) if key], discarded


def _read_by_seeking(p: Path, targets: list[int], size: int | None) -> dict[int, Image.Image] | None:
    """Frames ``targets`` (sorted, distinct) by seeking, or None when the file must be decoded from
    the start instead (the reason is counted in :func:`seek_stats` and logged).

    Index -> pts comes from :func:`_frame_pts_index`.  For each target the decoder jumps to the last
    keyframe at or before it (``container.seek`` to the keyframe's pts, backward, keyframes only)
    unless that skips fewer than :data:`MIN_SEEK_SKIP` frames from the current position (then it
    decodes on), and decodes forward until the frame whose pts is the target's.  What is checked, so that a frame is never
    returned for the wrong index:

    * the index has as many frames as the container counts, when it counts them (MP4's sample table);
    * from the start of the stream, the decoder's first frame has the first pts of the index (no
      frame dropped or added before it);
    * after a seek, frames are counted only from the first keyframe the decoder outputs (earlier
      output is an open GOP's leading pictures, which reference frames before the seek point), and
      that keyframe must be at or before the target;
    * from there every frame's pts must be the index's next one, up to the target (no frame
      dropped, added or reordered in the run).

    The one assumption not checked is that between these runs, too, decoding from the start gives
    one frame per packet - what the MP4/MKV demuxers and the H.264/MPEG-4 decoders do.
    """
    try:
        container, stream = _open_input(p)
        with container:
            pts, keys, discarded = _frame_pts_index(container, stream)
            counted = stream.frames  # the container's own count (MP4: its sample table), 0 if it has none
        if counted > 0 and counted != len(pts) + discarded:
            raise _NoSeek("inconsistent", f"{len(pts) + discarded} packets demuxed, the container counts {counted}")
        if targets[-1] >= len(pts):
            raise _NoSeek("out_of_range", f"frame {targets[-1]} requested, the index has {len(pts)} frames")
        position = {t: i for i, t in enumerate(pts)}
        wanted = set(targets)
        decoded: dict[int, Image.Image] = {}
        container, stream = _open_input(p)
        stream.thread_type = "AUTO"
        with container:
            frames = container.decode(stream)
            first = next(frames, None)
            if first is None or first.pts != pts[0]:
                raise _NoSeek("inconsistent", f"the first decoded frame has pts {getattr(first, 'pts', None)}, "
                                              f"the index starts at {pts[0]}")
            if 0 in wanted:
                decoded[0] = _to_pil(first, size)
            cur: int | None = 0  # index of the last frame decoded in this run; None: not anchored yet
            for t in targets:
                k = bisect.bisect_right(keys, t) - 1
                key = keys[k] if k >= 0 else 0  # no keyframe before t: only decoding from the start reaches it
                if cur is not None and key - (cur + 1) >= MIN_SEEK_SKIP:
                    container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                    cur = None
                while cur is None or cur < t:
                    frame = next(frames, None)
                    if frame is None:
                        raise _NoSeek("inconsistent", f"the stream ended before frame {t}")
                    j = position.get(frame.pts)
                    if cur is None:  # just after a seek
                        if j is None:
                            raise _NoSeek("inconsistent", f"decoded pts {frame.pts} is not in the index")
                        if j > t:
                            raise _NoSeek("inconsistent", f"seeking for frame {t} landed after it (frame {j})")
                        if not frame.key_frame:
                            continue  # leading pictures before the keyframe the seek landed on
                        cur = j
                    elif j != cur + 1:
                        raise _NoSeek("inconsistent", f"decoded pts {frame.pts} where the index has frame "
                                                      f"{cur + 1} (pts {pts[cur + 1]})")
                    else:
                        cur = j
                    if cur in wanted:
                        decoded[cur] = _to_pil(frame, size)
    except _NoSeek as why:
        _SEEK_STATS["fallback"] += 1
        _SEEK_STATS[f"fallback:{why.reason}"] += 1
        if why.reason != "out_of_range":  # the from-start read raises the precise error
            _log_fallback(p, why.reason, why.detail)
        return None
    except av.FFmpegError as exc:
        _SEEK_STATS["fallback"] += 1
        _SEEK_STATS["fallback:decode_error"] += 1
        _log_fallback(p, "decode_error", str(exc))
        return None
    _SEEK_STATS["seek"] += 1
    return decoded


def _log_fallback(p: Path, reason: str, detail: str) -> None:
    # The first fallback of each kind in a process is a warning, later ones debug lines: a dataset
    # of raw streams without timestamps would otherwise log one warning per clip.
    first = _SEEK_STATS[f"fallback:{reason}"] == 1
    log.log(logging.WARNING if first else logging.DEBUG,
            "%s: cannot seek to frames (%s: %s); decoding from the start%s", p, reason, detail,
            " (later fallbacks of this kind are logged at debug level; counts in data_recipes.video.seek_stats())"
            if first else "")


# -------------------------------------------------------------------------- writing


def _to_rgb_array(frame, index: int) -> np.ndarray:
    """PIL image (any mode) or HxWx3 uint8 array -> contiguous RGB uint8 array."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected a PIL image or an HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_rate(fps) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    # The stream time base needs a rational rate: a float such as 29.97 becomes 2997/100
    # (pass Fraction(30000, 1001) for exact NTSC timing).
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def write_video(
    path: PathLike,
    frames: Sequence[Image.Image],
    fps: int | float | Fraction = 8,
    codec: str = "libx264",
) -> Path:
    """Encode ``frames`` into an MP4 file at ``path`` (yuv420p), atomically.

    The clip is written through ``data_recipes.files.atomic_path`` (a hidden temporary
    file in the destination directory, renamed into place once complete), so readers
    (and interrupted jobs) never see a half-written video at ``path``.

    All frames must have the same size.  yuv420p stores chroma at half resolution, so
    libx264 refuses odd widths/heights; odd dimensions are therefore padded by one
    pixel on the right/bottom (replicating the edge, which keeps colours clean) for
    both codecs, with a warning.  Read-back frames then have the padded size.

    Args:
        path: Destination file; its directory must exist.
        frames: PIL images (converted to RGB) or HxWx3 uint8 arrays.
        fps: Frame rate (int, float or Fraction).
        codec: ``"libx264"`` (default) or ``"mpeg4"``.

    Returns:
        The destination path.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    rate = _as_rate(fps)
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames to write")
    dest = Path(path)
    if not dest.parent.is_dir():
        raise VideoError(f"{dest}: parent directory {dest.parent} does not exist")

    arrays = [_to_rgb_array(f, i) for i, f in enumerate(frames)]
    height, width = arrays[0].shape[:2]
    for i, arr in enumerate(arrays):
        if arr.shape[:2] != (height, width):
            raise ValueError(f"frame {i} is {arr.shape[1]}x{arr.shape[0]}, but frame 0 is {width}x{height}")
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        warnings.warn(
            f"{dest}: frames are {width}x{height}; yuv420p needs even dimensions, "
            f"padding to {width + pad_w}x{height + pad_h} by repeating the last column/row",
            stacklevel=2,
        )
        arrays = [np.pad(a, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") for a in arrays]

    with atomic_path(dest) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options=dict(_ENCODER_OPTIONS[codec]))
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = "yuv420p"
        for i, arr in enumerate(arrays):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i  # time base is 1/rate: one tick per frame
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed (B-)frames
    return dest
