"""The families' video processors without torchvision, and the processors that carry them.

`data_recipes.video_processors.TorchVideoProcessor` must give the tensors transformers' own video
processors give. Those need torchvision, which this environment cannot import, so their outputs were
recorded where it can (`tests/scripts/video_references.py`, same transformers version) into
`tests/fixtures/video_references.json`: shapes, grids, sums and the values at fixed positions.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_recipes.processors import load_processor, save_processor
from data_recipes.video_processors import (TorchVideoProcessor, VideoProcessorError, video_processor_for,
                                           video_tokens)
from train.toy.tiny import build_tiny

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import video_references as refs  # noqa: E402

REFERENCES = json.loads(refs.FIXTURE.read_text())
VIDEO_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava_next_video", "llava_onevision", "internvl"]


@pytest.mark.parametrize("name", list(REFERENCES["cases"]))
def test_same_tensors_as_transformers_video_processors(name):
    ref = REFERENCES["cases"][name]
    out = TorchVideoProcessor(ref["class"], **ref["settings"])([refs.frames(*ref["frames"])], return_tensors="pt")
    if "video_grid_thw" in ref:
        assert out["video_grid_thw"].tolist() == ref["video_grid_thw"]
    else:
        assert "video_grid_thw" not in out
    got, want = out["pixel_values_videos"].double().numpy(), ref["pixel_values_videos"]
    assert list(got.shape) == want["shape"]
    flat = got.reshape(-1)
    np.testing.assert_allclose(flat[refs.positions(flat.size)], want["values"], rtol=0, atol=2e-6)
    assert math.isclose(flat.sum(), want["sum"], rel_tol=1e-6, abs_tol=1e-3)
    assert math.isclose(np.abs(flat).sum(), want["abs_sum"], rel_tol=1e-6)


def test_references_cover_every_family_class_and_the_hard_cases():
    classes = {c["class"] for c in REFERENCES["cases"].values()}
    assert classes == {"Qwen2VLVideoProcessor", "LlavaNextVideoVideoProcessor", "LlavaOnevisionVideoProcessor",
                       "InternVLVideoProcessor"}
    frames = [c["frames"][1] for c in REFERENCES["cases"].values() if c["class"] == "Qwen2VLVideoProcessor"]
    assert any(t % 2 for t in frames)  # an odd clip: Qwen repeats the last frame to fill its temporal patch


def test_unsupported_settings_are_refused_not_approximated():
    with pytest.raises(VideoProcessorError, match="resample=1"):
        TorchVideoProcessor("LlavaNextVideoVideoProcessor", resample=1)  # LANCZOS
    with pytest.raises(VideoProcessorError, match="no torchvision-free implementation"):
        TorchVideoProcessor("Qwen3VLVideoProcessor")
    with pytest.raises(VideoProcessorError, match="no video path"):
        video_processor_for({}, "llava", prefer_torchvision=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_video")
    return {f: build_tiny(f, root / f) for f in VIDEO_FAMILIES + ["llava"]}


def _frames(n, h=64, w=64):
    return refs.frames(7, n, h, w)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_processor_expands_a_clip_as_the_family_counts_it(tiny, family):
    """The placeholder tokens a clip expands into equal the family's own per-frame arithmetic."""
    proc = load_processor(tiny[family])
    assert isinstance(proc.video_processor, TorchVideoProcessor)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False)
    for n, (h, w) in ((4, (64, 64)), (3, (48, 80))):
        out = proc(text=[text], videos=[_frames(n, h, w)], return_tensors="pt")
        ids = out["input_ids"][0]
        vid = getattr(proc, "video_token_id", None)
        placeholders = int((ids == (vid if family != "internvl" else proc.image_token_id)).sum())
        assert placeholders == video_tokens(family, proc, n, h, w) > 0
        if family == "internvl":  # frames labelled in the prompt, fed as images
            assert proc.tokenizer.decode(ids).count("Frame") == n and out["pixel_values"].shape[0] == n
        else:
            assert "pixel_values_videos" in out and "pixel_values" not in out


def test_video_processor_comes_from_either_saved_layout(tiny, tmp_path):
    """transformers 5 nests the video processor in processor_config.json; older checkpoints keep
    video_preprocessor_config.json; a checkpoint with neither gets the image processor's settings."""
    src = tiny["qwen2_vl"]
    # what transformers 5.24's save_pretrained writes for a Qwen2-VL processor (keys as it writes them)
    nested = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "do_sample_frames": False, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
              "max_frames": 768, "max_video_tokens": 128000, "merge_size": 2, "min_frames": 4, "patch_size": 8,
              "resample": 3, "rescale_factor": 1 / 255, "return_metadata": False,
              "size": {"longest_edge": 8192, "shortest_edge": 1024}, "temporal_patch_size": 2,
              "video_processor_type": "Qwen2VLVideoProcessor"}
    new = tmp_path / "t5"
    shutil.copytree(src, new)
    (new / "video_preprocessor_config.json").unlink()
    cfg = json.loads((new / "processor_config.json").read_text())
    (new / "processor_config.json").write_text(json.dumps({**cfg, "video_processor": nested}))
    assert load_processor(new).video_processor.size == {"longest_edge": 8192, "shortest_edge": 1024}

    old = tmp_path / "old"
    shutil.copytree(src, old)
    saved = json.loads((old / "video_preprocessor_config.json").read_text())
    (old / "video_preprocessor_config.json").write_text(json.dumps({**saved, "size": {"longest_edge": 2048,
                                                                                       "shortest_edge": 1024}}))
    assert load_processor(old).video_processor.size["longest_edge"] == 2048

    none = tmp_path / "none"
    shutil.copytree(src, none)
    (none / "video_preprocessor_config.json").unlink()
    vp = load_processor(none).video_processor
    assert (vp.patch_size, vp.merge_size, vp.temporal_patch_size) == (8, 2, 2)  # the image processor's
    assert vp.size == {"longest_edge": 64 * 64, "shortest_edge": 64 * 64}

    (new / "processor_config.json").write_text(json.dumps({**cfg, "video_processor": {
        **nested, "video_processor_type": "NoSuchVideoProcessor"}}))
    with pytest.raises(ValueError, match="processor_config.json|video processor"):
        load_processor(new)


def test_save_and_load_keep_the_video_part(tiny, tmp_path):
    proc = load_processor(tiny["llava_next_video"])
    save_processor(proc, tmp_path)
    again = load_processor(tmp_path)
    assert again.video_processor.to_dict() == proc.video_processor.to_dict()


def test_family_without_video_path_has_none(tiny):
    assert getattr(load_processor(tiny["llava"]), "video_processor", None) is None


def test_native_batch_trains_through_the_video_path(tiny):
    """A video sample on the native path: clips in, `pixel_values_videos` out, a LoRA step runs."""
    from data_recipes.synthetic import video_sample
    from train.chat import IGNORE_INDEX
    from train.data import encode_samples
    from train.families import load_model

    model, proc, _ = load_model(tiny["qwen2_vl"])
    raw = []
    for i in range(2):
        js, ims = video_sample(0, i, "train", frames=4, image_size=64)
        raw.append(_as_shard_sample(f"s{i}", js, ims))
    enc, counts = encode_samples(proc, raw, "native")
    assert "pixel_values_videos" in enc.inputs and "pixel_values" not in enc.inputs
    assert counts["visual_tokens"] == counts["video_tokens"] == [video_tokens("qwen2_vl", proc, 4, 64, 64)] * 2
    images_enc, images_counts = encode_samples(proc, raw, "images")
    assert "pixel_values_videos" not in images_enc.inputs and "pixel_values" in images_enc.inputs
    assert images_counts["visual_tokens"] != counts["visual_tokens"]
    labels = enc.inputs["labels"]
    assert (labels != IGNORE_INDEX).any()
    loss = model(**enc.inputs).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.visual.merger.mlp[0].weight.grad.abs().sum() > 0


def _as_shard_sample(key, js, images):
    import io

    members = {"__key__": key, "json": json.dumps(js).encode()}
    for k, im in enumerate(images):
        buf = io.BytesIO()
        im.save(buf, format="PNG")  # lossless: the test compares token counts, not pixels
        members[f"{k:03d}.jpg"] = buf.getvalue()
    return members


def test_frames_fed_as_images_take_the_family_frame_options(tiny, tmp_path):
    """InternVL tiles a large image into crops (+ a thumbnail); a clip's frames go in one tile each."""
    from data_recipes.synthetic import image_sample, video_sample
    from train.data import encode_samples

    d = tmp_path / "internvl_tiling"
    shutil.copytree(tiny["internvl"], d)
    cfg = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps({**cfg, "crop_to_patches": True, "max_patches": 12}))
    proc = load_processor(d)
    js, ims = video_sample(0, 0, "train", frames=3, image_size=128)  # 128 px frames: a 2x2 grid of 64 px tiles
    enc, _ = encode_samples(proc, [_as_shard_sample("v", js, ims)], "images")
    assert enc.inputs["pixel_values"].shape[0] == 3  # one tile per frame
    js, im = image_sample(0, 0, "train", image_size=128)
    enc, _ = encode_samples(proc, [_as_shard_sample("i", js, im if isinstance(im, list) else [im])], "images")
    assert enc.inputs["pixel_values"].shape[0] == 5  # an image keeps the model's tiling: 4 crops + thumbnail
