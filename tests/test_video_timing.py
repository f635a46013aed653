"""Sampled frames keep their timing: Qwen2.5-VL spaces its temporal position ids by real seconds.

A clip of F frames sampled across a video of n frames at r frames/s holds F * r / n frames per second.
transformers assumes 24 when it is not told, which for sparse samples of a long video squeezes every
temporal patch onto (nearly) the same position. Builds record the rate (`clip_fps`), the loader and
the evaluation pass it on as `video_metadata`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds
import yaml

from data_recipes.build import build, shard_urls
from data_recipes.video import write_video
from evalsuite.benchmarks.video_qa import EgoSchema
from fixtures_real_data import llava_video_178k
from train.chat import processor_inputs
from train.data import encode_samples
from train.toy.tiny import build_tiny

FRAMES = 4
FIXTURE_FPS, FIXTURE_FRAMES = 8, 12  # what fixtures_real_data.mp4 writes (write_video's default rate)


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    from data_recipes.processors import load_processor

    return load_processor(build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("q25") / "m"))


def _frames(n):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _prompt(proc):
    return proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}],
                                    tokenize=False)


def test_qwen2_5_seconds_per_temporal_patch_follow_the_sampled_rate(qwen25):
    text = _prompt(qwen25)
    told = processor_inputs(qwen25, [text], [[]], [[_frames(FRAMES)]], [[0.25]], return_tensors="pt")
    assert told["second_per_grid_ts"].tolist() == pytest.approx([2 / 0.25])  # temporal_patch_size / fps
    untold = processor_inputs(qwen25, [text], [[]], [[_frames(FRAMES)]], return_tensors="pt")
    assert untold["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])  # transformers' default
    assert torch_equal(told["pixel_values_videos"], untold["pixel_values_videos"])


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_real_video_samples_record_their_rate_and_the_loader_uses_it(tmp_path, qwen25):
    fx = llava_video_178k(tmp_path / "data")
    recipe = tmp_path / "v.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "video", "samples": fx.good, "frames": FRAMES, "image_size": 32, "max_bad_fraction": 0.5,
        "sources": [{"type": "llava_video", "path": str(fx.annotations), "media_root": str(fx.media_root)}]}))
    build(str(recipe), tmp_path / "out")
    raw = list(wds.WebDataset(shard_urls(tmp_path / "out"), shardshuffle=False))
    expected = FRAMES * FIXTURE_FPS / FIXTURE_FRAMES
    for s in raw:
        assert json.loads(s["json"])["clip_fps"] == [pytest.approx(expected, abs=1e-6)]
    enc, _ = encode_samples(qwen25, raw[:2], "native")
    assert enc.inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / expected] * 2, rel=1e-5)


def test_egoschema_clips_know_their_rate(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(1)
    write_video(videos / "q1.mp4", [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(40)], fps=10)
    (tmp_path / "questions.json").write_text(json.dumps([{"q_uid": "q1", "question": "what?", **{
        f"option {i}": f"o{i}" for i in range(5)}}]))
    (tmp_path / "subset_answers.json").write_text(json.dumps({"q1": 2}))
    bench = EgoSchema(tmp_path, None)
    assert bench.clip_fps(bench.items[0], 5) == pytest.approx(5 * 10 / 40)
