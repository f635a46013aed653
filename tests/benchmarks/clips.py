"""Synthetic H.264 clips for the video benchmarks: a gradient that scrolls and a white square that moves,
encoded as streaming video usually is (libx264, ultrafast, B-frames, a keyframe every `gop` frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_moving_clip(path: Path, *, width: int, height: int, seconds: int, fps: int, gop: int,
                      stripe: int = 40, shift: int = 7, square: int = 80) -> Path:
    """Write the clip: `stripe`-px blue stripes on the gradient, scrolled `shift` px a frame, and a
    `square`-px square moving diagonally."""
    import av

    x = np.arange(2 * width)
    base = np.zeros((height, 2 * width, 3), np.uint8)
    base[..., 0] = (x * 255 // (2 * width))[None, :]
    base[..., 1] = (np.arange(height) * 255 // height)[:, None]
    base[..., 2] = ((x // stripe) % 2 * 120)[None, :]
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23", "g": str(gop),
                                                       "bf": "2", "sc_threshold": "0"})
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            off = (i * shift) % width
            arr = np.ascontiguousarray(base[:, off:off + width])
            top, left = (i * 5) % (height - square), (i * 11) % (width - square)
            arr[top:top + square, left:left + square] = 255
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path
