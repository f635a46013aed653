"""`--video_input native` and `--max_pixels` in the evaluation: the vCoT `base` condition through the family's
video path, caption/vcot still as images, what is recorded, auto from run.json, and the resize rule on frames."""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import evalsuite.generation
import evalsuite.scoring
from data_recipes.clips import as_video
from evalsuite import prompts
from evalsuite.benchmarks.video_qa import EgoSchema, Synthetic
from evalsuite.checkpoints import checkpoint_ref
from evalsuite.cli import build_parser, main
from evalsuite.config import ConfigError, EvalConfig, FrameInputs, field_help, resolve_frame_inputs
from evalsuite.outputs import read_rows, settings_hash
from evalsuite.resources import Resources, Subject
from evalsuite.runner import evaluate
from evalsuite.scoring import score_options
from evalsuite.tasks.shuffle import ShuffleTask
from evalsuite.tasks.vcot import VCoTTask
from helpers import fast_config, tiny_model
from train.chat import IGNORE_INDEX, encode
from train.families import get_family, load_model

VIDEO_FAMILIES = ["qwen2_vl", "llava_next_video"]
NATIVE = {"base": "native", "caption": "images", "vcot": "images", "blind": "none", "text_only": "none",
          "reversed": "native"}
IMAGES = {c: "none" if path == "none" else "images" for c, path in NATIVE.items()}  # --video_input images
FAST = ["--limit", "1", "--frames", "2", "--infills", "oracle", "--n-boot", "50", "--no-progress", "--no_tracking"]


def _checkpoint(family, tmp_path, tmp_path_factory, run: dict | None = None):
    """The tiny model dir itself; with `run`, a run.json beside it (a full finetune as the trainer leaves it)."""
    ckpt = shutil.copytree(tiny_model(family, tmp_path_factory), tmp_path / family)
    if run is not None:
        (ckpt / "run.json").write_text(json.dumps({"family": family, "recipe": "video_demo"} | run))
    return ckpt


@pytest.fixture
def forward_calls(monkeypatch):
    """Records, for every forward of a model class, which visual inputs it got and which placeholders its ids hold."""
    calls = []

    def spy_on(family: str, processor):
        cls = get_family(family).model_cls()
        real = cls.forward
        image_id, video_id = processor.image_token_id, processor.video_token_id

        @functools.wraps(real)
        def spy(self, *args, **kwargs):
            ids = kwargs.get("input_ids")
            calls.append({"pixel_values": kwargs.get("pixel_values") is not None,
                          "pixel_values_videos": kwargs.get("pixel_values_videos") is not None,
                          "image_tokens": int((ids == image_id).sum()) if ids is not None else 0,
                          "video_tokens": int((ids == video_id).sum()) if ids is not None else 0})
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)

    return calls, spy_on


@torch.no_grad()
def by_hand(model, processor, turn: dict, clips, options) -> list[float]:
    """Each option from scratch through the trainer's encode (videos=...): the sum of the labelled log-probs."""
    out = []
    for option in options:
        enc = encode(processor, [[turn, prompts.answer_turn(option)]], [[]], videos=[clips])
        inputs = dict(enc.inputs)
        labels = inputs.pop("labels")[0]
        logp = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
        pos = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
        assert len(pos) > 0
        out.append(float(logp[pos, labels[1:][pos]].sum()))
    return out


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_native_base_goes_through_the_video_path(family, tmp_path, tmp_path_factory, forward_calls,
                                                 one_thread):
    calls, spy_on = forward_calls
    ckpt = _checkpoint(family, tmp_path, tmp_path_factory)
    model, processor, _ = load_model(ckpt)
    model.eval()
    spy_on(family, processor)
    cfg = fast_config(limit=1, frames=(2, 4), infills="oracle", video_input="native")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")

    metrics = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert metrics["settings"]["video_input"] == NATIVE and metrics["settings"]["max_pixels"] is None
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert len(rows) == 2 * 6 and all(r["video_input"] == NATIVE[r["condition"]] for r in rows)

    # the prompts' forwards (the loglik prefix passes; option continuations carry no pixels)
    prefixes = [c for c in calls if c["pixel_values"] or c["pixel_values_videos"]]
    video = [c for c in prefixes if c["pixel_values_videos"]]
    assert len(video) == 4  # one base and one reversed prompt per F
    for c in video:  # the base and reversed prompts: one clip, no image
        assert not c["pixel_values"] and c["video_tokens"] > 0 and c["image_tokens"] == 0
    images = [c for c in prefixes if c["pixel_values"]]
    assert len(images) == 4  # caption and vcot per F, as images
    assert all(not c["pixel_values_videos"] and c["video_tokens"] == 0 and c["image_tokens"] > 0 for c in images)

    # the base and reversed scores are the trainer's encoding of the same clip (reversed: its frames last to
    # first, as its row's indices say), scored by hand
    item = Synthetic(cfg.seed, 1, None).items[0]
    clipped = [r for r in rows if r["condition"] in ("base", "reversed")]
    assert len(clipped) == 4
    for row in clipped:
        forward = Synthetic(cfg.seed, 1, None).indices(item, row["frames"])
        assert row["indices"] == (forward if row["condition"] == "base" else forward[::-1])
        frames = Synthetic(cfg.seed, 1, None).frames(item, row["indices"])
        content = prompts.user_content(row["condition"], row["frames"], item.question, item.options)
        (turn,), clips = as_video(prompts.conversation(content), frames)
        assert turn["content"][0] == {"type": "video"} and [len(c) for c in clips] == [row["frames"]]
        assert row["logliks"] == pytest.approx(by_hand(model, processor, turn, clips, item.options), abs=1e-4)
        as_images = score_options(model, processor, content, frames, item.options).logliks
        assert as_images != pytest.approx(row["logliks"], abs=1e-4)  # the path changed what the model saw


def test_native_generate_scoring_feeds_the_clip(tmp_path, tmp_path_factory, monkeypatch, one_thread):
    ckpt = _checkpoint("qwen2_vl", tmp_path, tmp_path_factory)
    seen = []
    real = evalsuite.generation.processor_inputs

    def spy(processor, texts, images, videos, **kwargs):
        enc = real(processor, texts, images, videos, **kwargs)
        ids = enc["input_ids"]
        for i, text in enumerate(texts):
            seen.append({"images": len(images[i]), "clips": [len(c) for c in videos[i]] if videos else [],
                         "video_tokens": int((ids[i] == processor.video_token_id).sum()),
                         "image_tokens": int((ids[i] == processor.image_token_id).sum()),
                         "pixel_values": "pixel_values" in enc, "pixel_values_videos": "pixel_values_videos" in enc})
        return enc

    monkeypatch.setattr(evalsuite.generation, "processor_inputs", spy)
    cfg = fast_config(limit=1, frames=(4,), infills="oracle", scoring="generate", video_input="native")
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    rows = read_rows(ckpt / "eval/vcot/predictions.jsonl")
    assert {r["condition"]: r["video_input"] for r in rows} == NATIVE and all("output" in r for r in rows)
    assert len(seen) == 6  # the six answer prompts (oracle infills: nothing else is generated)
    clips = [s for s in seen if s["clips"]]  # base and reversed
    assert len(clips) == 2
    for clip in clips:
        assert clip["clips"] == [4] and clip["images"] == 0 and clip["pixel_values_videos"]
        assert clip["video_tokens"] > 0 and clip["image_tokens"] == 0
    others = [s for s in seen if not s["clips"]]
    assert sorted(s["images"] for s in others) == [0, 0, 4, 4]  # blind and text_only show no frame
    assert all(s["video_tokens"] == 0 and (s["image_tokens"] > 0) == (s["images"] > 0) for s in others)


def test_auto_follows_run_json_and_a_changed_setting_starts_over(tmp_path, tmp_path_factory, monkeypatch, capsys,
                                                                  one_thread):
    ckpt = _checkpoint("qwen2_vl", tmp_path, tmp_path_factory, run={"video_input": "native", "max_pixels": 2048})
    sizes = []
    real = evalsuite.scoring.processor_inputs

    def spy(processor, texts, images, videos, **kwargs):
        sizes.extend(im.size for x in images for im in x)
        sizes.extend(im.size for v in (videos or []) for clip in v for im in clip)
        return real(processor, texts, images, videos, **kwargs)

    monkeypatch.setattr(evalsuite.scoring, "processor_inputs", spy)
    assert main(["vcot", str(ckpt), *FAST]) == 0  # --video_input auto, no --max_pixels: the run.json's
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert m["settings"]["video_input"] == NATIVE and m["settings"]["max_pixels"] == 2048
    # synthetic frames are rendered at 64x64 = 4096 pixels; the rule shrinks them to 2048, square kept
    assert sizes and set(sizes) == {(45, 45)}
    first = m["settings"]

    assert main(["vcot", str(ckpt), *FAST, "--video_input", "images"]) == 0
    assert "settings changed" in capsys.readouterr().err  # not reused: evaluated again
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert m["settings"]["video_input"] == IMAGES and m["settings"]["max_pixels"] == 2048
    assert {r["video_input"] for r in read_rows(ckpt / "eval/vcot/predictions.jsonl")} == {"images", "none"}
    second = m["settings"]

    sizes.clear()
    assert main(["vcot", str(ckpt), *FAST, "--video_input", "images", "--max_pixels", "0"]) == 0
    assert "settings changed" in capsys.readouterr().err
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert m["settings"]["max_pixels"] is None and set(sizes) == {(64, 64)}
    assert len({settings_hash(s) for s in (first, second, m["settings"])}) == 3
    assert len(list((ckpt / "eval").glob("vcot.stale-*"))) == 2


def test_resolution_of_video_input_and_max_pixels():
    plain, native = {}, {"video_input": "native", "max_pixels": 200704}
    auto = EvalConfig()
    assert resolve_frame_inputs(auto, plain) == FrameInputs("images", None, "default")
    got = resolve_frame_inputs(auto, native, "ck/run.json")
    assert (got.video_input, got.max_pixels, got.origin) == ("native", 200704, "ck/run.json")
    assert resolve_frame_inputs(auto, {"video_input": None, "max_pixels": None}) == FrameInputs("images", None)
    forced = resolve_frame_inputs(EvalConfig(video_input="images", max_pixels=0), native)
    assert (forced.video_input, forced.max_pixels) == ("images", None)
    forced = resolve_frame_inputs(EvalConfig(video_input="native", max_pixels=4096), plain)
    assert (forced.video_input, forced.max_pixels, forced.origin) == ("native", 4096, "--video_input")
    with pytest.raises(ConfigError, match=r"ck/run.json: video_input 'clips' is not one of images, native"):
        resolve_frame_inputs(auto, {"video_input": "clips"}, "ck/run.json")
    with pytest.raises(ConfigError, match=r"ck/run.json: max_pixels must be an integer of at least 64"):
        resolve_frame_inputs(auto, {"max_pixels": 10}, "ck/run.json")
    with pytest.raises(ConfigError, match="Did you mean 'native'"):
        EvalConfig(video_input="nativ")
    for bad in (32, -1):
        with pytest.raises(ConfigError, match=r"--max_pixels must be 0 \(no limit\) or an integer of at least 64"):
            EvalConfig(max_pixels=bad)
    assert EvalConfig(max_pixels=0).max_pixels == 0 and EvalConfig(max_pixels=64).max_pixels == 64


def test_settings_change_with_video_input_and_max_pixels(tmp_path):
    cfg = fast_config(limit=2, infills="oracle")
    res = Resources(cfg, tmp_path)
    vcot, shuffle = VCoTTask(cfg, res), ShuffleTask(cfg, res)
    info = {"fingerprint": "x"}
    cases = [FrameInputs("images", None), FrameInputs("native", None), FrameInputs("images", 4096),
             FrameInputs("native", 4096)]
    assert len({settings_hash(vcot.settings(info, i)) for i in cases}) == 4
    assert vcot.settings(info, cases[1])["video_input"] == NATIVE
    assert vcot.settings(info) == vcot.settings(info, cases[0])  # no inputs: images, no limit
    # shuffle feeds images whatever is asked: video_input does not redo it, max_pixels does
    assert shuffle.settings(info, cases[0]) == shuffle.settings(info, cases[1])
    assert shuffle.settings(info, cases[0]) != shuffle.settings(info, cases[2])
    assert shuffle.settings(info, cases[1])["video_input"] == {c: "images" for c in ("vcot", "text", "visual", "words",
                                                                                     "order")}


def test_native_on_a_family_without_a_video_path_fails_before_any_item(tmp_path, tmp_path_factory, capsys):
    ckpt = _checkpoint("llava", tmp_path, tmp_path_factory)
    cfg = fast_config(infills="oracle", video_input="native")
    with pytest.raises(ConfigError, match=r"--video_input native, but llava is a llava model, which has no native "
                                          r"video path \(families with one: .*qwen2_vl.*\); evaluate it with "
                                          r"--video_input images"):
        evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    assert not (ckpt / "eval").exists()  # nothing ran, nothing was written
    assert main(["vcot", str(ckpt), *FAST, "--video_input", "native"]) == 2
    assert "has no native video path" in capsys.readouterr().err and not (ckpt / "eval").exists()
    # a run.json saying native on such a family names the file
    (ckpt / "run.json").write_text(json.dumps({"video_input": "native"}))
    with pytest.raises(ConfigError, match=r"run\.json says video_input native, but llava is a llava model"):
        evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(infills="oracle"), tmp_path / "cache")
    # the perturbation task keeps images: native asks nothing of it
    subject = Subject(checkpoint_ref(ckpt), cfg)
    ShuffleTask(cfg, Resources(cfg, tmp_path)).check(subject)


def _egoschema(tmp_path, size=(96, 48)):
    """A one-question EgoSchema directory whose video is not square."""
    from data_recipes.synthetic import eval_item
    from data_recipes.video import write_video

    root = tmp_path / "egoschema"
    (root / "videos").mkdir(parents=True)
    item = eval_item(0, 0)
    write_video(root / "videos" / "q0.mp4", [f.resize(size) for f in item["frames"][:12]])
    q = {"q_uid": "q0", "question": item["question"], **{f"option {i}": o for i, o in enumerate(item["options"])}}
    (root / "questions.json").write_text(json.dumps([q]))
    (root / "subset_answers.json").write_text(json.dumps({"q0": item["answer"]}))
    return root


def test_max_pixels_shrinks_egoschema_frames_with_aspect_kept(tmp_path, tmp_path_factory, monkeypatch,
                                                              one_thread):
    root = _egoschema(tmp_path)
    bench = EgoSchema(root, None)
    item = bench.items[0]
    assert {f.size for f in bench.frames(item, [2, 7])} == {(96, 48)}  # no budget: the video's own size
    assert {f.size for f in bench.frames(item, [2, 7], max_pixels=1152)} == {(48, 24)}  # 2:1 kept
    assert {f.size for f in bench.frames(item, [2, 7], max_pixels=1 << 20)} == {(96, 48)}  # never upsampled

    with pytest.raises(ConfigError, match=r"--image_size 64 is the synthetic benchmark's render size.*--max_pixels"):
        EvalConfig(benchmark="egoschema", data=str(root), image_size=64)
    assert EvalConfig(image_size=32).image_size == 32  # still the synthetic render size

    # end to end: every frame the model and the infill generator are shown went through the rule
    ckpt = _checkpoint("llava", tmp_path, tmp_path_factory)
    seen = Counter()
    for module in (evalsuite.scoring, evalsuite.generation):
        real = module.processor_inputs

        def spy(processor, texts, images, videos, real=real, **kwargs):
            seen.update(im.size for x in images for im in x)
            return real(processor, texts, images, videos, **kwargs)

        monkeypatch.setattr(module, "processor_inputs", spy)
    cfg = fast_config(benchmark="egoschema", data=str(root), protocol="custom", limit=None, frames=(2,), max_pixels=1152)
    evaluate([checkpoint_ref(ckpt)], ["vcot"], cfg, tmp_path / "cache")
    m = json.loads((ckpt / "eval/vcot/metrics.json").read_text())
    assert m["settings"]["max_pixels"] == 1152 and m["settings"]["image_size"] is None and not m["errors"]
    # F=2: one transition (common + between, 2 frames each), 2 captions (1 frame each), 4 prompts of 2 frames
    # (base, caption, vcot, reversed; blind and text_only show none)
    assert set(seen) == {(48, 24)} and sum(seen.values()) == 2 + 2 + 2 + 4 * 2


def test_cli_documents_the_flags():
    parser = build_parser()
    vcot = parser._subparsers._group_actions[0].choices["vcot"]
    flags = {a.option_strings[0]: a for a in vcot._actions if a.option_strings}
    assert flags["--video_input"].help == f"{field_help('video_input')} [default: 'auto']"
    assert flags["--max_pixels"].help == f"{field_help('max_pixels')} [default: None]"
    assert "run.json" in field_help("video_input") and "aspect kept" in field_help("max_pixels")
    args = parser.parse_args(["vcot", "ck", "--video_input", "native", "--max_pixels", "4096"])
    assert (args.video_input, args.max_pixels) == ("native", 4096)


def test_report_says_how_frames_were_fed(tmp_path):
    from evalsuite.report.evaluation import write_report

    est = {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    block = {"f2": {"n_items": 1, "acc_base": est, "acc_caption": est, "acc_vcot": est, "gain": est}}
    three = {"base": "native", "caption": "images", "vcot": "images"}
    for name, settings in {"a": {"video_input": three, "max_pixels": 200704},
                           "b": {"video_input": {c: "images" for c in three}, "max_pixels": None},
                           "old": {}}.items():
        d = tmp_path / name / "eval" / "vcot"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"settings": {"benchmark": "synthetic", **settings},
                                                    "metrics": block}))
    text = write_report(tmp_path, track=False).read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("Frames fed:")]
    assert ("`a`: base as one clip through the family's video path (native), caption and vCoT as images; "
            "at most 200,704 pixels per frame (aspect kept)") in line
    assert "`b`: every frame as an image; no max_pixels" in line
    assert "`old`: every frame as an image; no max_pixels" in line  # evaluated before the path was recorded


def test_infill_cache_key_follows_the_frame_budget(tmp_path):
    """Infills generated from frames shrunk by max_pixels are not reused for other frames, and the
    no-limit key is the one earlier caches were written with."""
    import hashlib

    from evalsuite.infills import ModelSource

    generator = SimpleNamespace(name="gen", identity="abc")
    item = Synthetic(0, 1, None).items[0]
    keys = {mp: ModelSource(generator, tmp_path, size=64, max_pixels=mp)._key(item, (3, 9), "transition")
            for mp in (None, 2048, 4096)}
    assert len(set(keys.values())) == 3
    old = json.dumps([item.video, [3, 9], 64, "transition", "gen-abc", prompts.PROMPTS_HASH, 48])
    assert keys[None] == hashlib.sha256(old.encode()).hexdigest()


def test_egoschema_clips_carry_their_sampled_rate(tmp_path, tmp_path_factory, monkeypatch, one_thread):
    """A native base prompt on EgoSchema tells the processor how many sampled frames fall in a second
    (Qwen2.5-VL's temporal ids); the synthetic benchmark, with no timing, tells nothing."""
    root = _egoschema(tmp_path)  # 12 frames written at write_video's 8 frames/s
    ckpt = _checkpoint("qwen2_5_vl", tmp_path, tmp_path_factory, {"video_input": "native"})
    rates = []
    real = evalsuite.scoring.processor_inputs

    def spy(processor, texts, images, videos, **kwargs):
        if videos:
            rates.append(kwargs.get("video_fps"))
        return real(processor, texts, images, videos, **kwargs)

    monkeypatch.setattr(evalsuite.scoring, "processor_inputs", spy)
    evaluate([checkpoint_ref(ckpt)], ["vcot"], fast_config(benchmark="egoschema", data=str(root), protocol="custom", limit=None,
                                                          frames=(2,)), tmp_path / "cache")
    assert rates == [[[pytest.approx(2 * 8 / 12)]]] * 2  # base and reversed, each one clip
