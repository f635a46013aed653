"""Training through the families' video path (`video_input: native`), end to end on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from data_recipes.processors import load_processor
from data_recipes.video_processors import video_tokens
from helpers import REPO, run_lora
from train.config import ConfigError, resolve

FRAMES, SIZE = 4, 64


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    for family in ("qwen2_vl", "llava_next_video", "llava"):
        train = {"base_model": f"tiny:{family}", "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                 "gradient_checkpointing": False, "num_workers": 0, "save_steps": 0, "learning_rate": 1e-3,
                 "warmup_steps": 1, "video_input": "native", "ds_config": "none"}
        (d / f"{family}.yaml").write_text(yaml.safe_dump({
            "kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 16, "frames": FRAMES,
            "image_size": SIZE, "seed": 0, "split": "train", "shard_size": 8, "train": train}))
    image_train = {"base_model": "tiny:qwen2_vl", "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                   "gradient_checkpointing": False, "num_workers": 0, "save_steps": 0, "ds_config": "none"}
    (d / "img.yaml").write_text(yaml.safe_dump({
        "kind": "image", "sources": [{"type": "synthetic_image"}], "samples": 200, "image_size": SIZE, "seed": 0,
        "split": "train", "shard_size": 50, "train": image_train}))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next_video"])
def test_three_steps_through_the_video_path(work, family):
    run_lora(work, "--recipe", str(work / f"{family}.yaml"), "--run_name", family, "--max_steps", "3")
    info = json.loads((work / "ckpt" / family / "run.json").read_text())
    assert info["video_input"] == "native" and info["config"]["video_input"] == "native"
    assert info["steps"] == 3 and info["consumed"]["samples"] == 6
    # every sample is one 4-frame 64x64 clip: its visual tokens are the family's own arithmetic, no more
    proc = load_processor(work / "models" / f"tiny-{family}")
    per_clip = video_tokens(family, proc, FRAMES, SIZE, SIZE)
    assert info["consumed"]["visual_tokens"] == 6 * per_clip
    assert info["consumed"]["images"] == 6 * FRAMES  # frames are still counted as images seen
    # ... and is evaluated through the same path, read from its run.json
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "evalsuite", "vcot", str(work / "ckpt" / family), "--limit", "3",
                        "--frames", str(FRAMES), "--infills", "oracle", "--n-boot", "50"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = work / "ckpt" / family / "eval" / "vcot"
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["condition"]: r["video_input"] for r in rows} == {"base": "native", "caption": "images",
                                                                 "vcot": "images", "reversed": "native",
                                                                 "blind": "none", "text_only": "none"}
    assert len(rows) == 18 and all("pred" in r for r in rows)  # 3 items x 6 conditions
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["video_input"]["base"] == "native"
    # the same data as separate images costs more tokens per sample (LLaVA-NeXT-Video pools 4x, Qwen
    # merges two frames into one temporal patch)
    run_lora(work, "--recipe", str(work / f"{family}.yaml"), "--run_name", f"{family}_img", "--max_steps", "1",
        "--video_input", "images")
    img = json.loads((work / "ckpt" / f"{family}_img" / "run.json").read_text())
    assert img["video_input"] == "images"
    assert img["consumed"]["visual_tokens"] / img["consumed"]["samples"] > per_clip


@pytest.mark.slow
def test_an_image_run_matches_a_native_video_run_in_visual_tokens(work):
    """The video run's visual tokens are counted on its path (pooled/merged clips): the image run is
    stopped at those, not at what the frames would have cost as images."""
    ref = work / "ckpt" / "qwen2_vl"
    if not (ref / "run.json").exists():
        run_lora(work, "--recipe", str(work / "qwen2_vl.yaml"), "--run_name", "qwen2_vl", "--max_steps", "3")
    target = json.loads((ref / "run.json").read_text())["consumed"]["visual_tokens"]
    run_lora(work, "--recipe", str(work / "img.yaml"), "--run_name", "img_matched", "--match_to", str(ref),
        "--match_by", "visual_tokens")
    info = json.loads((work / "ckpt" / "img_matched" / "run.json").read_text())
    assert info["video_input"] == "images" and info["match"]["target"] == target
    per_image = info["consumed"]["visual_tokens"] / info["consumed"]["samples"]
    assert abs(info["consumed"]["visual_tokens"] - target) < per_image  # stopped within one sample
    # the schedule was planned from a prescan counted the way batches are (no token counts in this build)
    assert "prescan" in info["budget"]["schedule_source"] and info["budget"]["per_sample"] == per_image


@pytest.mark.slow
def test_a_family_without_a_video_path_is_a_user_error(work):
    p = run_lora(work, "--recipe", str(work / "llava.yaml"), "--run_name", "llava", "--max_steps", "1", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "error: video_input native: llava" in p.stderr and "has no video path" in p.stderr


def test_video_input_and_max_pixels_settings_are_checked(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 4}))
    cfg = resolve(["--recipe", str(recipe), "--max_steps", "1"])
    assert (cfg.video_input, cfg.max_pixels) == ("auto", -1)
    with pytest.raises(ConfigError, match="video_input must be one of auto, images, native"):
        resolve(["--recipe", str(recipe), "--max_steps", "1", "--video_input", "video"])
    with pytest.raises(ConfigError, match="max_pixels must be -1"):
        resolve(["--recipe", str(recipe), "--max_steps", "1", "--max_pixels", "10"])


def test_resolve_frames_takes_the_builds_settings_unless_told():
    from train.data import resolve_frames

    built = {"video_input": "native", "resize": {"max_pixels": 4096}}
    assert resolve_frames("auto", -1, built) == ("native", 4096)
    assert resolve_frames("images", 0, built) == ("images", None)
    assert resolve_frames("auto", 1024, {}) == ("images", 1024)
