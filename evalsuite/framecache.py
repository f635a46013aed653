"""Decoded video frames on disk, shared by tasks, conditions, checkpoints and ranks.

Decoding frames out of a long video costs far more than reading a small image back, and every task
(vcot, shuffle), every condition and every checkpoint asks for the same frames of the same videos. A
`FrameCache` keeps each decoded frame, after the resize rule, under the evaluation's cache directory
(`<cache_dir>/frames`, beside the infill cache), so the second task or checkpoint decodes nothing:

    <root>/<video key>/<max_pixels or "full">/<frame index>.png    one frame, lossless (PNG)
    <root>/<video key>/meta.json                                   frame count and rate of the video

The video key is a hash of the video file's resolved path, size and modification time: a video that is
replaced or re-encoded gets a new key and is decoded again (its old entries are simply never read).
Frames are stored as PNG, so a frame read back is pixel for pixel the frame that was decoded, and results
do not depend on whether the cache was warm. Each file is written aside and renamed into place, so a
reader sees a whole file or none; ranks that decode the same frame at the same time write identical
bytes and the last rename wins. A file that cannot be read back (e.g. cut by a crash before the kernel
flushed it) counts as missing and is decoded again.

Only decoded frames (EgoSchema) are cached: synthetic frames are rendered, which costs less than
writing and reading a PNG.

    cache = FrameCache(cache_dir / "frames")
    frames = cache.frames(path, [3, 9, 15], max_pixels, decode=lambda missing: ...)
    cache.decoded, cache.hits     # frames decoded because they were missing / frames read back
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from data_recipes.files import atomic_path, atomic_write_json

FORMAT = 1
"""Changes when the layout or the way frames are made changes: older entries are then never read."""
PNG_LEVEL = 1
"""zlib level of the stored PNGs: lossless at any level; 1 writes several times faster than 6 for
files about 10-20% larger."""


class FrameCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.decoded = 0
        """Frames decoded because the cache did not hold them (this process)."""
        self.hits = 0
        """Frames read back from the cache (this process)."""
        self.stored = 0
        """Frame files written (this process)."""
        self._keys: dict[tuple, str] = {}

    def video_key(self, path: str | os.PathLike) -> str:
        """Identity of a video file: its resolved path, size and modification time (hashed)."""
        p = Path(path).resolve()
        st = p.stat()
        ident = (str(p), st.st_size, st.st_mtime_ns)
        if ident not in self._keys:
            raw = json.dumps([FORMAT, *ident])
            self._keys[ident] = hashlib.sha256(raw.encode()).hexdigest()[:24]
        return self._keys[ident]

    def _dir(self, path, max_pixels: int | None) -> Path:
        return self.root / self.video_key(path) / (str(max_pixels) if max_pixels else "full")

    def has(self, path: str | os.PathLike, index: int, max_pixels: int | None) -> bool:
        """Whether frame `index` of `path` at `max_pixels` is stored (without reading it)."""
        return (self._dir(path, max_pixels) / f"{int(index)}.png").is_file()

    def frames(self, path: str | os.PathLike, indices: Sequence[int], max_pixels: int | None,
               decode: Callable[[list[int]], list[Image.Image]]) -> list[Image.Image]:
        """The frames of `path` at `indices` (in that order, repeats kept) under the budget `max_pixels`.

        `decode(missing)` makes the frames the cache lacks, already resized: it is called once, with the
        missing indices in ascending order, and only when some are missing."""
        where = self._dir(path, max_pixels)
        wanted = sorted({int(i) for i in indices})
        got: dict[int, Image.Image] = {}
        for i in wanted:
            image = _read(where / f"{i}.png")
            if image is not None:
                got[i] = image
        self.hits += len(got)
        missing = [i for i in wanted if i not in got]
        if missing:
            made = decode(missing)
            if len(made) != len(missing):
                raise ValueError(f"{path}: asked for {len(missing)} frames, the decoder gave {len(made)}")
            self.decoded += len(missing)
            where.mkdir(parents=True, exist_ok=True)
            for i, image in zip(missing, made):
                _write(where / f"{i}.png", image)
                got[i] = image
            self.stored += len(missing)
        return [got[int(i)] for i in indices]

    def meta(self, path: str | os.PathLike, compute: Callable[[], dict]) -> dict:
        """Facts about the video (e.g. its frame count) stored beside its frames; `compute()` on a miss."""
        f = self.root / self.video_key(path) / "meta.json"
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            pass
        value = compute()
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(f, value)
        return value

    def counters(self) -> dict[str, int]:
        return {"decoded": self.decoded, "hits": self.hits, "stored": self.stored}


def _read(f: Path) -> Image.Image | None:
    try:
        with open(f, "rb") as fh:
            image = Image.open(fh)
            image.load()
        return image
    except FileNotFoundError:
        return None
    except (OSError, SyntaxError, ValueError):
        return None  # unreadable (cut by a crash): decoded again and rewritten


def _write(f: Path, image: Image.Image) -> None:
    """The PNG written through `atomic_path`: a reader never sees part of it."""
    with atomic_path(f) as tmp:
        image.save(tmp, format="PNG", compress_level=PNG_LEVEL)
