"""Byte-reproducible WebDataset shards and their hashes.

A shard is a plain tar: members `KEY.json` and `KEY.jpg` (one image) or `KEY.000.jpg`,
`KEY.001.jpg`, ... (frames, in order), which any WebDataset reader opens. Tar headers carry fixed
mtime, owner and mode, and JPEGs are encoded with fixed settings, so the same recipe and seed give the
same bytes.

Why not webdataset's own `TarWriter` / `ShardWriter` (webdataset 1.0.2, `webdataset/writer.py`)? With
`mtime=0, user="", group="", mode=0o644, encoder=False` its tar headers are the same bytes as ours, but
`TarWriter.write(sample)` writes a sample's fields in sorted order of their extensions, so `KEY.000.jpg`
... `KEY.004.jpg` (or `KEY.jpg`) would come before `KEY.json`, where our shards have `KEY.json` first:
every shard's bytes, and so every manifest's sha256, would change (checked on video_demo: same size,
different hash). Writing each member as a one-field "sample" keeps our order and gives identical bytes,
but then its `ShardWriter`, which counts `write()` calls as samples, cannot split shards by sample
count, and nothing is left of its API but the tar headers written below. Two smaller differences: its
`format` argument is ignored in 1.0.2 (the tar is tarfile's default PAX format, identical here only
because our names are short ASCII and every header field fits USTAR; we ask for USTAR explicitly), and
it opens the tar in stream mode ("w|").
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from data_recipes.files import file_sha256

JPEG_QUALITY = 95


def encode_jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def sample_members(key: str, sample_json: dict, images: list[Image.Image]) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in the order they are written."""
    members = [(f"{key}.json", json.dumps(sample_json, sort_keys=True, separators=(",", ":")).encode())]
    if len(images) == 1 and sample_json.get("kind") == "image":
        members.append((f"{key}.jpg", encode_jpeg(images[0])))
    else:
        members += [(f"{key}.{j:03d}.jpg", encode_jpeg(im)) for j, im in enumerate(images)]
    return members


def shard_samples(url: str, handler):
    """Raw samples ({"__key__", "json", "jpg" | "000.jpg", ...: bytes}) of one shard on its own: a shard cut
    mid-sample cannot lend its partial last sample's key to the next shard's members (webdataset groups
    members by key across shards). `handler`: webdataset's error handler."""
    import webdataset as wds

    return wds.tarfile_to_samples(handler=handler)(iter([{"url": str(url)}]))


def image_names(sample: dict) -> list[str]:
    """A raw sample's image members in order: its one image, or its frames."""
    return ["jpg"] if "jpg" in sample else sorted(k for k in sample if k.endswith(".jpg"))


def sample_images(sample: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(sample[k])).convert("RGB") for k in image_names(sample)]


class ShardWriter:
    """Writes numbered shards `PREFIX-000000.tar`... of at most `shard_size` samples each."""

    def __init__(self, out_dir: Path, prefix: str, shard_size: int):
        self.out_dir, self.prefix, self.shard_size = Path(out_dir), prefix, shard_size
        self.shards: list[dict] = []
        self._tar = None
        self._count = 0

    def _open(self):
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._path = self.out_dir / name
        self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append({"name": name, "samples": 0})
        self._count = 0

    def write(self, members: list[tuple[str, bytes]]) -> None:
        if self._tar is None or self._count >= self.shard_size:
            self.close_shard()
            self._open()
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self.shards[-1]["samples"] = self._count

    def full(self) -> bool:
        """Whether the open shard holds `shard_size` samples (the next write starts a new one)."""
        return self._tar is not None and self._count >= self.shard_size

    def close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            self.shards[-1].update(sha256=file_sha256(self._path), bytes=self._path.stat().st_size)

    def close(self) -> list[dict]:
        self.close_shard()
        return self.shards
