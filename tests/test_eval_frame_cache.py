"""The frame cache: decoded EgoSchema frames are stored once, per (video file, frame index, max_pixels), and
read back pixel for pixel by every later task, condition and checkpoint."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import evalsuite.benchmarks.video_qa as benchmarks
from data_recipes.synthetic import eval_item
from data_recipes.video import write_video
from evalsuite.benchmarks.video_qa import EgoSchema, Synthetic
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.config import EvalConfig
from evalsuite.framecache import FrameCache
from evalsuite.outputs import read_rows
from evalsuite.runner import evaluate
from helpers import fast_config, tiny_model

SIZE = (96, 48)  # not square: the resize rule keeps the aspect
BUDGET = 64 * 32  # max_pixels below the decoded size: cached frames are the resized ones


def _clip(i: int, n: int, size=SIZE) -> list[Image.Image]:
    return [f.resize(size, Image.BICUBIC) for f in eval_item(0, i)["frames"][:n]]


@pytest.fixture
def egoschema(tmp_path):
    """Three answered questions, each with its own 20..22-frame mp4."""
    root = tmp_path / "egoschema"
    (root / "videos").mkdir(parents=True)
    qs, answers = [], {}
    for i in range(3):
        item = eval_item(0, i)
        qs.append({"q_uid": f"q{i}", "question": item["question"],
                   **{f"option {k}": item["options"][k] for k in range(5)}})
        answers[f"q{i}"] = item["answer"]
        write_video(root / "videos" / f"q{i}.mp4", _clip(i, 20 + i))
    (root / "questions.json").write_text(json.dumps(qs))
    (root / "subset_answers.json").write_text(json.dumps(answers))
    return root


@pytest.fixture
def decoder_calls(monkeypatch):
    """Frames decoded (`read_frames`) and videos probed (`count_frames`, `frame_rate`) by the benchmarks."""
    calls = {"frames": 0, "probes": 0}
    read, count, rate = benchmarks.read_frames, benchmarks.count_frames, benchmarks.frame_rate

    def counting_read(path, indices=None, **kw):
        calls["frames"] += len(indices)
        return read(path, indices=indices, **kw)

    def probe(fn):
        def counted(path, *a, **kw):
            calls["probes"] += 1
            return fn(path, *a, **kw)
        return counted

    monkeypatch.setattr(benchmarks, "read_frames", counting_read)
    monkeypatch.setattr(benchmarks, "count_frames", probe(count))
    monkeypatch.setattr(benchmarks, "frame_rate", probe(rate))
    return calls


def _pixels(frames) -> list[np.ndarray]:
    return [np.asarray(f) for f in frames]


def _sample(bench, item):
    """vcot's request: the union of the frames sampled at F = 3 and 5."""
    return sorted({i for f in (3, 5) for i in bench.indices(item, f)})


def test_second_pass_decodes_nothing_and_gives_the_same_pixels(egoschema, tmp_path, decoder_calls):
    plain = EgoSchema(egoschema, None)  # no cache: what decoding gives
    expected = {it.id: _pixels(plain.frames(it, _sample(plain, it), BUDGET)) for it in plain.items}
    assert plain.decoded == sum(len(v) for v in expected.values()) > 0
    assert all(a.shape == (32, 64, 3) for v in expected.values() for a in v)  # resized, aspect kept

    cache = FrameCache(tmp_path / "frames")
    first = EgoSchema(egoschema, None, frame_cache=cache)  # e.g. vcot
    got = {it.id: _pixels(first.frames(it, _sample(first, it), BUDGET)) for it in first.items}
    n = sum(len(v) for v in expected.values())
    assert first.decoded == cache.decoded == cache.stored == n and cache.hits == 0
    for uid in expected:
        assert all(np.array_equal(a, b) for a, b in zip(got[uid], expected[uid]))

    before = dict(decoder_calls)
    second = EgoSchema(egoschema, None, frame_cache=cache)  # e.g. shuffle, or the next checkpoint
    again = {it.id: _pixels(second.frames(it, _sample(second, it), BUDGET)) for it in second.items}
    assert second.decoded == 0 and cache.decoded == n and cache.hits == n
    assert decoder_calls == before  # no frame decoded, no video opened (frame counts come from the cache too)
    for uid in expected:
        assert len(again[uid]) == len(expected[uid])
        assert all(np.array_equal(a, b) for a, b in zip(again[uid], expected[uid]))  # pixel for pixel
    assert [second.clip_length(it) for it in second.items] == [20, 21, 22]

    # a repeated or reordered request is served in its own order
    item = second.items[0]
    idx = _sample(second, item)
    picked = second.frames(item, [idx[2], idx[0], idx[2]], BUDGET)
    assert [np.array_equal(np.asarray(p), expected["q0"][k]) for p, k in zip(picked, (2, 0, 2))] == [True] * 3
    assert second.decoded == 0


def test_partial_hits_decode_only_the_missing_frames(egoschema, tmp_path, decoder_calls):
    cache = FrameCache(tmp_path / "frames")
    bench = EgoSchema(egoschema, None, frame_cache=cache)
    item = bench.items[1]
    three, five = bench.indices(item, 3), bench.indices(item, 5)
    bench.frames(item, three, BUDGET)
    assert cache.decoded == 3
    frames = bench.frames(item, five, BUDGET)  # F=5 after F=3: only the frames F=3 did not sample
    new = len(set(five) - set(three))
    assert cache.decoded == 3 + new and cache.hits == len(set(five) & set(three))
    fresh = EgoSchema(egoschema, None).frames(item, five, BUDGET)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frames, fresh))


def test_the_key_holds_the_video_file_and_the_size_budget(egoschema, tmp_path, decoder_calls):
    cache = FrameCache(tmp_path / "frames")
    bench = EgoSchema(egoschema, None, frame_cache=cache)
    item = bench.items[0]
    idx = bench.indices(item, 3)
    bench.frames(item, idx, BUDGET)
    assert cache.decoded == 3

    full = bench.frames(item, idx, None)  # another max_pixels: another entry, decoded at the video's size
    assert cache.decoded == 6 and full[0].size == SIZE

    # the video is replaced (same name, other content and length): decoded again, new frames returned
    path = item.path
    write_video(path, _clip(2, 20))
    reloaded = EgoSchema(egoschema, None, frame_cache=cache)
    item = reloaded.items[0]
    got = reloaded.frames(item, idx, BUDGET)
    assert cache.decoded == 9 and reloaded.decoded == 3
    fresh = EgoSchema(egoschema, None).frames(item, idx, BUDGET)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, fresh))

    # same size, only touched: the modification time is part of the identity
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    EgoSchema(egoschema, None, frame_cache=cache).frames(item, idx, BUDGET)
    assert cache.decoded == 12


def test_an_unreadable_entry_is_decoded_again(egoschema, tmp_path, decoder_calls):
    cache = FrameCache(tmp_path / "frames")
    bench = EgoSchema(egoschema, None, frame_cache=cache)
    item = bench.items[0]
    idx = bench.indices(item, 3)
    good = _pixels(bench.frames(item, idx, BUDGET))
    entry = next(iter(sorted((tmp_path / "frames").glob(f"*/{BUDGET}/{idx[1]}.png"))))
    entry.write_bytes(entry.read_bytes()[:40])  # cut short, e.g. by a crash before it reached the disk
    again = _pixels(EgoSchema(egoschema, None, frame_cache=cache).frames(item, idx, BUDGET))
    assert cache.decoded == 4 and cache.hits == 2
    assert all(np.array_equal(a, b) for a, b in zip(again, good))
    assert not list((tmp_path / "frames").rglob(".*.tmp-*"))  # no temporary file left behind


def test_synthetic_frames_are_rendered_not_cached(tmp_path):
    cache = FrameCache(tmp_path / "frames")
    bench = Synthetic(0, 1, None, frame_cache=cache)
    item = bench.items[0]
    bench.frames(item, bench.indices(item, 3))
    assert bench.decoded == 3 and cache.counters() == {"decoded": 0, "hits": 0, "stored": 0}
    assert not (tmp_path / "frames").exists()


def _custom(**kw) -> EvalConfig:
    """`fast_config` on EgoSchema with the suite's own protocol where the config has protocols."""
    extra = {"protocol": "custom"} if "protocol" in EvalConfig.field_names() else {}
    return fast_config(benchmark="egoschema", limit=None, frames=(3, 5), max_pixels=BUDGET, infills="self",
                       **extra, **kw)


def test_tasks_and_checkpoints_share_the_cache(egoschema, tmp_path, tmp_path_factory, decoder_calls, capsys,
                                               one_thread):
    """Through the runner: vcot decodes each sampled frame once, as the plan says; shuffle on the same
    checkpoint, vcot on another checkpoint and vcot again on the first decode nothing and score the same
    frames the same way."""
    a = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "a")
    b = shutil.copytree(tiny_model("llava", tmp_path_factory), tmp_path / "b")
    cfg, cache = _custom(data=str(egoschema)), tmp_path / "cache"
    bench = EgoSchema(egoschema, None)
    sampled = sum(len(_sample(bench, it)) for it in bench.items)  # 3 videos x (3 + 5 frames, some shared)
    decoder_calls.update(frames=0, probes=0)
    evaluate([checkpoint_ref(a)], ["vcot", "shuffle"], cfg, cache)
    plan = capsys.readouterr().err
    # vcot: 3 items x (2 F x 5 conditions + blind once); shuffle: 3 items x 2 F x 5 conditions
    assert "[plan] a vcot: 3 items, 33 prompts" in plan and f", {sampled} frame decodes" in plan
    assert "[plan] a shuffle: 3 items, 30 prompts" in plan and plan.count(", 0 frame decodes") == 1
    assert decoder_calls["frames"] == sampled  # each sampled frame decoded exactly once, by vcot
    assert len(list((cache / "frames").glob(f"*/{BUDGET}/*.png"))) == sampled
    assert len(read_rows(a / "eval/shuffle/predictions.jsonl")) == 3 * 2 * 5  # own and partner frames: cached
    first = read_rows(a / "eval/vcot/predictions.jsonl")

    evaluate([checkpoint_ref(b)], ["vcot"], cfg, cache)
    shutil.rmtree(a / "eval/vcot")
    evaluate([checkpoint_ref(a)], ["vcot"], cfg, cache)
    assert decoder_calls["frames"] == sampled
    assert decoder_calls["probes"] == 2 * 3  # each video's frame count and rate read once, then cached
    again = read_rows(a / "eval/vcot/predictions.jsonl")
    assert [r["logliks"] for r in again] == [r["logliks"] for r in first]  # the same pixels, the same scores
