"""train.data.ShardStream: every sample once per pass, length drops, exact resume; `select` per family.

Shards are written on the fly: tiny tars of `KEY.json` (the sample schema of train/chat.py) and 0-2
small JPEGs per sample, with a manifest holding each shard's sample count.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_recipes.shards import ShardWriter, sample_members
from helpers import tiny_model
from train.chat import encode
from train.data import Batch, ShardStream, make_loader, select, shard_counts_from_manifest

SIZES = [12, 7, 15, 9, 17]  # 60 samples in 5 unequal shards
WORDS = "red green blue cube ball moves left right up down".split()


def conversation(g: int, n_images: int) -> list[dict]:
    words = " ".join(WORDS[(g + j) % len(WORDS)] for j in range(1 + (g * 7) % 13))  # 1..13 words
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": words}]},
            {"role": "assistant", "content": [{"type": "text", "text": WORDS[g % len(WORDS)]}]}]


def picture(g: int, j: int, size: int = 16) -> Image.Image:
    return Image.new("RGB", (size + 4 * j, size), ((g * 37) % 256, (j * 90) % 256, 128))


def write_shards(d: Path, sizes=SIZES, images=lambda g: g % 3) -> Path:
    """Shards of the given sizes; sample g has key f'{g:05d}' and `images(g)` images."""
    d.mkdir(parents=True, exist_ok=True)
    w, g = ShardWriter(d, "s", shard_size=10**6), 0
    for size in sizes:
        for _ in range(size):
            n = images(g)
            js = {"id": f"{g:05d}", "kind": "image" if n == 1 else "video", "messages": conversation(g, n)}
            w.write(sample_members(f"{g:05d}", js, [picture(g, j) for j in range(n)]))
            g += 1
        w.close_shard()  # the next write opens a new shard
    (d / "manifest.json").write_text(json.dumps({"recipe": "t", "shards": w.close()}))
    return d


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("stream") / "shards")


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from train.families import load_model

    return load_model(tiny_model("llava", tmp_path_factory))[1]


ALL = {f"{g:05d}" for g in range(sum(SIZES))}


# --- 1. every sample once per pass ---------------------------------------------------------------------
@pytest.mark.parametrize("readers", [3, 4, 7])
def test_every_sample_exactly_once_per_pass(shards, readers, monkeypatch):
    import train.data as data

    urls, counts = shard_counts_from_manifest(shards)
    assert counts == SIZES
    stream = ShardStream(urls, None, batch_size=5, seed=3, shuffle_buffer=4, shard_counts=counts)
    counted = ShardStream(urls, None, batch_size=5, seed=3, shuffle_buffer=4)  # counts by reading the shards
    assert counted.shard_counts == SIZES
    opened = []
    real = data.shard_samples
    monkeypatch.setattr(data, "shard_samples", lambda url, handler: opened.append(url) or real(url, handler))
    shares = [stream.share(r, readers) for r in range(readers)]
    assert sum(shares) == 60 and max(shares) - min(shares) <= 1
    for p in range(2):  # each pass reshuffles, and still covers everything once
        opened.clear()
        per_reader = [[s["__key__"] for s in stream._raw(p, r, readers)] for r in range(readers)]
        assert [len(k) for k in per_reader] == shares
        keys = list(itertools.chain(*per_reader))
        assert sorted(keys) == sorted(ALL)
        # a reader opens only the shards its range overlaps: each range boundary splits at most one shard
        assert len(opened) <= len(SIZES) + readers - 1
        assert per_reader == [[s["__key__"] for s in counted._raw(p, r, readers)] for r in range(readers)]
    assert stream.errors == 0


def test_lockstep_readers_see_every_sample_before_any_twice(shards):
    """The trainer takes one batch of every reader in turn; with whole shards dealt round-robin the
    readers holding small shards would start their second pass while others are still in their first."""
    readers, batch = 4, 5
    stream = ShardStream(shard_counts_from_manifest(shards)[0], None, batch_size=batch, seed=0, shuffle_buffer=8)
    its = [stream.batches_of_reader(r, readers) for r in range(readers)]
    consumed = []
    for _ in range(60 // (readers * batch)):
        for it in its:
            consumed += [s["__key__"] for s in next(it)[1]]
    assert len(consumed) == 60 and set(consumed) == ALL


def test_share_and_unique_seen(shards):
    stream = ShardStream(shard_counts_from_manifest(shards)[0], None, batch_size=5, seed=0, shard_counts=SIZES)
    assert [stream.share(r, 7) for r in range(7)] == [8, 9, 8, 9, 8, 9, 9]
    assert ShardStream.readers_of_rank(1, 2) == [2, 3] and ShardStream.readers_of_rank(2, 0) == [2]
    assert stream.unique_seen({0: 10, 1: 15, 2: 0, 3: 100}, 4) == 10 + 15 + 0 + 15
    assert stream.unique_seen({"1": 7}, 4) == 7  # keys as they come back from a JSON state


def test_truncated_shard_costs_only_its_own_samples(tmp_path):
    d = write_shards(tmp_path / "cut")
    urls, counts = shard_counts_from_manifest(d)
    with tarfile.open(urls[2]) as t:  # shard 2 holds samples 19..33; cut it inside sample 24's json
        m = t.getmember("00024.json")
    intact = {f"{g:05d}" for g in range(60)} - {f"{g:05d}" for g in range(24, 34)}
    Path(urls[2]).write_bytes(Path(urls[2]).read_bytes()[: m.offset_data + m.size // 2])
    sound = ShardStream(shard_counts_from_manifest(write_shards(tmp_path / "ok"))[0], None, batch_size=5, seed=1,
                        shuffle_buffer=4, shard_counts=counts)
    stream = ShardStream(urls, None, batch_size=5, seed=1, shuffle_buffer=4, shard_counts=counts)
    seen = []
    for r in range(4):
        got = {s["__key__"] for s in stream._raw(0, r, 4)}
        want = {s["__key__"] for s in sound._raw(0, r, 4)}
        assert got == want & intact  # no other reader's range shifts
        seen += got
    assert sorted(seen) == sorted(intact) and stream.errors >= 1
    # and the endless stream goes on through the cut, pass after pass
    assert len([b for _, b in zip(range(12), stream.batches_of_reader(0, 1))]) == 12


# --- 2. select per family; length drops -----------------------------------------------------------------
def _batch(processor, idx, n_images) -> Batch:
    convs = [conversation(g, n_images[g]) for g in idx]
    ims = [[picture(g, j, 40 + 8 * g) for j in range(n_images[g])] for g in idx]
    enc = encode(processor, convs, ims)
    counts = {"samples": [1] * len(idx), "images": [len(x) for x in ims], "visual_tokens": enc.visual_tokens,
              "text_tokens": enc.text_tokens, "supervised_tokens": enc.supervised_tokens}
    return Batch(enc.inputs, counts, [str(g) for g in idx], 0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "llava_next", "llava_next_video", "internvl",
                                    "llava_onevision"])
def test_select_keeps_exactly_the_rows_of_the_kept_samples(family, tmp_path_factory):
    from train.families import load_model

    model, processor, _ = load_model(tiny_model(family, tmp_path_factory))
    n_images = [1, 3, 0, 2, 1]  # images of different sizes: Qwen2-VL grids differ per image
    full = _batch(processor, range(5), n_images)
    for rows in ([1, 3], [0, 2, 4], [4, 1], [3], [2]):
        got, ref = select(full, rows), _batch(processor, rows, n_images)
        assert got.keys == ref.keys and set(got.inputs) == set(ref.inputs), rows
        assert got.counts == ref.counts
        for k, want in ref.inputs.items():
            have = got.inputs[k]
            if family == "llava_onevision" and k == "pixel_values":
                # patches are padded to the batch's most: the model reads only an image's own ones
                assert torch.equal(have[:, : want.shape[1]], want) and have.shape[0] == want.shape[0]
                continue
            assert have.shape == want.shape and torch.equal(have, want), (rows, k)
        if family == "llava_onevision":
            with torch.no_grad():
                assert torch.allclose(model(**got.inputs).logits, model(**ref.inputs).logits, atol=1e-5)


def test_select_assigns_videos_by_their_placeholder_tokens():
    """Qwen2-VL layout for videos: flattened patches, one grid per video, 4 patches per token."""
    grid = torch.tensor([[1, 2, 2], [2, 2, 2], [1, 2, 4]])  # video 0 -> sample 0; videos 1, 2 -> sample 2
    pix = torch.arange(20).unsqueeze(1).float()
    types = torch.zeros(3, 8, dtype=torch.long)
    types[0, 1], types[2, 1:5] = 2, 2
    mask = torch.tensor([[1] * 3 + [0] * 5, [1] * 2 + [0] * 6, [1] * 8])
    inputs = {"input_ids": torch.arange(24).view(3, 8), "attention_mask": mask, "mm_token_type_ids": types,
              "pixel_values_videos": pix, "video_grid_thw": grid}
    counts = {"samples": [1] * 3, "images": [0] * 3, "visual_tokens": [0] * 3}
    b = select(Batch(inputs, counts, ["a", "b", "c"], 0), [2, 0])
    assert b.inputs["pixel_values_videos"].flatten().tolist() == list(range(4, 20)) + [0, 1, 2, 3]
    assert b.inputs["video_grid_thw"].tolist() == [[2, 2, 2], [1, 2, 4], [1, 2, 2]]
    b = select(Batch(inputs, counts, ["a", "b", "c"], 0), [0, 1])
    assert b.inputs["video_grid_thw"].tolist() == [[1, 2, 2]] and b.inputs["input_ids"].shape == (2, 3)


def _lengths(stream: ShardStream, urls) -> dict[str, int]:
    """Every sample's token count, collated on its own."""
    return {s["__key__"]: int(stream.collate([s])[0]["attention_mask"].sum())
            for s in wds.tarfile_to_samples()(iter({"url": u} for u in urls))}


def test_long_samples_are_dropped_and_counted_never_cut(shards, processor, capsys):
    urls, counts = shard_counts_from_manifest(shards)
    plain = ShardStream(urls, processor, batch_size=4, seed=0, shard_counts=counts)
    length = _lengths(plain, urls)
    limits = sorted(length.values())
    max_length, context = limits[40], limits[50]  # both limits bite: too_long in between, over_context above
    stream = ShardStream(urls, processor, batch_size=4, seed=0, shard_counts=counts, max_length=max_length,
                         context_length=context)
    kept, dropped, batches = [], {}, stream.reader_batches(0, 1)
    while len(kept) + sum(dropped.values()) < 60:
        b = next(batches)
        assert b.keys and len(b.keys) <= 4 and b.position % 4 == 0
        for k, n in b.dropped.items():
            dropped[k] = dropped.get(k, 0) + n
        ids, mask = b.inputs["input_ids"], b.inputs["attention_mask"]
        assert ids.shape[1] == int(mask.sum(1).max())  # padding nobody uses is trimmed
        for i, key in enumerate(b.keys):
            assert int(mask[i].sum()) == length[key] <= max_length  # whole, never truncated
        kept += b.keys
    assert b.position == 60 and len(set(kept)) == len(kept)
    assert set(kept) == {k for k, n in length.items() if n <= max_length}
    assert dropped == {"over_context": sum(n > context for n in length.values()),
                       "too_long": sum(max_length < n <= context for n in length.values())}
    assert dropped["over_context"] and dropped["too_long"]
    err = capsys.readouterr().err
    assert err.count("more than the language model's context") == 1
    assert f"of {context} tokens (max_position_embeddings, times a RoPE scaling factor); dropped" in err


def test_a_batch_whose_samples_are_all_dropped_is_not_yielded(tmp_path, processor):
    # samples 3, 4, 5 (the second raw batch of 3) carry two images each, the others none
    urls, counts = shard_counts_from_manifest(write_shards(tmp_path / "s", sizes=[12],
                                                           images=lambda g: 2 if 3 <= g < 6 else 0))
    length = _lengths(ShardStream(urls, processor, batch_size=3, seed=0, shard_counts=counts), urls)
    order = sorted(length)  # one shard and no shuffle buffer: the stream's order is the shard's
    limit = min(length[k] for k in order[3:6]) - 1
    assert max(length[k] for k in order[:3] + order[6:]) <= limit
    stream = ShardStream(urls, processor, batch_size=3, seed=0, shuffle_buffer=1, shard_counts=counts,
                         max_length=limit)
    batches = stream.reader_batches(0, 1)
    first, second, third = next(batches), next(batches), next(batches)
    assert (first.keys, first.position, first.dropped) == (order[:3], 3, {})
    assert (second.keys, second.position, second.dropped) == (order[6:9], 9, {"too_long": 3})
    assert (third.keys, third.position, third.dropped) == (order[9:], 12, {})


def test_a_reader_whose_every_sample_is_dropped_stops_with_an_error(tmp_path, processor):
    """The stream is endless and a batch whose samples were all dropped is not yielded: with no sample under
    the limits (8 anyres frames against a 7B model's context, say) the reader used to read pass after pass
    without ever yielding. It now stops after a whole pass of its share with none kept, saying why."""
    urls, counts = shard_counts_from_manifest(write_shards(tmp_path / "s", sizes=[12], images=lambda g: 1))
    length = _lengths(ShardStream(urls, processor, batch_size=3, seed=0, shard_counts=counts), urls)
    context = min(length.values()) - 1
    stream = ShardStream(urls, processor, batch_size=3, seed=0, shard_counts=counts, context_length=context)
    with pytest.raises(RuntimeError) as e:
        next(stream.reader_batches(1, 2))  # a reader of two: its share is 6 samples
    assert f"reader 1 of 2: the last 6 samples it took (a whole pass of its share) were all dropped as too long " \
           f"(over_context 6; context {context} tokens, max_length unset): no sample of these shards fits" in str(e.value)


# --- 3. exact resume -----------------------------------------------------------------------------------
def _take(stream: ShardStream, n: int) -> list[Batch]:
    return list(itertools.islice(make_loader(stream, 2), n))


@pytest.mark.parametrize("consumed,max_length,rank", [(3, 0, 0), (4, 0, 1), (5, 40, 0), (6, 40, 1)])
def test_resume_continues_exactly(shards, processor, consumed, max_length, rank):
    urls, counts = shard_counts_from_manifest(shards)
    kw = dict(batch_size=3, seed=5, rank=rank, world=2, shuffle_buffer=6, shard_counts=counts, max_length=max_length)
    whole = _take(ShardStream(urls, processor, **kw), consumed + 4)
    assert {b.reader for b in whole} == set(ShardStream.readers_of_rank(rank, 2))
    positions = {}
    for b in whole[:consumed]:
        positions[b.reader] = b.position
    if max_length:
        assert sum(sum(b.dropped.values()) for b in whole) > 0  # the limit bites: positions != batches * size
    resumed = _take(ShardStream(urls, processor, resume={"positions": positions, "batches": consumed}, **kw), 4)
    for a, b in zip(whole[consumed:], resumed, strict=True):
        assert (a.keys, a.reader, a.position, a.dropped) == (b.keys, b.reader, b.position, b.dropped)
        assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
