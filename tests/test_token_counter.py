"""Visual and text tokens from the processor's token arithmetic equal the full processor's counts."""

from __future__ import annotations

import json

import pytest
import webdataset as wds
import yaml
from PIL import Image

from data_recipes.build import build, read_manifest, shard_urls
from data_recipes.clips import as_video
from data_recipes.processors import load_processor
from data_recipes.tokens import CHECKED_SAMPLES, TokenCounter, TokenCountError
from data_recipes.video_processors import FAMILY_VIDEO_PROCESSOR
from fixtures_real_data import mp4
from train.chat import encode
from train.families import FAMILIES

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from train.toy.tiny import build_tiny

    root = tmp_path_factory.mktemp("tok")
    return {f: build_tiny(f, root / f) for f in FAMILIES}


def samples(n: int):
    sizes = [(64, 64), (96, 48), (40, 120), (64, 64), (128, 96)]
    for i in range(n):
        k = 1 + i % 3
        content = [{"type": "image"} for _ in range(k)] + [{"type": "text", "text": f"what is in picture {i} ?"}]
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": "a red circle " * (1 + i % 4)}]}]
        yield messages, [Image.new("RGB", sizes[(i + j) % len(sizes)], (10 * j, 80, 200)) for j in range(k)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_arithmetic_counts_equal_the_processor(family, tiny_dirs):
    counter, reference = TokenCounter(tiny_dirs[family]), TokenCounter(tiny_dirs[family])
    reference.mode = "processor"
    arithmetic_agrees = True  # the library's arithmetic gave the processor's image tokens on the checked samples
    for i, (messages, images) in enumerate(samples(3 * CHECKED_SAMPLES)):
        expected = reference.count(messages, images)
        assert counter.count(messages, images) == expected
        if i < CHECKED_SAMPLES:
            sizes = [[im.height, im.width] for im in images]
            arithmetic = reference.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
            arithmetic_agrees &= sum(arithmetic) == expected["visual_tokens"]
    # The counter switches to arithmetic exactly when that arithmetic agreed. LLaVA, LLaVA-NeXT(-Video) and
    # Qwen2(.5)-VL always do. InternVL's counted its <img></img> as image tokens up to transformers 5.24 and
    # agrees from 5.25; OneVision's disagrees with its own processor on non-square images. Those two follow
    # the installed library.
    assert arithmetic_agrees or family in ("internvl", "llava_onevision"), family
    assert counter.mode == ("arithmetic" if arithmetic_agrees else "processor"), family


# --- the native video path (`video_input: native`) -------------------------------------------------------
VIDEO_FAMILIES = sorted(FAMILY_VIDEO_PROCESSOR)
FRAMES = 4


def video_samples(n: int):
    """Video samples as a build writes them: FRAMES frames per clip, one clip or two (with `clips`)."""
    sizes = [(64, 64), (96, 48), (40, 120), (128, 96), (50, 50)]
    for i in range(n):
        n_clips = 1 + (i % 3 == 2)
        content = [{"type": "text", "text": f"clip {i}:"}] + [{"type": "image"}] * (FRAMES * n_clips)
        content.append({"type": "text", "text": "what changes between the frames?"})
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": "the disc moves " * (1 + i % 3)}]}]
        frames = [Image.new("RGB", sizes[i % len(sizes)], (30 * j % 256, 90, 160)) for j in range(FRAMES * n_clips)]
        yield messages, frames, [FRAMES] * n_clips


def encoded_counts(processor, messages, frames, clips) -> dict:
    """What the trainer's encoding reports for the sample on the native path."""
    msgs, groups = as_video(messages, frames, clips)
    enc = encode(processor, [msgs], [[]], videos=[groups])
    return {"visual_tokens": enc.visual_tokens[0], "text_tokens": enc.text_tokens[0]}


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_native_counts_equal_encode(family, tiny_dirs):
    native, images = TokenCounter(tiny_dirs[family], "native"), TokenCounter(tiny_dirs[family], "images")
    for messages, frames, clips in video_samples(3 * CHECKED_SAMPLES):
        got = native.count(messages, frames, "video", clips)
        assert got == encoded_counts(native.processor, messages, frames, clips), family
        on_images = images.count(messages, frames, "video", clips)
        assert on_images != got, family
        if family != "internvl":  # InternVL writes a clip's frames as images (same tokens, plus Frame labels)
            assert on_images["visual_tokens"] != got["visual_tokens"], family
        # the image path of the native counter is untouched: image samples count as on the images path
        assert native.count(messages, frames) == images.count(messages, frames)
    # The family's clip arithmetic agrees with its processor and takes over after the checked samples.
    assert native.video_mode == "arithmetic", family


def test_native_needs_a_video_path(tiny_dirs):
    with pytest.raises(TokenCountError, match=r"no video processor.*video_input: images"):
        TokenCounter(tiny_dirs["llava"], "native")
    with pytest.raises(TokenCountError, match=r"video_input must be one of images, native"):
        TokenCounter(tiny_dirs["qwen2_vl"], "clips")


def _shard_samples(out):
    return list(wds.WebDataset(shard_urls(out), shardshuffle=False).decode("pil"))


def _frames(s) -> list:
    return [s[k] for k in sorted(k for k in s if k.endswith(".jpg"))]


def _encode_build(processor, out, video_input: str) -> dict:
    """Visual and text tokens of a build's samples, as `train.chat.encode` reports them on the path."""
    total = {"visual_tokens": 0, "text_tokens": 0}
    for s in _shard_samples(out):
        js, frames = s["json"], _frames(s)
        if video_input == "native":
            c = encoded_counts(processor, js["messages"], frames, js.get("clips"))
        else:
            enc = encode(processor, [js["messages"]], [frames])
            c = {"visual_tokens": enc.visual_tokens[0], "text_tokens": enc.text_tokens[0]}
        for k in total:
            total[k] += c[k]
    return total


def _recipe(tmp, name, **fields):
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(fields))
    return p


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next_video"])
def test_native_build_counts_what_training_encodes(family, tiny_dirs, tmp_path):
    model = str(tiny_dirs[family])
    common = dict(kind="video", sources=[{"type": "synthetic_video"}], samples=6, frames=FRAMES, model=model)
    native = build(str(_recipe(tmp_path, "nat", video_input="native", **common)), tmp_path / "nat")
    plain = build(str(_recipe(tmp_path, "img", **common)), tmp_path / "img")
    assert native["video_input"] == "native" and plain["video_input"] == "images"
    processor = load_processor(model)
    assert {k: native["counts"][k] for k in ("visual_tokens", "text_tokens")} == _encode_build(
        processor, tmp_path / "nat", "native")
    assert {k: plain["counts"][k] for k in ("visual_tokens", "text_tokens")} == _encode_build(
        processor, tmp_path / "img", "images")
    assert native["counts"]["visual_tokens"] != plain["counts"]["visual_tokens"]


def test_native_build_of_real_videos_keeps_each_clip(tiny_dirs, tmp_path):
    """Two videos whose tags stand side by side stay two clips (the sample's `clips`), in the count too."""
    media = tmp_path / "videos"
    for i in range(4):
        mp4(media / f"{i}.mp4", i, n_frames=8, size=(48, 32))
    recs = [{"id": f"one{i}", "video": f"{i}.mp4",
             "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                               {"from": "gpt", "value": f"The colour shifts {i}."}]} for i in range(3)]
    recs.append({"id": "two", "videos": ["0.mp4", "3.mp4"],
                 "conversations": [{"from": "human", "value": "<video><video>\nAre these the same clip?"},
                                   {"from": "gpt", "value": "No."}]})
    (tmp_path / "ann.json").write_text(json.dumps(recs))
    model = str(tiny_dirs["qwen2_vl"])
    rec = _recipe(tmp_path, "real", kind="video", samples=4, frames=3, model=model, video_input="native",
                  sources=[{"type": "llava_video", "path": str(tmp_path / "ann.json"), "media_root": str(media)}])
    m = build(str(rec), tmp_path / "out")
    samples = {s["json"]["id"]: s for s in _shard_samples(tmp_path / "out")}
    assert samples["two"]["json"]["clips"] == [3, 3] and samples["one0"]["json"]["clips"] == [3]
    msgs, groups = as_video(samples["two"]["json"]["messages"], _frames(samples["two"]), [3, 3])
    assert [len(g) for g in groups] == [3, 3]
    assert m["counts"]["visual_tokens"] == _encode_build(load_processor(model), tmp_path / "out", "native")[
        "visual_tokens"]


def test_size_from_visual_tokens_uses_the_references_video_path(tiny_dirs, tmp_path):
    model = str(tiny_dirs["qwen2_vl"])
    video = dict(kind="video", sources=[{"type": "synthetic_video"}], samples=10, frames=FRAMES, model=model)
    ref_native = _recipe(tmp_path, "vnat", video_input="native", **video)
    ref_images = _recipe(tmp_path, "vimg", **video)
    img = dict(kind="image", sources=[{"type": "synthetic_image"}], model=model)
    to_native = build(str(_recipe(tmp_path, "m1", size_from={"recipe": str(ref_native), "unit": "visual_tokens"}, **img)),
                      tmp_path / "m1")
    to_images = build(str(_recipe(tmp_path, "m2", size_from={"recipe": str(ref_images), "unit": "visual_tokens"}, **img)),
                      tmp_path / "m2")
    native_ref = read_manifest(tmp_path / "vnat")
    assert native_ref["video_input"] == "native"
    assert to_native["match"]["target"] == native_ref["counts"]["visual_tokens"]
    assert to_native["match"]["target"] == _encode_build(load_processor(model), tmp_path / "vnat", "native")[
        "visual_tokens"]
    assert to_images["match"]["target"] == read_manifest(tmp_path / "vimg")["counts"]["visual_tokens"]
    assert to_native["match"]["target"] < to_images["match"]["target"]  # Qwen merges frame pairs on native
    assert to_native["counts"]["samples"] < to_images["counts"]["samples"]


def test_published_llava_next_video_settings_cost_what_the_paper_study_plans_for(tmp_path):
    """The tiny models' 64-px processors hide what a 7B LLaVA-NeXT-Video frame costs. At the published settings
    (CLIP ViT-L/14 at 336 px, the AnyRes grid pinpoints, the `default` strategy that drops CLS, 2x2 pooling of
    video frames) a 336 x 336 frame is 1,176 tokens as an image and 144 in a clip: 8 frames as images (9,408)
    are over the model's context (4,096; 8,192 with the released checkpoint's linear RoPE factor 2), 8 in a
    clip (1,152) fit. So `studies/paper_7b.yaml`'s video arm takes the video path, and a run fed such frames as
    images stops instead of dropping every sample for ever (test_data_stream, test_train)."""
    from fixtures_7b import _PINPOINTS, write_config_dir
    from data_recipes.processors import make_processor, save_processor, video_processor_from_image
    from train.families import context_length, get_family
    from transformers import AutoConfig, LlavaNextImageProcessor

    out = write_config_dir("llava_next_video", tmp_path / "LLaVA-NeXT-Video-7B-hf")
    tiny = load_processor(out)
    clip = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    image = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=_PINPOINTS, do_center_crop=True, **clip)
    family = get_family("llava_next_video")
    save_processor(make_processor(family.processor_class, image, tiny.tokenizer,
                                  video_processor_from_image(image, "llava_next_video"),
                                  chat_template=tiny.chat_template, patch_size=14,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1), out)
    content = [{"type": "image"}] * 8 + [{"type": "text", "text": "what happens?"}]
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text",
                                                                                       "text": "it moves"}]}]
    frames = [Image.new("RGB", (336, 336), (20 * j, 90, 160)) for j in range(8)]
    as_images = TokenCounter(out, "images").count(messages, frames, "video", [8])
    as_clip = TokenCounter(out, "native").count(messages, frames, "video", [8])
    assert as_images["visual_tokens"] == 8 * 1176 and as_clip["visual_tokens"] == 8 * 144
    context = context_length(AutoConfig.from_pretrained(out))
    assert context == 4096
    assert as_images["visual_tokens"] > 2 * context and as_clip["visual_tokens"] + as_clip["text_tokens"] < context

