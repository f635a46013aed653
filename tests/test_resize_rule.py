"""The one resize rule (`data_recipes.resize`) and the recipe side of it: `max_pixels` / `video_input`
in recipes, their content hash, the build applying the rule to what it stores, and the manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data_recipes.build import build, shard_urls
from data_recipes.recipe import RecipeError, load_recipe, parse_recipe
from data_recipes.resize import fit, fit_size
from fixtures_real_data import mix665k, sharegpt_videos

# --- the rule --------------------------------------------------------------------------------------
sides = st.integers(1, 4000)
budgets = st.integers(64, 4_000_000)


def representable(w: int, h: int, budget: int) -> bool:
    """The short side, scaled into the budget, keeps at least a pixel (else no size can both keep the
    aspect within a pixel and fit the budget: see test_extreme_aspect_stays_within_budget)."""
    return min(w, h) * math.sqrt(budget / (w * h)) >= 1 or w * h <= budget


def aspect_within_a_pixel(w: int, h: int, w2: int, h2: int) -> bool:
    """Some single scale s puts both sides within one pixel of (w * s, h * s)."""
    lo = max((w2 - 1) / w, (h2 - 1) / h)
    hi = min((w2 + 1) / w, (h2 + 1) / h)
    return lo < hi


@settings(max_examples=500, deadline=None)
@given(sides, sides, budgets)
def test_rule_properties(w, h, budget):
    w2, h2 = fit_size(w, h, budget)
    assert w2 <= w and h2 <= h, "never upsampled"
    assert w2 >= 1 and h2 >= 1
    assert w2 * h2 <= budget, "within the budget"
    if representable(w, h, budget):
        assert aspect_within_a_pixel(w, h, w2, h2), (w, h, w2, h2)
    if w * h <= budget:
        assert (w2, h2) == (w, h), "a no-op within the budget"
    assert fit_size(w2, h2, budget) == (w2, h2), "idempotent"


@settings(max_examples=300, deadline=None)
@given(sides, sides, budgets, budgets)
def test_a_smaller_budget_shrinks_further(w, h, b1, b2):
    small, large = sorted((b1, b2))
    if not representable(w, h, small):
        return
    ws, hs = fit_size(w, h, small)
    wl, hl = fit_size(w, h, large)
    assert ws <= wl and hs <= hl
    # applied downstream, to what the larger budget made: shrinks that further, into the smaller budget
    w3, h3 = fit_size(wl, hl, small)
    assert w3 <= wl and h3 <= hl and w3 * h3 <= small


def test_no_budget_and_fitting_images_pass_untouched():
    im = Image.new("RGB", (48, 40))
    assert fit(im, None) is im and fit(im, 48 * 40) is im
    assert fit_size(48, 40, None) == (48, 40)
    small = fit(im, 600)
    assert small is not im and small.width * small.height <= 600 and small.size == fit_size(48, 40, 600)
    assert fit(small, 600) is small


def test_extreme_aspect_stays_within_budget():
    """A short side held at one pixel leaves the whole budget to the long side."""
    assert fit_size(5000, 1, 100) == (100, 1)
    assert fit_size(3, 9000, 100) == (1, 100)


# --- recipes ---------------------------------------------------------------------------------------
# Under GENERATOR_VERSION 2 (the generator changed what it makes: the hash says so). The fields added
# later (`max_pixels`, `video_input`, `frame_order`) at their defaults still leave it alone.
VIDEO_DEMO_HASH = "6d7c31c085144c49eb8e7a45a6ae77952093bb4a543cb620af73f42496e7b0ba"
IMAGE_DEMO_HASH = "e83e82c61d254fa04d04df62562d07a939f7bb844fc5726c71f282de052f98b9"


def test_existing_recipes_keep_their_hash():
    # The hashes these recipes have without `max_pixels` and `video_input`: setting neither changes nothing.
    assert load_recipe("video_demo").content_hash() == VIDEO_DEMO_HASH
    assert load_recipe("image_demo").content_hash() == IMAGE_DEMO_HASH


def _synthetic(**extra) -> dict:
    return {"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 6, "frames": 3, **extra}


def test_hash_changes_only_when_the_new_fields_leave_their_default():
    base = parse_recipe(_synthetic(), "r", "r.yaml").content_hash()
    assert parse_recipe(_synthetic(video_input="images", max_pixels=None), "r", "r.yaml").content_hash() == base
    native = parse_recipe(_synthetic(video_input="native"), "r", "r.yaml").content_hash()
    budget = parse_recipe(_synthetic(max_pixels=1024), "r", "r.yaml").content_hash()
    other = parse_recipe(_synthetic(max_pixels=2048), "r", "r.yaml").content_hash()
    # max_pixels equal to the default budget (image_size**2) is still a recipe of its own: it says so
    same_as_default = parse_recipe(_synthetic(max_pixels=64 * 64), "r", "r.yaml").content_hash()
    assert len({base, native, budget, other, same_as_default}) == 5


def test_pixel_budget_defaults_to_image_size_squared():
    assert parse_recipe(_synthetic(image_size=40), "r", "r.yaml").pixel_budget() == 1600
    assert parse_recipe(_synthetic(image_size=40, max_pixels=900), "r", "r.yaml").pixel_budget() == 900


@pytest.mark.parametrize("extra, msg", [
    ({"max_pixels": 10}, r"r\.yaml: field 'max_pixels' must be an integer of at least 64.*got 10"),
    ({"max_pixels": 0}, r"r\.yaml: field 'max_pixels' must be an integer of at least 64.*got 0"),
    ({"max_pixels": True}, r"r\.yaml: field 'max_pixels' must be an integer.*got True"),
    ({"max_pixels": 4096.0}, r"r\.yaml: field 'max_pixels' must be an integer.*got 4096\.0"),
    ({"max_pixels": "448*448"}, r"r\.yaml: field 'max_pixels' must be an integer.*got '448\*448'"),
    ({"video_input": "nativ"}, r"r\.yaml: field 'video_input' must be one of images, native, got 'nativ' "
                               r"\(did you mean 'native'\?\)"),
    ({"video_input": "frames"}, r"r\.yaml: field 'video_input' must be one of images, native, got 'frames'"),
    ({"video_input": None}, r"r\.yaml: field 'video_input' must be one of images, native, got None"),
    ({"video_inputs": "native"}, r"r\.yaml: unknown key 'video_inputs' \(did you mean 'video_input'\?\)"),
    ({"max_pixel": 1024}, r"r\.yaml: unknown key 'max_pixel' \(did you mean 'max_pixels'\?\)"),
    ({"kind": "image", "sources": [{"type": "synthetic_image"}], "video_input": "native"},
     r"r\.yaml: field 'video_input: native' is for video recipes"),
])
def test_bad_values_name_file_and_field(extra, msg):
    with pytest.raises(RecipeError, match=msg):
        parse_recipe(_synthetic(**extra), "r", "r.yaml")


def test_recipe_file_errors_name_the_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(_synthetic(max_pixels=-5)))
    with pytest.raises(RecipeError, match=rf"{p}: field 'max_pixels'"):
        load_recipe(str(p))
    p.write_text(yaml.safe_dump(_synthetic(max_pixels=1024, video_input="native")))
    r = load_recipe(str(p))
    assert (r.max_pixels, r.video_input) == (1024, "native")


# --- builds ----------------------------------------------------------------------------------------
def _write(tmp: Path, name: str, fields: dict) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(fields))
    return p


def _samples(out: Path) -> list[dict]:
    return list(wds.WebDataset(shard_urls(out), shardshuffle=False).decode("pil"))


def _frames(s: dict) -> list[Image.Image]:
    return [s[k] for k in (["jpg"] if "jpg" in s else sorted(k for k in s if k.endswith(".jpg")))]


def _real(tmp: Path, make, kind: str, **extra) -> tuple:
    fx = make(tmp / "data")
    rec = _write(tmp, f"real_{kind}", {
        "kind": kind, "samples": fx.good, "frames": 3, "image_size": 32, "max_bad_fraction": 0.5, **extra,
        "sources": [{"type": f"llava_{kind}", "path": str(fx.annotations), "media_root": str(fx.media_root)}]})
    return fx, rec


def _original_sizes(fx, js: dict) -> list[tuple[int, int]]:
    """Sizes of a sample's media as the files hold them (every fixture video frame is 32x32)."""
    if js["kind"] == "video":
        return [(32, 32)] * sum(js["clips"])
    files = [js["meta"]["file"]] if "file" in js["meta"] else js["meta"].get("files", [])
    out = []
    for f in files:
        with Image.open(fx.media_root / f) as im:
            out.append(im.size)
    return out


@pytest.mark.parametrize("make, kind", [(mix665k, "image"), (sharegpt_videos, "video")])
@pytest.mark.parametrize("budget", [600, 10**6])
def test_real_build_stores_what_the_rule_makes(tmp_path, make, kind, budget):
    fx, rec = _real(tmp_path, make, kind, max_pixels=budget)
    m = build(str(rec), tmp_path / "out")
    assert m["resize"] == {"rule": "fit", "max_pixels": budget, "from": "max_pixels"}
    assert m["video_input"] == "images"
    samples = _samples(tmp_path / "out")
    assert len(samples) == fx.good
    checked = 0
    for s in samples:
        js = s["json"]
        originals = _original_sizes(fx, js)
        stored = [im.size for im in _frames(s)]
        assert len(stored) == len(originals), js["id"]
        for (w, h), (w2, h2) in zip(originals, stored):
            assert (w2, h2) == fit_size(w, h, budget), (js["id"], (w, h), (w2, h2))
            assert w2 * h2 <= budget and w2 <= w and h2 <= h
            checked += 1
    assert checked == m["counts"]["images"] > 0
    if budget == 600:  # the budget is below every fixture file's size: everything shrank
        assert all(w * h <= 600 for s in samples for w, h in (im.size for im in _frames(s)))
    else:  # far above: nothing was enlarged, nothing changed size
        assert all(s2 == o for s in samples for s2, o in zip((im.size for im in _frames(s)),
                                                            _original_sizes(fx, s["json"])))


def test_real_build_default_budget_is_image_size_squared(tmp_path):
    fx, rec = _real(tmp_path, mix665k, "image")
    m = build(str(rec), tmp_path / "out")
    assert m["resize"] == {"rule": "fit", "max_pixels": 32 * 32, "from": "image_size"}
    for s in _samples(tmp_path / "out"):
        for (w, h), im in zip(_original_sizes(fx, s["json"]), _frames(s)):
            assert im.size == fit_size(w, h, 32 * 32)


def test_synthetic_frames_shrink_only_with_max_pixels(tmp_path):
    default = build(str(_write(tmp_path, "syn", _synthetic())), tmp_path / "a")
    assert default["resize"] == {"rule": "fit", "max_pixels": 64 * 64, "from": "image_size"}
    assert {im.size for s in _samples(tmp_path / "a") for im in _frames(s)} == {(64, 64)}
    # a budget the rendered frames already fit in writes the same shards, byte for byte
    roomy = build(str(_write(tmp_path, "syn", _synthetic(max_pixels=64 * 64))), tmp_path / "b")
    assert [s["sha256"] for s in roomy["shards"]] == [s["sha256"] for s in default["shards"]]
    assert roomy["recipe_hash"] != default["recipe_hash"]
    tight = build(str(_write(tmp_path, "syn", _synthetic(max_pixels=1024))), tmp_path / "c")
    assert tight["resize"] == {"rule": "fit", "max_pixels": 1024, "from": "max_pixels"}
    assert {im.size for s in _samples(tmp_path / "c") for im in _frames(s)} == {(32, 32)}
    assert tight["counts"] == default["counts"]


def test_manifest_records_the_video_path(tmp_path):
    m = build(str(_write(tmp_path, "nat", _synthetic(video_input="native"))), tmp_path / "n")
    assert m["video_input"] == "native"
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["video_input"] == "native"
