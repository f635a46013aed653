"""Visual tokens have one definition (`data_recipes.tokens.split_tokens`), applied by the build's
`TokenCounter` (the manifest's counts, by arithmetic once it agreed with the processor) and by the
trainer's `train.chat.encode` (via `train.data.encode_samples`: accounting, budget prescan, dry-run plan).
For every tiny family and video path, both give the same count of the same samples."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from data_recipes.build import build, shard_urls
from data_recipes.tokens import CHECKED_SAMPLES, TokenCounter, split_tokens
from data_recipes.video_processors import FAMILY_VIDEO_PROCESSOR
from train.chat import encode
from train.data import encode_samples, resolve_frames
from train.families import FAMILIES, detect_family

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from train.toy.tiny import build_tiny

    root = tmp_path_factory.mktemp("contract")
    return {f: build_tiny(f, root / f) for f in FAMILIES}


def trainer_processor(model_dir):
    return detect_family(model_dir).load_processor(model_dir)


def test_split_tokens_counts_placeholders_of_numpy_and_torch_rows():
    proc = SimpleNamespace(image_token_id=5, video_token_id=7)
    ids = [[5, 5, 1, 7, 7, 7, 0], [5, 1, 1, 1, 0, 0, 0]]
    mask = [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]
    for to in (np.array, torch.tensor):
        images = split_tokens(to(ids), to(mask), proc)
        assert images.visual.tolist() == [2, 1] and images.text.tolist() == [4, 3] and images.video is None
        clips = split_tokens(to(ids), to(mask), proc, clips=True)
        assert clips.visual.tolist() == [5, 1] and clips.text.tolist() == [1, 3] and clips.video.tolist() == [3, 0]
        row = split_tokens(to(ids[0]), to(mask[0]), proc, clips=True)
        assert (int(row.visual), int(row.text), int(row.video)) == (5, 1, 3)
    no_video_token = SimpleNamespace(image_token_id=5)  # clips written as image tokens (InternVL)
    assert split_tokens(np.array(ids), np.array(mask), no_video_token, clips=True).video is None


def samples(n: int):
    """Image samples of 1-3 images of assorted sizes and aspect ratios."""
    sizes = [(64, 64), (96, 48), (40, 120), (128, 96), (50, 50)]
    for i in range(n):
        k = 1 + i % 3
        content = [{"type": "text", "text": f"sample {i}:"}] + [{"type": "image"}] * k + [
            {"type": "text", "text": "what differs?"}]
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": "the colour " * (1 + i % 2)}]}]
        yield messages, [Image.new("RGB", sizes[(i + j) % len(sizes)], (40 * j, 90, 160)) for j in range(k)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_counter_counts_what_encode_counts(family, tiny_dirs):
    counter, processor = TokenCounter(tiny_dirs[family]), trainer_processor(tiny_dirs[family])
    for messages, images in samples(3 * CHECKED_SAMPLES):  # the counter's checked samples, then its arithmetic
        enc = encode(processor, [messages], [images])
        assert counter.count(messages, images) == {"visual_tokens": enc.visual_tokens[0],
                                                   "text_tokens": enc.text_tokens[0]}, family


def _recipe(tmp, name, **fields):
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(fields))
    return str(p)


def _raw_samples(out) -> list[dict]:
    return list(wds.tarfile_to_samples()(iter([{"url": u} for u in shard_urls(out)])))


def _trainer_counts(processor, out, manifest, chunk: int = 4) -> dict:
    """Visual and text tokens of a build's samples as the trainer's loader encodes them, in batches."""
    video_input, max_pixels = resolve_frames("auto", -1, manifest)
    raw, total = _raw_samples(out), {"visual_tokens": 0, "text_tokens": 0}
    for i in range(0, len(raw), chunk):
        counts = encode_samples(processor, raw[i:i + chunk], video_input, max_pixels)[1]
        for k in total:
            total[k] += sum(counts[k])
    return total


PATHS = [(f, kind, "images") for f in sorted(FAMILIES) for kind in ("image", "video")] + [
    (f, "video", "native") for f in sorted(FAMILY_VIDEO_PROCESSOR)]


@pytest.mark.parametrize("family, kind, video_input", PATHS)
def test_manifest_counts_what_training_consumes(family, kind, video_input, tiny_dirs, tmp_path):
    model = str(tiny_dirs[family])
    m = build(_recipe(tmp_path, "r", kind=kind, sources=[{"type": f"synthetic_{kind}"}], samples=2 * CHECKED_SAMPLES,
                      frames=3, model=model, video_input=video_input), tmp_path / "out")
    assert m["tokens_model"] == model and m["video_input"] == video_input
    got = _trainer_counts(trainer_processor(model), tmp_path / "out", m)
    assert got == {k: m["counts"][k] for k in got}, (family, kind, video_input)
