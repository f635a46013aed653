"""Streaming a recipe's shards into training batches.

One straight chain per reader (a reader is one DataLoader worker of one rank; reader r of R, with
R = world size x workers), pass after pass:

    shard list -> seeded shard shuffle (per pass) -> the pass's samples laid end to end, positions
      0..N-1 (N = the manifest's per-shard counts summed) -> reader r takes positions [r*N//R, (r+1)*N//R)
      -> tar samples (webdataset; a bad member is counted, not fatal) -> sample check -> seeded shuffle
      buffer -> batch -> decode + collate with the family's chat template (labels on assistant tokens)
      -> drop samples longer than max_length or the model's context (counted in `Batch.dropped`)

Ranges, not whole shards, are dealt out, so every reader's share of a pass is N/R give or take one
sample, and readers consumed in lockstep finish their passes together: no sample comes a second time
while more than one sample per reader has not come once. A reader opens only the
shards its range overlaps and skips the positions before its range undecoded. Positions come from
the manifest's counts, so a truncated shard costs its own missing or bad samples only and never
shifts another reader's range. Every sample is checked before it enters the buffer: its `json`
member parses into the sample schema and its markers match its image members
(`data_recipes.schema.validate_record`); a sample cut by a truncated shard or of the wrong shape is
dropped and counted in `errors` (first ones in `error_examples`), never a crash of the run or a half
sample in a batch.

A sample longer than `max_length` (reason `too_long`) or than the language model's context
(`over_context`; each reader reports its first one on stderr) is dropped after collation, never cut:
cutting could split an image's placeholder tokens. A batch with drops is yielded short (the trainer's
accounting handles fewer samples); one whose samples were all dropped is not yielded: its drops are
carried to the reader's next batch, and a reader that drops a whole pass's share in a row stops with an
error (no sample fits: the endless stream would otherwise read on for ever).

With `image_filler`, a batch whose samples have no image or frame (text-only records: LLaVA's mix665k
holds some) gets one more row, the filler (`FILLER_KEY`): a blank image under a one-line exchange whose
labels are all masked. It is not a sample: no count, budget or `samples/` record includes it
(`Batch.samples`, `Batch.sample_counts`). The stream adds it when every process must run the vision
tower and projector in every micro-batch (ZeRO-3 gathers their weights as they run; DeepSpeed reduces a
trained projector's gradients in buckets), and the trainer forwards it wherever a process's samples of
a micro-batch have no image: then every process runs the same modules in the same order, and the
filler's gradients are zeros. It is encoded in the batch's own processor call, so every family pads and
lays out its pixels as it does for data.

The stream is endless (pass after pass, each reshuffled), and a reader's raw samples are a pure
function of (seed, R, r, manifest counts). `Batch.position` counts the samples a reader has taken
from its shuffle buffer (dropped ones included), so a run resumes exactly from the last position it
consumed of every reader (`resume=`): the reader replays its buffer without decoding up to there.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_recipes.build import read_manifest, shard_urls
from data_recipes.resize import fit
from data_recipes.clips import VIDEO_INPUTS, as_video
from data_recipes.processors import frame_options
from data_recipes.schema import ConversationError, validate_record
from data_recipes.shards import image_names, sample_images, shard_samples
from data_recipes.tokens import video_token_id
from train.chat import encode


_EXAMPLES = 5

FILLER_KEY = "__filler__"
"""The key of a batch's filler row (`ShardStream(image_filler=True)`): a blank image, labels masked."""
FILLER_SIZE = 64
"""The filler's image side in pixels (the family's image processor resizes it as it resizes data)."""


@dataclass
class Batch:
    inputs: dict
    counts: dict          # samples, images, text_tokens, supervised_tokens, visual_tokens: lists per row
    keys: list[str]
    pass_index: int
    reader: int = 0       # global reader id (rank * workers + slot)
    position: int = 0     # samples this reader took from its buffer, through this batch's (drops included)
    dropped: dict = field(default_factory=dict)  # reason -> samples dropped since the reader's previous batch

    @property
    def filler(self) -> bool:
        """Whether the last row is the filler (a blank image under masked labels), not a sample."""
        return bool(self.keys) and self.keys[-1] == FILLER_KEY

    @property
    def samples(self) -> int:
        """The batch's samples: its rows, the filler row excluded."""
        return len(self.keys) - self.filler

    def sample_counts(self) -> dict:
        """`counts` of the samples alone (the filler row excluded)."""
        return {k: v[:self.samples] for k, v in self.counts.items()} if self.filler else self.counts


def shard_counts_from_manifest(shards_dir) -> tuple[list[str], list[int]]:
    """Shard paths and per-shard sample counts of a build, in manifest order."""
    counts = [s.get("samples") for s in read_manifest(shards_dir)["shards"]]
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        raise ValueError(f"{shards_dir}/manifest.json: every shard needs an integer 'samples'; rebuild the recipe")
    return shard_urls(shards_dir), counts


def manifest_max_pixels(manifest: dict) -> int | None:
    """The resize rule's budget a build applied (None: no limit recorded)."""
    resize = manifest.get("resize")
    value = resize.get("max_pixels") if isinstance(resize, dict) else manifest.get("max_pixels")
    return value if isinstance(value, int) and value > 0 else None


def resolve_frames(video_input: str, max_pixels: int, manifest: dict) -> tuple[str, int | None]:
    """The trainer's (video_input, max_pixels) settings resolved against the build: `auto` and -1 take
    the manifest's, 0 means no limit."""
    path = manifest.get("video_input", "images") if video_input == "auto" else video_input
    return path, (manifest_max_pixels(manifest) if max_pixels == -1 else (max_pixels or None))


def encode_samples(processor, raw: list[dict], video_input: str = "images", max_pixels: int | None = None):
    """Raw shard samples (`json` and image members) -> (`train.chat.Encoded`, per-sample counts).

    The one place a sample becomes model inputs, for training batches, the budget's prescan and the
    dry-run plan: images and frames under the resize rule, a video sample's frames as clips on the
    native path."""
    convs, images, clips, frames, kinds, rates = [], [], [], [], [], []
    for s in raw:
        js = json.loads(s["json"])
        kinds.append(js.get("kind"))
        ims = [fit(im, max_pixels) for im in sample_images(s)]
        frames.append(len(ims))
        if video_input == "native" and js.get("kind") == "video":
            msgs, groups = as_video(js["messages"], ims, js.get("clips"), where=s.get("__key__", "sample"))
            convs.append(msgs), images.append([]), clips.append(groups), rates.append(js.get("clip_fps"))
        else:
            convs.append(js["messages"]), images.append(ims), clips.append([]), rates.append(None)
    # A batch of video samples fed as images takes the family's frame options (InternVL: one tile per
    # frame); a batch with image samples keeps the processor's own settings.
    frames_only = all(k == "video" for k in kinds)
    enc = encode(processor, convs, images, videos=clips if any(clips) else None, video_fps=rates,
                 image_options=frame_options(processor) if frames_only else None)
    counts = {"samples": [1] * len(raw), "images": frames, "visual_tokens": enc.visual_tokens,
              "text_tokens": enc.text_tokens, "supervised_tokens": enc.supervised_tokens}
    if any(clips):
        # Which sample each image-input row belongs to (`select`): frames fed as clips are no image
        # inputs, unless the family's processor turns clips into images (InternVL's frame labels).
        clips_as_images = video_token_id(processor) is None
        counts["image_inputs"] = [len(im) + (sum(map(len, c)) if clips_as_images else 0)
                                  for im, c in zip(images, clips)]
        if enc.video_tokens is not None:
            counts["video_tokens"] = enc.video_tokens
    return enc, counts


def filler_sample() -> dict:
    """The filler as a raw shard sample: a black `FILLER_SIZE` square and a one-line exchange."""
    buf = io.BytesIO()
    Image.new("RGB", (FILLER_SIZE, FILLER_SIZE)).save(buf, format="JPEG")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Nothing."}]}]
    return {"__key__": FILLER_KEY, "json": json.dumps({"kind": "image", "messages": messages}).encode(),
            "jpg": buf.getvalue()}


class ShardStream(IterableDataset):
    """Endless, deterministic, rank- and worker-disjoint batches from WebDataset shards.

    shard_counts: samples per shard, as in the manifest (None: read every shard once to count).
    max_length / context_length: drop samples with more tokens (0: no limit).
    video_input: `images` feeds every frame as an image; `native` feeds a video sample's frames as
        clips through the family's video processor (`train.chat.as_video`).
    max_pixels: the resize rule (`data_recipes.resize`) applied to every image and frame read.
    image_filler: give a batch without images or frames the filler row (see the module's docstring).
    resume: {"positions": {reader id: Batch.position of the last batch consumed from it},
             "batches": loader batches consumed}.
    """

    def __init__(self, urls: list[str], processor, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 500, shard_counts: list[int] | None = None, max_length: int = 0,
                 context_length: int = 0, resume: dict | None = None, video_input: str = "images",
                 max_pixels: int | None = None, image_filler: bool = False):
        if video_input not in VIDEO_INPUTS:
            raise ValueError(f"video_input must be one of {', '.join(VIDEO_INPUTS)}, got {video_input!r}")
        self.video_input, self.max_pixels = video_input, max_pixels
        self.urls, self.processor, self.batch_size = list(urls), processor, batch_size
        self.seed, self.rank, self.world, self.shuffle_buffer = seed, rank, world, shuffle_buffer
        self.max_length, self.context_length = max_length, context_length
        self.image_filler = image_filler
        self.resume = resume or {}
        if shard_counts is not None and len(shard_counts) != len(self.urls):
            raise ValueError(f"{len(shard_counts)} shard counts for {len(self.urls)} shards")
        self._shard_counts = None if shard_counts is None else list(shard_counts)
        self.errors = 0
        self.error_examples: list[str] = []
        self._warned_context = False

    # --- which samples each reader takes ------------------------------------------------------------
    @property
    def shard_counts(self) -> list[int]:
        """Samples per shard; without the manifest's counts, every shard is read once to count them
        (on first use: `make_loader` does it before the workers start, so they inherit the counts)."""
        if self._shard_counts is None:
            self._shard_counts = [sum(1 for _ in shard_samples(u, lambda e: True)) for u in self.urls]
        return self._shard_counts

    @property
    def total(self) -> int:
        return sum(self.shard_counts)

    @staticmethod
    def readers_of_rank(rank: int, n_workers: int) -> list[int]:
        """Global reader ids of one rank's workers (0 workers = one in-process reader)."""
        n = max(n_workers, 1)
        return list(range(rank * n, (rank + 1) * n))

    def _range(self, reader: int, readers: int) -> tuple[int, int]:
        return reader * self.total // readers, (reader + 1) * self.total // readers

    def share(self, reader: int, readers: int) -> int:
        """Samples per pass of a reader (shares differ by at most one)."""
        lo, hi = self._range(reader, readers)
        return hi - lo

    def unique_seen(self, positions: dict, readers: int) -> int:
        """Distinct samples taken so far, given the last position of every reader (each reader's
        position counted up to its share of a pass; a pass's bad samples make this an upper bound)."""
        return sum(min(int(p), self.share(int(r), readers)) for r, p in positions.items())

    def _raw(self, pass_index: int, reader: int, readers: int):
        """Undecoded samples of one pass for this reader, after the seeded shuffle buffer."""
        order = list(range(len(self.urls)))
        random.Random(f"shards:{self.seed}:{pass_index}").shuffle(order)
        lo, hi = self._range(reader, readers)
        rng = random.Random(f"buffer:{self.seed}:{pass_index}:{reader}:{readers}")
        buf, start = [], 0
        for i in order:
            end = start + self.shard_counts[i]
            if start < hi and end > lo:  # the shard overlaps this reader's range
                first = max(lo, start) - start
                for s in itertools.islice(shard_samples(self.urls[i], self._count_error), first,
                                          min(hi, end) - start):
                    if self._sound(s):
                        buf.append(s)
                        if len(buf) >= self.shuffle_buffer:
                            yield buf.pop(rng.randrange(len(buf)))
            start = end
        rng.shuffle(buf)
        yield from buf

    def _sound(self, s: dict) -> bool:
        """Whether a raw sample is complete and of the sample schema; counts it as an error if not."""
        where = f"{s.get('__url__', '?')}: sample {s.get('__key__', '?')}"
        try:
            if "json" not in s:
                raise ConversationError(f"{where}: no json member")
            validate_record(json.loads(s["json"]), len(image_names(s)), where=where)
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
        if not self.share(reader, readers):
            raise RuntimeError(f"{self.total} samples per pass cannot feed {readers} readers (ranks x workers)")
        for pass_index in itertools.count():
            n = 0
            for s in self._raw(pass_index, reader, readers):
                n += 1
                yield pass_index, s
            if n == 0:
                raise RuntimeError(f"reader {reader} of {readers} found no sound sample in {len(self.urls)} shards")

    def batches_of_reader(self, reader: int, readers: int, *, position: int = 0):
        """(pass, raw samples) batches of one reader after its first `position` samples, which are
        taken from the buffer and thrown away undecoded (tar reads and json checks only)."""
        samples = itertools.islice(self._endless(reader, readers), position, None)
        while batch := list(itertools.islice(samples, self.batch_size)):
            yield batch[-1][0], [s for _, s in batch]

    # --- decoding, length limits, and the loader ------------------------------------------------
    def collate(self, raw: list[dict]) -> tuple[dict, dict, list[str]]:
        """(inputs, counts, keys) of raw samples; with `image_filler`, the filler row ends a batch
        without any image or frame (its labels masked)."""
        filler = self.image_filler and not any(image_names(s) for s in raw)
        enc, counts = encode_samples(self.processor, raw + [filler_sample()] if filler else raw, self.video_input,
                                     self.max_pixels)
        if filler:
            enc.inputs["labels"][-1] = -100
        return enc.inputs, counts, [s["__key__"] for s in raw] + ([FILLER_KEY] if filler else [])

    def _drop_long(self, batch: Batch) -> tuple[Batch | None, Counter]:
        """The batch without its samples over the length limits (None if none is left), and drops by reason.
        The filler row is never dropped."""
        keep, why = [], Counter()
        for i, n in enumerate(batch.inputs["attention_mask"].sum(1).tolist()[:batch.samples]):
            if self.context_length and n > self.context_length:
                why["over_context"] += 1
                if not self._warned_context:
                    self._warned_context = True
                    print(f"[data] sample {batch.keys[i]}: {n} tokens, more than the language model's context of "
                          f"{self.context_length} tokens (max_position_embeddings, times a RoPE scaling factor); "
                          "dropped (further ones are counted in Batch.dropped['over_context'])", file=sys.stderr,
                          flush=True)
            elif self.max_length and n > self.max_length:
                why["too_long"] += 1
            else:
                keep.append(i)
        if len(keep) == batch.samples:
            return batch, why
        return (select(batch, keep + [batch.samples] * batch.filler) if keep else None), why

    def reader_batches(self, reader: int, readers: int, position: int = 0):
        """The `Batch`es of one reader, from `position` on."""
        dropped, since_kept, share = Counter(), 0, self.share(reader, readers)
        for pass_index, raw in self.batches_of_reader(reader, readers, position=position):
            position += len(raw)
            since_kept += len(raw)
            batch, why = self._drop_long(Batch(*self.collate(raw), pass_index, reader, position))
            if batch is not None and self.image_filler and not batch.filler and not any(batch.counts["images"]):
                # the samples with images were the ones too long: the rest again, with the filler
                kept = set(batch.keys)
                batch = Batch(*self.collate([s for s in raw if s["__key__"] in kept]), pass_index, reader, position)
            dropped.update(why)
            if batch is not None:
                yield replace(batch, dropped=dict(dropped))
                dropped.clear()
                since_kept = 0
            elif since_kept >= share:  # the stream is endless: without this it would read on for ever
                raise RuntimeError(
                    f"reader {reader} of {readers}: the last {since_kept} samples it took (a whole pass of its "
                    f"share) were all dropped as too long ({', '.join(f'{k} {v}' for k, v in sorted(dropped.items()))}; "
                    f"context {self.context_length or 'unset'} tokens, max_length {self.max_length or 'unset'}): no "
                    "sample of these shards fits. Fewer frames or a smaller max_pixels in the recipe, video_input "
                    "native (pooled video tokens) or a larger max_length fit them")

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        done = int(self.resume.get("batches", 0))
        positions = {int(r): int(p) for r, p in self.resume.get("positions", {}).items()}
        # The DataLoader takes batches from its workers round-robin from worker 0: after `done`
        # batches, worker w must continue the reader whose turn comes w-th.
        reader = self.rank * n + (w + done) % n
        yield from self.reader_batches(reader, self.world * n, positions.get(reader, 0))


def make_loader(stream: ShardStream, num_workers: int) -> DataLoader:
    # A private generator: drawing the workers' base seed from the global RNG would shift dropout
    # masks between a resumed run and an uninterrupted one.
    if not stream.total:  # counted here if need be, rather than once in every worker
        raise ValueError(f"no samples in the {len(stream.urls)} shards")
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=lambda b: b,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      generator=torch.Generator().manual_seed(0), worker_init_fn=_shield_worker)


def _shield_worker(_worker_id: int) -> None:
    """A loader worker obeys SIGTERM from its trainer only (the loader's and multiprocessing's own shutdown)
    and ignores SIGUSR2. Slurm sends both to every process of a preempted or timed-out job, and a worker
    that died of them would fail the trainer (torch raises in it at once when a worker dies) before the
    trainer, which handles them, could save its state. SIGTERM is blocked in the worker and a thread takes
    it (`sigwaitinfo` gives the sender): from the trainer it ends the worker as SIGTERM always did; from
    anyone else it is dropped (the trainer got it too, and stops the workers on its way out)."""
    import os
    import signal
    import threading

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (a worker forked after the trainer set its own handler)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: no sender to tell by; SIGTERM ends the worker, as before
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    trainer = os.getppid()

    def take_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.kill(os.getpid(), signal.SIGTERM)  # this thread alone takes it now: the default action, as before

    threading.Thread(target=take_sigterm, daemon=True, name="loader-sigterm").start()


# --- selecting samples of a collated batch ------------------------------------------------------------
def _groups(sizes: list[int]) -> list[list[int]]:
    """Consecutive index groups of the given sizes."""
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def _proportional(total: int, weights: list[int], what: str) -> list[int]:
    w = sum(weights)
    if not w or any(x * total % w for x in weights):
        raise ValueError(f"cannot split {total} rows of {what} over samples with {weights} placeholder tokens")
    return [x * total // w for x in weights]


def _media_index(pixels, grid, items, tokens, what) -> tuple[list[list[int]], list[list[int]]]:
    """Per sample, its items (images or videos: rows of the grid/sizes) and its rows of `pixels`.

    Layouts: Qwen2-VL flattens every item's patches into one matrix, item i taking prod(grid[i]) rows;
    LLaVA, LLaVA-NeXT and OneVision have one row per item; InternVL one row per tile, each row giving
    the same number of placeholder tokens. Items per sample are given for images (None for videos:
    then they follow from the sample's placeholder tokens)."""
    rows_total = pixels.shape[0]
    if grid is not None:
        item_rows = grid.prod(-1).tolist()
        if items is None:
            rows = _proportional(rows_total, tokens, what)
            ends = list(itertools.accumulate(item_rows))  # a sample holds the items that end in its rows
            starts = itertools.accumulate(rows, initial=0)
            items = [sum(a < e <= a + r for e in ends) for a, r in zip(starts, rows)]
        by_item = _groups(items)
        return by_item, _groups([sum(item_rows[j] for j in g) for g in by_item])
    if items is not None and rows_total == sum(items):
        return _groups(items), _groups(items)
    rows = _proportional(rows_total, tokens, what)
    return _groups(items if items is not None else rows), _groups(rows)


def select(batch: Batch, rows) -> Batch:
    """The batch reduced to the samples `rows` (in that order), with their images, videos and tokens."""
    rows, n = list(rows), len(batch.keys)
    src, inputs, counts = batch.inputs, dict(batch.inputs), batch.counts
    video_tokens = counts.get("video_tokens")
    if video_tokens is None and "mm_token_type_ids" in src:
        video_tokens = (src["mm_token_type_ids"] == 2).sum(1).tolist()
    images = ("image_grid_thw", "image_sizes", "batch_num_images")
    for pix, grid, per_item, items, tokens in (  # per_item: inputs with one row per image / video
            ("pixel_values", "image_grid_thw", images, counts.get("image_inputs", counts["images"]),
             counts["visual_tokens"]),
            ("pixel_values_videos", "video_grid_thw", ("video_grid_thw",), None, video_tokens)):
        if pix not in src:
            continue
        if items is None and tokens is None:
            raise ValueError(f"{pix}: cannot tell which sample each video belongs to")
        by_item, by_row = _media_index(src[pix], src.get(grid), items, tokens, pix)
        if not any(by_row[i] for i in rows):  # as a batch without images collates: no image inputs
            for k in (pix, *per_item):
                inputs.pop(k, None)
            continue
        inputs[pix] = src[pix][[j for i in rows for j in by_row[i]]]
        for k in per_item:
            if k == "batch_num_images" and k in src:  # OneVision: images per sample (that has any, if so given)
                per = [len(by_item[i]) for i in rows]
                inputs[k] = torch.tensor(per if len(src[k]) == n else [c for c in per if c])
            elif k in src:
                inputs[k] = src[k][[j for i in rows for j in by_item[i]]]
    mask = src["attention_mask"][rows]
    used = mask.any(0).nonzero().flatten()
    lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
    width = src["attention_mask"].shape[1]
    for k, v in src.items():
        if inputs.get(k) is not v or not isinstance(v, torch.Tensor) or v.shape[:1] != (n,):
            continue
        # Per-sample tensors; token-aligned ones lose the padding columns no kept sample uses.
        inputs[k] = v[rows][:, lo:hi] if v.dim() >= 2 and v.shape[1] == width else v[rows]
    counts = {k: [v[i] for i in rows] for k, v in counts.items()}
    return replace(batch, inputs=inputs, counts=counts, keys=[batch.keys[i] for i in rows])
