"""Streaming a recipe's shards into training batches.

One straight chain, per pass over the data:

    shard list -> seeded shard shuffle (per pass) -> split by node -> split by worker
      -> tar samples (webdataset; a bad member is counted, not fatal) -> sample check -> seeded
      shuffle buffer -> decode -> batch -> collate with the family's chat template (labels on assistant tokens)

Each shard is read on its own, and every sample is checked before it enters the buffer: its `json`
member parses into the sample schema and its message markers match its image members. A truncated
shard therefore costs the samples from the cut on (the sample the cut went through is incomplete and
dropped), a sample of the wrong shape is dropped, and both are counted in `errors` (first ones in
`error_examples`), never a crash of the run or a half sample in a batch.

The stream is endless (pass after pass, each reshuffled), so a budget larger than one pass simply
continues, and every batch is a pure function of (seed, rank, world size, workers, position): that
is what makes resume exact. When there are fewer shards than readers, shards are shared and the
split happens sample by sample instead, so every reader still gets a disjoint, equal share.
"""

from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import dataclass

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from train.chat import ConversationError, encode, validate_messages

_EXAMPLES = 5


@dataclass
class Batch:
    inputs: dict
    counts: dict          # samples, images, text_tokens, supervised_tokens, visual_tokens: lists per sample
    keys: list[str]
    pass_index: int


def _image_names(sample: dict) -> list[str]:
    return ["jpg"] if "jpg" in sample else sorted(k for k in sample if k.endswith(".jpg"))


def _images(sample: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(sample[k])).convert("RGB") for k in _image_names(sample)]


class ShardStream(IterableDataset):
    """Endless, deterministic, rank- and worker-disjoint batches from WebDataset shards."""

    def __init__(self, urls: list[str], processor, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 500, skip_batches: int = 0):
        self.urls, self.processor, self.batch_size = list(urls), processor, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.shuffle_buffer, self.skip_batches = shuffle_buffer, skip_batches
        self.errors = 0
        self.error_examples: list[str] = []

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        return self.rank * nw + w, self.world * nw

    def _raw(self, pass_index: int, reader: int, readers: int):
        """Undecoded samples of one pass for this reader, after the seeded shuffle buffer."""
        shards = list(self.urls)
        random.Random(f"shards:{self.seed}:{pass_index}").shuffle(shards)
        by_shard = len(shards) >= readers
        mine = shards[reader::readers] if by_shard else shards
        rng = random.Random(f"buffer:{self.seed}:{pass_index}:{reader}:{readers}")
        buf = []
        for i, s in enumerate(self._samples(mine)):
            if not by_shard and i % readers != reader:
                continue
            if not self._sound(s):
                continue
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _samples(self, urls: list[str]):
        """Raw samples shard by shard: a shard cut mid-sample cannot lend its partial last sample's key
        to the next shard's members (webdataset groups members by key across shard boundaries when a
        shard ends in an error)."""
        for u in urls:
            yield from wds.tarfile_to_samples(handler=self._count_error)(iter([{"url": u}]))

    def _sound(self, s: dict) -> bool:
        """Whether a raw sample is complete and of the sample schema; counts it as an error if not."""
        where = f"{s.get('__url__', '?')}: sample {s.get('__key__', '?')}"
        try:
            if "json" not in s:
                raise ConversationError(f"{where}: no json member")
            js = json.loads(s["json"])
            if not isinstance(js, dict):
                raise ConversationError(f"{where}: json member must be an object, got {type(js).__name__}")
            validate_messages(js.get("messages"), len(_image_names(s)), where=where)
        except (ValueError, UnicodeDecodeError) as e:  # ConversationError and JSONDecodeError are ValueErrors
            self._count_error(e)
            return False
        return True

    def _count_error(self, exn) -> bool:
        # A truncated shard or a bad member costs its samples, never the run; they are counted.
        self.errors += 1
        if len(self.error_examples) < _EXAMPLES:
            self.error_examples.append(str(exn)[:300])
        if self.errors & (self.errors - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible from any worker, never a flood
            print(f"[data] skipped a bad shard member or sample ({self.errors} so far in this reader): "
                  f"{str(exn)[:300]}", file=sys.stderr, flush=True)
        return True

    def _endless(self, reader: int, readers: int):
        """(pass, raw sample) pairs, pass after pass; a pass's remainder flows into the next batch."""
        pass_index = 0
        while True:
            n = 0
            for s in self._raw(pass_index, reader, readers):
                n += 1
                yield pass_index, s
            if n == 0:
                raise RuntimeError(f"reader {reader} of {readers} found no samples in {len(self.urls)} shards")
            pass_index += 1

    def batches_of_reader(self, reader: int, readers: int, n_workers: int):
        """(pass, raw samples) batches of one reader, skipping what a resumed run already consumed."""
        # The DataLoader takes batches from its workers round-robin: batch k comes from worker k % n.
        skip = len(range(reader % n_workers, self.skip_batches, n_workers))
        batch = []
        for pass_index, s in self._endless(reader, readers):
            batch.append(s)
            if len(batch) == self.batch_size:
                if skip:
                    skip -= 1  # skipped before decoding: fast-forwarding costs tar reads only
                else:
                    yield pass_index, batch
                batch = []

    def collate(self, raw: list[dict]) -> tuple[dict, dict, list[str]]:
        convs, images, keys = [], [], []
        for s in raw:
            js = json.loads(s["json"])
            convs.append(js["messages"])
            images.append(_images(s))
            keys.append(s["__key__"])
        enc = encode(self.processor, convs, images)
        counts = {"samples": [1] * len(raw), "images": [len(x) for x in images],
                  "visual_tokens": enc.visual_tokens, "text_tokens": enc.text_tokens,
                  "supervised_tokens": enc.supervised_tokens}
        return enc.inputs, counts, keys

    def __iter__(self):
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        reader, readers = self._reader()
        for pass_index, raw in self.batches_of_reader(reader, readers, n_workers):
            inputs, counts, keys = self.collate(raw)
            yield Batch(inputs, counts, keys, pass_index)


def make_loader(stream: ShardStream, num_workers: int) -> DataLoader:
    # A private generator: drawing the workers' base seed from the global RNG would shift dropout
    # masks between a resumed run and an uninterrupted one.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=lambda b: b,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      generator=torch.Generator().manual_seed(0))


PER_IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")


def trim(batch: Batch, keep: int) -> Batch:
    """The first `keep` samples of a batch (the last batch of a budgeted run)."""
    n, images_kept = len(batch.keys), sum(batch.counts["images"][:keep])
    inputs = {}
    for k, v in batch.inputs.items():
        if k in PER_IMAGE_KEYS:
            continue
        inputs[k] = v[:keep] if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) else v
    grid = batch.inputs.get("image_grid_thw")
    for k in PER_IMAGE_KEYS:
        v = batch.inputs.get(k)
        if v is None:
            continue
        if k == "pixel_values" and grid is not None:
            # Qwen2-VL flattens every image's patches into one (patches, dim) matrix.
            inputs[k] = v[: int(grid[:images_kept].prod(-1).sum())]
        else:
            inputs[k] = v[:images_kept]
    # Sequences were right-padded to the longest of the batch; drop columns nobody uses any more.
    width = int(inputs["attention_mask"].sum(1).max())
    for k in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
        if k in inputs:
            inputs[k] = inputs[k][:, :width]
    counts = {k: v[:keep] for k, v in batch.counts.items()}
    return Batch(inputs, counts, batch.keys[:keep], batch.pass_index)
