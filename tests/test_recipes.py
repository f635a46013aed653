"""Recipes, shard builds, real sources, `size_from` (sizing a build from another recipe) and the CLI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import yaml
from PIL import Image

from data_recipes.__main__ import main as cli
from data_recipes.build import BuildError, build, read_manifest, shard_urls, stale, verify
from data_recipes.recipe import RECIPES_DIR, RecipeError, load_recipe, parse_recipe, recipe_names
from data_recipes.resize import fit_size
from data_recipes.sources import conversation_to_messages
from data_recipes.video import uniform_indices, write_video


def write_recipe(tmp: Path, name: str, **fields) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(fields))
    return p


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.rglob("*.yaml")))
def test_every_shipped_recipe_validates(name):
    r = load_recipe(name)
    assert r.name == name and r.sources
    if r.size_from:
        assert r.size_from.recipe in recipe_names()


def test_image_demo_is_sized_from_video_demo():
    img, vid = load_recipe("image_demo"), load_recipe("video_demo")
    assert img.size_from.recipe == "video_demo" and img.kind == "image" and vid.kind == "video"
    assert img.image_size == vid.image_size


@pytest.mark.parametrize("data, msg", [
    ({"kind": "image", "sources": [{"type": "synthetic_image"}], "samples": 5, "sedd": 1}, "unknown key 'sedd' \\(did you mean 'seed'\\?\\)"),
    ({"kind": "image", "sources": [{"type": "synthetic_imag"}], "samples": 5}, "did you mean 'synthetic_image'"),
    ({"kind": "image", "sources": [{"type": "synthetic_image", "wieght": 2}], "samples": 5}, "sources\\[0\\]: unknown key 'wieght'"),
    ({"kind": "image", "sources": [{"type": "synthetic_image"}]}, "exactly one of 'samples' or 'size_from'"),
    ({"kind": "image", "sources": [{"type": "synthetic_video"}], "samples": 5}, "cannot feed a image recipe"),
    ({"kind": "video", "sources": [{"type": "synthetic_video"}], "size_from": {"recipe": "x", "unit": "tokens"}},
     "size_from.unit must be one of"),
    ({"kind": "image", "sources": [{"type": "llava_image"}], "samples": 5}, "needs 'path' and 'media_root'"),
    ({"kind": "image", "samples": 5}, "field 'sources' is required"),
])
def test_bad_recipes_name_file_and_field(data, msg):
    with pytest.raises(RecipeError, match=msg):
        parse_recipe(data, "r", "r.yaml")


def test_unknown_recipe_suggests():
    with pytest.raises(RecipeError, match="did you mean 'video_demo'"):
        load_recipe("vidoe_demo")


def test_missing_data_root_is_explained(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    with pytest.raises(RecipeError, match=r"\$DATA_ROOT.*not set.*image_demo / video_demo"):
        build("image_100k", tmp_path / "unused")


def _read_all(out: Path):
    return list(wds.WebDataset(shard_urls(out), shardshuffle=False).decode("pil"))


def test_generated_build_is_deterministic_and_readable(tmp_path):
    rec = write_recipe(tmp_path, "vid", kind="video", sources=[{"type": "synthetic_video"}], samples=12,
                       frames=3, shard_size=5, max_bad_fraction=0.0)
    m1 = build(str(rec), tmp_path / "a")
    m2 = build(str(rec), tmp_path / "b", workers=2)
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    for s in m1["shards"]:
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    assert [s["samples"] for s in m1["shards"]] == [5, 5, 2]
    assert m1["counts"]["samples"] == 12 and m1["counts"]["frames"] == 36 and m1["counts"]["images"] == 36
    samples = _read_all(tmp_path / "a")
    assert len(samples) == 12
    for s in samples:
        frames = [k for k in sorted(s) if k.endswith(".jpg")]
        assert frames == ["000.jpg", "001.jpg", "002.jpg"]
        markers = sum(p["type"] == "image" for m in s["json"]["messages"] if isinstance(m["content"], list)
                      for p in m["content"])
        assert markers == 3 and s["json"]["kind"] == "video"
    other = write_recipe(tmp_path, "vid2", kind="video", sources=[{"type": "synthetic_video"}], samples=12,
                         frames=3, shard_size=5, seed=1)
    m3 = build(str(other), tmp_path / "c")
    assert m3["shards"][0]["sha256"] != m1["shards"][0]["sha256"]
    assert verify(tmp_path / "a") == []


def test_a_worker_that_dies_stops_the_build_instead_of_hanging_it(tmp_path, monkeypatch):
    """A worker killed mid-sample (the kernel's OOM killer does this without a word) used to leave its result
    pending for ever; the build now stops with an error naming the sample, and keeps nothing."""
    import os
    import threading

    import data_recipes.build as build_mod

    real = build_mod.open_sources

    class DiesAtFive:
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def make(self, pos):
            if pos == 5:
                os._exit(9)  # no exception, no cleanup: as a SIGKILL
            return self.source.make(pos)

    # the forked workers inherit the patched module, and open their sources with it
    monkeypatch.setattr(build_mod, "open_sources", lambda recipe: [DiesAtFive(s) for s in real(recipe)])
    rec = write_recipe(tmp_path, "img", kind="image", sources=[{"type": "synthetic_image"}], samples=12)
    raised = []

    def run():
        try:
            build(str(rec), tmp_path / "out", workers=2)
        except BuildError as e:
            raised.append(str(e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the build hangs on the dead worker's sample"
    assert raised and raised[0].startswith("a build worker died with the samples from plan position 0000000")
    assert int(raised[0].split("plan position ")[1].split()[0]) <= 5
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".img.building"))


def test_manifest_holds_no_path_of_the_machine(tmp_path):
    """A manifest is shared with the shards: it names its recipe by name, hash and a repository-relative
    file (or the bare file name of a recipe kept elsewhere), never by where the files happened to be."""
    from data_recipes.build import shareable_recipe_file
    from data_recipes.recipe import RECIPES_DIR

    rec = write_recipe(tmp_path, "vid", kind="video", sources=[{"type": "synthetic_video"}], samples=3, frames=2)
    manifest = build(str(rec), tmp_path / "out")
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert manifest["recipe_file"] == "vid.yaml" and str(tmp_path) not in text
    shipped = shareable_recipe_file(str(RECIPES_DIR / "video_demo.yaml"))
    assert shipped == "data_recipes/recipes/video_demo.yaml"
    assert shareable_recipe_file(None) is None


def test_verify_detects_tampering(tmp_path):
    rec = write_recipe(tmp_path, "img", kind="image", sources=[{"type": "synthetic_image"}], samples=4)
    build(str(rec), tmp_path / "o")
    shard = tmp_path / "o" / read_manifest(tmp_path / "o")["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("does not match" in p for p in verify(tmp_path / "o"))
    assert cli(["verify", str(tmp_path / "o")]) == 1


# --- real sources --------------------------------------------------------------------------------
def _llava_fixture(tmp: Path, video: bool, n_good: int, bad: dict[str, int]):
    root = tmp / ("llava_video" if video else "llava_image")
    media = root / ("videos" if video else "images")
    media.mkdir(parents=True)
    field = "video" if video else "image"
    recs = []
    for i in range(n_good):
        name = f"{i}.mp4" if video else f"{i}.jpg"
        if video:
            write_video(media / name, [Image.new("RGB", (32, 32), (10 * k, 100, 200 - 10 * k)) for k in range(12)])
        else:
            Image.new("RGB", (48, 40), (i * 20 % 255, 50, 90)).save(media / name, quality=90)
        recs.append({"id": f"r{i}", field: name, "conversations": [
            {"from": "human", "value": f"<{field}>\nWhat is shown in item {i}?"},
            {"from": "gpt", "value": f"Item {i}."}]})
    for j in range(bad.get("missing", 0)):
        recs.append({"id": f"missing{j}", field: f"nope{j}.{'mp4' if video else 'jpg'}",
                     "conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "x"}]})
    for j in range(bad.get("corrupt", 0)):
        name = f"corrupt{j}.{'mp4' if video else 'jpg'}"
        (media / name).write_bytes(b"" if j % 2 == 0 else b"\x00garbage" * 20)
        recs.append({"id": f"corrupt{j}", field: name,
                     "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]})
    for j in range(bad.get("malformed", 0)):
        recs.append({"id": f"mal{j}", field: "0.mp4" if video else "0.jpg",
                     "conversations": [{"from": "gpt", "value": "answer first"}]})
    (root / "annotations.json").write_text(json.dumps(recs))
    return root


def test_jsonl_lines_end_at_newlines_only_and_an_oversized_image_costs_its_record(tmp_path, monkeypatch):
    """A JSONL record holding a raw U+2028 (a writer with ensure_ascii=False emits it; JSON allows it) is one
    record, kept with its text whole: splitlines() cut it in two malformed ones. An image past PIL's
    decompression-bomb limit is an unreadable image, counted, not the end of the build."""
    root = tmp_path / "llava"
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(4):
        Image.new("RGB", (48, 40), (i * 40, 50, 90)).save(root / "images" / f"{i}.jpg")
        lines.append(json.dumps({"id": f"r{i}", "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in item {i}?"},
            {"from": "gpt", "value": f"Item {i}.\u2028Second line\u2029 and a \x85 too."}]}, ensure_ascii=False))
    (root / "ann.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert "\u2028" in (root / "ann.jsonl").read_text(encoding="utf-8")
    Image.new("RGB", (400, 400)).save(root / "images" / "big.jpg")
    with open(root / "ann.jsonl", "a") as f:
        f.write(json.dumps({"id": "big", "image": "big.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Big."}]}) + "\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # 400 x 400 is more than twice as many: a "bomb"
    rec = write_recipe(tmp_path, "lj", kind="image", samples=4, max_bad_fraction=0.5, sources=[
        {"type": "llava_image", "path": str(root / "ann.jsonl"), "media_root": str(root / "images")}])
    m = build(str(rec), tmp_path / "out")
    assert m["counts"]["samples"] == 4 and m["skipped"] == {"unreadable_image": 1}, (m["skipped"], m["counts"])
    texts = [p["text"] for s in _read_all(tmp_path / "out") for msg in s["json"]["messages"]
             if msg["role"] == "assistant" for p in msg["content"]]
    assert sorted(texts) == [f"Item {i}.\u2028Second line\u2029 and a \x85 too." for i in range(4)]


def test_a_video_given_as_a_folder_of_frames_is_its_image_files_in_name_order(tmp_path):
    """ShareGPTVideo ships videos as frame folders (LLaVA-NeXT's trainer lists them in name order): such a
    record is a video sample whose frames are the folder's, sampled as from a list of frame files; a folder
    without image files is an unreadable video. Before, a folder counted as a missing video."""
    root = tmp_path / "sgv"
    folder = root / "frames" / "all_frames" / "vid01"
    folder.mkdir(parents=True)
    for k in range(9):  # written out of order; frame k is grey level 20 * k
        Image.new("RGB", (32, 32), (20 * (8 - k),) * 3).save(folder / f"c{8 - k:03d}.jpg", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    (root / "frames" / "all_frames" / "empty").mkdir()
    recs = [{"id": "v1", "video": "frames/all_frames/vid01", "conversations": [
                {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It brightens."}]},
            {"id": "v2", "video": "frames/all_frames/empty", "conversations": [
                {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "Nothing."}]}]
    (root / "ann.json").write_text(json.dumps(recs))
    rec = write_recipe(tmp_path, "sgv", kind="video", samples=1, frames=3, max_bad_fraction=0.5, sources=[
        {"type": "llava_video", "path": str(root / "ann.json"), "media_root": str(root)}])
    m = build(str(rec), tmp_path / "out")
    assert m["counts"]["samples"] == 1 and m["counts"]["frames"] == 3
    assert m["skipped"] in ({}, {"unreadable_video": 1})  # the empty folder, if the plan reached it first
    (sample,) = _read_all(tmp_path / "out")
    levels = [int(np.asarray(sample[k])[..., 0].mean().round()) for k in sorted(sample) if k.endswith(".jpg")]
    picked = uniform_indices(9, 3)
    assert [round(v / 20) for v in levels] == picked == sorted(picked)  # the folder's frames, in name order
    rec2 = write_recipe(tmp_path, "sgv2", kind="video", samples=2, frames=3, max_bad_fraction=0.6, sources=[
        {"type": "llava_video", "path": str(root / "ann.json"), "media_root": str(root)}])
    with pytest.raises(BuildError) as e:
        build(str(rec2), tmp_path / "out2")
    assert "'unreadable_video': 1" in str(e.value)


@pytest.mark.parametrize("video", [False, True])
def test_real_sources_build_and_count_bad_records(tmp_path, monkeypatch, video):
    root = _llava_fixture(tmp_path, video, n_good=20, bad={"missing": 1, "corrupt": 2, "malformed": 1})
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    kind, src = ("video", "llava_video") if video else ("image", "llava_image")
    rec = write_recipe(tmp_path, "real", kind=kind, samples=20, frames=4, image_size=32, max_bad_fraction=0.2,
                       sources=[{"type": src, "path": f"$DATA_ROOT/{root.name}/annotations.json",
                                 "media_root": f"$DATA_ROOT/{root.name}/{'videos' if video else 'images'}"}])
    m = build(str(rec), tmp_path / "out")
    assert m["counts"]["samples"] == 20
    field = "video" if video else "image"
    assert m["skipped"] == {f"missing_{field}": 1, f"unreadable_{field}": 2, "malformed_conversation": 1}
    samples = _read_all(tmp_path / "out")
    assert sorted(s["json"]["id"] for s in samples) == sorted(f"r{i}" for i in range(20))
    s = samples[0]
    n_img = len([k for k in s if k.endswith("jpg")])
    assert n_img == (4 if video else 1)
    user = s["json"]["messages"][0]["content"]
    assert [p["type"] for p in user] == ["image"] * n_img + ["text"]
    # the resize rule at the default budget image_size**2: 48x40 images shrink to 1024 pixels, aspect kept
    assert s[[k for k in s if k.endswith("jpg")][0]].size == ((32, 32) if video else fit_size(48, 40, 32 * 32))
    assert m["resize"] == {"rule": "fit", "max_pixels": 32 * 32, "from": "image_size"}

    strict = write_recipe(tmp_path, "strict", kind=kind, samples=20, frames=4, image_size=32, max_bad_fraction=0.05,
                          sources=[{"type": src, "path": str(root / "annotations.json"),
                                    "media_root": str(root / ("videos" if video else "images"))}])
    with pytest.raises(BuildError, match=r"[1-4] of 2[0-4] records are bad.*max_bad_fraction 5.0%.*First ones:\n  .*record (corrupt|missing|mal)"):
        build(str(strict), tmp_path / "out2")


def test_missing_annotation_file_explains_layout(tmp_path):
    rec = write_recipe(tmp_path, "r", kind="image", samples=3,
                       sources=[{"type": "llava_image", "path": str(tmp_path / "none.json"), "media_root": str(tmp_path)}])
    with pytest.raises(RecipeError, match=r"none.json does not exist; expected a JSON list of \{'id', 'image', 'conversations'\}"):
        build(str(rec), tmp_path / "o")


def test_conversation_conversion():
    msgs = conversation_to_messages([{"from": "human", "value": "Look <image> here"}, {"from": "gpt", "value": "ok"}], 2, "f")
    assert msgs[0]["content"] == [{"type": "text", "text": "Look"}, {"type": "image"}, {"type": "image"},
                                  {"type": "text", "text": "here"}]
    with pytest.raises(ValueError, match="2 media tags"):
        conversation_to_messages([{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "ok"}], 1, "f")
    with pytest.raises(ValueError, match="last turn must be from 'gpt'"):
        conversation_to_messages([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                  {"from": "human", "value": "c"}], 1, "f")


# --- matching --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from train.toy.tiny import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tok") / "llava")


@pytest.mark.parametrize("unit", ["samples", "images", "visual_tokens", "text_tokens"])
def test_size_from_in_each_unit(tmp_path, tiny_model, unit):
    # Text tokens come in sample-sized steps of ~30: the reference must be large for 0.5% to be reachable.
    n_ref = 300 if unit == "text_tokens" else 10
    ref = write_recipe(tmp_path, "vref", kind="video", sources=[{"type": "synthetic_video"}], samples=n_ref,
                       frames=4, model=str(tiny_model))
    img = write_recipe(tmp_path, "imatch", kind="image", sources=[{"type": "synthetic_image"}],
                       size_from={"recipe": str(ref), "unit": unit}, model=str(tiny_model))
    m = build(str(img), tmp_path / "imatch")
    ref_m = read_manifest(tmp_path / "vref")
    x = m["match"]
    assert x["to"] == str(ref) and x["by"] == unit and x["target"] == ref_m["counts"][unit]
    assert x["achieved"] == m["counts"][unit] and x["rel_error"] <= 0.005
    if unit in ("samples", "images", "visual_tokens"):
        assert x["achieved"] == x["target"]  # fixed units per image: exact
    expected = {"samples": 10, "images": 40, "visual_tokens": 40, "text_tokens": None}[unit]
    if expected:
        assert m["counts"]["samples"] == expected
    assert cli(["inspect", str(tmp_path / "imatch"), "-n", "1"]) == 0
    assert cli(["audit", str(tmp_path / "vref"), str(tmp_path / "imatch")]) == 0


def test_a_trial_build_is_never_taken_for_the_recipe(tmp_path, tiny_model):
    """A `--limit` build carries the recipe's hash but not its samples: the trainer, the study, the plan and a
    recipe sized from it all see it as stale (a run would otherwise train on the trial set, and a matched
    recipe be sized to it)."""
    ref = write_recipe(tmp_path, "vref", kind="video", sources=[{"type": "synthetic_video"}], samples=10, frames=4,
                       model=str(tiny_model))
    trial = build(str(ref), tmp_path / "vref", limit=3)
    recipe = load_recipe(str(ref))
    assert trial["counts"]["samples"] == 3 and trial["recipe_hash"] == recipe.content_hash()
    assert stale(trial, recipe) == "a --limit 3 trial build (3 samples)"
    assert stale(dict(trial, recipe_hash="0"), recipe) == "the recipe changed since it was built"
    img = write_recipe(tmp_path, "imatch", kind="image", sources=[{"type": "synthetic_image"}],
                       size_from={"recipe": str(ref), "unit": "samples"}, model=str(tiny_model))
    assert build(str(img), tmp_path / "imatch")["match"]["target"] == 10  # the reference rebuilt in full first
    full = read_manifest(tmp_path / "vref")
    assert full["counts"]["samples"] == 10 and stale(full, recipe) is None


@pytest.mark.parametrize("family, video_input", [("llava", "images"), ("llava_next_video", "native")])
def test_a_reference_built_without_the_model_is_counted_from_its_shards_not_rebuilt(
        tmp_path, tmp_path_factory, tiny_model, monkeypatch, family, video_input):
    """video_100k is built without a model; image_vtok_video_100k, sized from it in visual tokens, needs them
    counted with its model. The reference's shards are read back and counted, giving what a build with the
    model counts, and the reference is left as it was: its sources are not opened again (100k videos decoded)
    and its manifest, whose hash trained runs recorded, does not change."""
    import data_recipes.build as B
    from train.toy.tiny import build_tiny

    model = tiny_model if family == "llava" else build_tiny(family, tmp_path_factory.mktemp("tok") / family)
    fields = dict(kind="video", sources=[{"type": "synthetic_video"}], samples=9, frames=4, video_input=video_input)
    # 9 clips: 576 visual tokens as 4 tiny-llava frames each (36 images), 144 as a tiny LLaVA-NeXT-Video clip
    # each (4 of its images): a target the image recipe meets exactly in both.
    ref = write_recipe(tmp_path, "vref", **fields)
    build(str(ref), tmp_path / "vref")
    before = {f.name: f.read_bytes() for f in (tmp_path / "vref").iterdir()}
    assert read_manifest(tmp_path / "vref")["tokens_model"] is None
    # The same recipe built again elsewhere with the model: the counts its build makes as it writes the samples.
    counted = build(str(ref), tmp_path / "counted", model=str(model))["counts"]
    opened = []
    real_open = B.open_sources
    monkeypatch.setattr(B, "open_sources", lambda r: opened.append(r.name) or real_open(r))
    img = write_recipe(tmp_path, "imatch", kind="image", sources=[{"type": "synthetic_image"}],
                       size_from={"recipe": str(ref), "unit": "visual_tokens"}, model=str(model))
    m = build(str(img), tmp_path / "imatch")
    assert opened == ["imatch"]  # the reference's sources were not opened
    assert {f.name: f.read_bytes() for f in (tmp_path / "vref").iterdir()} == before
    assert m["match"]["target"] == counted["visual_tokens"] > 0
    assert m["match"]["achieved"] == m["counts"]["visual_tokens"] == m["match"]["target"]
    assert B.count_built(tmp_path / "vref", read_manifest(tmp_path / "vref"), str(model), video_input) == {
        "visual_tokens": counted["visual_tokens"], "text_tokens": counted["text_tokens"]}


def test_counting_a_build_whose_shards_lost_samples_is_an_error(tmp_path, tiny_model):
    ref = write_recipe(tmp_path, "vref", kind="video", sources=[{"type": "synthetic_video"}], samples=4, frames=2,
                       shard_size=2)
    build(str(ref), tmp_path / "vref")
    m = read_manifest(tmp_path / "vref")
    import data_recipes.build as B

    with pytest.raises(BuildError, match=r"its shards hold 2 samples, its counts say 4"):
        B.count_built(tmp_path / "vref", dict(m, shards=m["shards"][:1]), str(tiny_model), "images")
    (tmp_path / "vref" / m["shards"][1]["name"]).unlink()
    with pytest.raises(BuildError, match=r"vref-000001\.tar: listed in .*manifest\.json but missing"):
        B.count_built(tmp_path / "vref", m, str(tiny_model), "images")


def test_size_from_beyond_tolerance_fails(tmp_path, tiny_model):
    ref = write_recipe(tmp_path, "vref", kind="video", sources=[{"type": "synthetic_video"}], samples=3, frames=2,
                       model=str(tiny_model))
    img = write_recipe(tmp_path, "im", kind="image", sources=[{"type": "synthetic_image"}],
                       size_from={"recipe": str(ref), "unit": "text_tokens"}, model=str(tiny_model))
    with pytest.raises(BuildError, match=r"relative error .*% > 0.5%"):
        build(str(img), tmp_path / "im")
    assert not (tmp_path / "im").exists()


def test_size_from_in_tokens_needs_a_model(tmp_path):
    ref = write_recipe(tmp_path, "vref", kind="video", sources=[{"type": "synthetic_video"}], samples=3)
    img = write_recipe(tmp_path, "im", kind="image", sources=[{"type": "synthetic_image"}],
                       size_from={"recipe": str(ref), "unit": "visual_tokens"})
    with pytest.raises(BuildError, match="needs a model directory"):
        build(str(img), tmp_path / "im")


def test_shards_are_plain_tars(tmp_path):
    rec = write_recipe(tmp_path, "img", kind="image", sources=[{"type": "synthetic_image"}], samples=3)
    build(str(rec), tmp_path / "o")
    with tarfile.open(shard_urls(tmp_path / "o")[0]) as t:
        names = t.getnames()
        assert names[:2] == ["000000000.json", "000000000.jpg"]
        assert all(m.mtime == 0 for m in t.getmembers())
        im = Image.open(t.extractfile(names[1]))
        assert np.asarray(im).shape == (64, 64, 3)


def test_recipe_hash_covers_the_annotation_file(tmp_path, monkeypatch):
    """Changed annotations change the hash (the trainer and the build then rebuild); generated recipes
    keep their hash."""
    from data_recipes.recipe import load_recipe

    ann = tmp_path / "ann.json"
    ann.write_text('[{"id": "1", "image": "a.jpg", "conversations": []}]')
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    recipe = tmp_path / "real.yaml"
    recipe.write_text("kind: image\nsources:\n  - {type: llava_image, path: $DATA_ROOT/ann.json, media_root: $DATA_ROOT}\n"
                      "samples: 1\n")
    before = load_recipe(recipe).content_hash()
    assert load_recipe(recipe).content_hash() == before
    ann.write_text('[{"id": "22", "image": "b.jpg", "conversations": []}]')
    assert load_recipe(recipe).content_hash() != before
    assert load_recipe("video_demo").content_hash() == VIDEO_DEMO_HASH  # annotation hashing left it alone


VIDEO_DEMO_HASH = "6d7c31c085144c49eb8e7a45a6ae77952093bb4a543cb620af73f42496e7b0ba"
"""video_demo's content hash under GENERATOR_VERSION 2 (b33ed019... under version 1)."""


def test_a_new_generator_version_rebuilds_generated_recipes(monkeypatch):
    """The generator's version stands in for the annotation file of generated sources: bumping it changes
    every synthetic recipe's hash (stale shards are rebuilt), and leaves real-data recipes alone."""
    import data_recipes.synthetic as synthetic
    from data_recipes.recipe import load_recipe

    before = {name: load_recipe(name).content_hash() for name in ("video_demo", "image_demo", "video_100k")}
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    after = {name: load_recipe(name).content_hash() for name in before}
    assert after["video_demo"] != before["video_demo"] and after["image_demo"] != before["image_demo"]
    assert after["video_100k"] == before["video_100k"]


# --- frame order: the shuffled-frames control --------------------------------------------------------
def test_frame_order_left_at_its_default_keeps_the_hash():
    """A recipe that says `frame_order: ordered` (or nothing) builds what it built before the field
    existed, so its hash, and with it every existing build, stays; a shuffled one hashes apart."""
    data = yaml.safe_load((RECIPES_DIR / "video_demo.yaml").read_text())
    plain = parse_recipe(dict(data), "video_demo", "video_demo.yaml")
    ordered = parse_recipe({**data, "frame_order": "ordered"}, "video_demo", "video_demo.yaml")
    shuffled = parse_recipe({**data, "frame_order": "shuffled"}, "video_demo", "video_demo.yaml")
    assert plain.frame_order == "ordered"
    assert plain.content_hash() == ordered.content_hash() == VIDEO_DEMO_HASH
    assert shuffled.content_hash() != plain.content_hash()
    # the shipped control is video_demo's content, shuffled, under its own name
    control = parse_recipe({**data, "frame_order": "shuffled"}, "video_shuffled_demo", "video_shuffled_demo.yaml")
    assert load_recipe("video_shuffled_demo").content_hash() == control.content_hash()


@pytest.mark.parametrize("data, msg", [
    ({"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 5, "frame_order": "shufled"},
     r"field 'frame_order' must be one of ordered, shuffled, got 'shufled' \(did you mean 'shuffled'\?\)"),
    ({"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 5, "frame_order": 1},
     r"field 'frame_order' must be one of ordered, shuffled, got 1"),
    ({"kind": "image", "sources": [{"type": "synthetic_image"}], "samples": 5, "frame_order": "shuffled"},
     r"field 'frame_order: shuffled' is for video recipes.*an image recipe has no frame order"),
    ({"kind": "video", "sources": [{"type": "llava_video", "path": "a.json", "media_root": "m"}], "samples": 5,
      "frame_order": "shuffled"},
     r"field 'frame_order: shuffled' needs generated sources \(synthetic_video\).*got llava_video"),
])
def test_bad_frame_order_is_explained(data, msg):
    with pytest.raises(RecipeError, match=msg):
        parse_recipe(data, "r", "r.yaml")


def test_video_shuffled_demo_is_video_demo_out_of_order():
    """Same clips (seed, split, samples, frames, size) and the same training section: only the frame
    order differs, so the control differs from the video run in nothing else."""
    vid, ctl = load_recipe("video_demo"), load_recipe("video_shuffled_demo")
    assert ctl.frame_order == "shuffled" and vid.frame_order == "ordered"
    for f in ("kind", "sources", "samples", "size_from", "frames", "image_size", "max_pixels", "video_input", "seed",
              "split", "max_bad_fraction", "shard_size", "model", "train"):
        assert getattr(ctl, f) == getattr(vid, f), f


def test_shuffled_build_has_the_ordered_clips_frames_out_of_order(tmp_path):
    fields = dict(kind="video", sources=[{"type": "synthetic_video"}], samples=6, frames=4, shard_size=10,
                  max_bad_fraction=0.0)
    mo = build(str(write_recipe(tmp_path, "ordered", **fields)), tmp_path / "o")
    m = build(str(write_recipe(tmp_path, "shuffled", frame_order="shuffled", **fields)), tmp_path / "s")
    assert m["counts"]["samples"] == 6 and m["counts"]["frames"] == 24
    assert (mo["frame_order"], m["frame_order"]) == ("ordered", "shuffled")  # the manifest says which
    ordered, shuffled = _read_all(tmp_path / "o"), _read_all(tmp_path / "s")
    for o, s in zip(ordered, shuffled):
        jo, js = o["json"], s["json"]
        # the same clip, question and answer; the id says it is the shuffled twin
        assert js["id"] == jo["id"].replace("-video-", "-video-shuffled-") != jo["id"]
        assert js["messages"] == jo["messages"]
        assert {k: v for k, v in js["meta"].items() if k != "frame_order"} == jo["meta"]
        order = js["meta"]["frame_order"]
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]
        frames_o = [np.asarray(o[f"{k:03d}.jpg"]) for k in range(4)]
        frames_s = [np.asarray(s[f"{k:03d}.jpg"]) for k in range(4)]
        # stored frame k of the shuffled clip is frame order[k] of the true clip
        assert all(np.array_equal(frames_s[k], frames_o[order[k]]) for k in range(4))


KILL_AT_WRITE = """
import os
n = int(os.environ.get("KILL_AT_WRITE", "0"))
if n:
    from data_recipes import shards
    real, calls = shards.ShardWriter.write, []

    def write(self, members):
        calls.append(1)
        if len(calls) == n:
            os._exit(9)  # no cleanup, as a SIGKILL or a lost node
        return real(self, members)

    shards.ShardWriter.write = write
"""


def test_a_killed_build_resumes_from_its_last_complete_shard(tmp_path):
    """Killed while writing its 21st sample (shards of 8), the build leaves its two complete shards and its
    resume point; the next build keeps them untouched, goes on from plan position 16, and ends with the
    uninterrupted build's shards and manifest. A build of a changed recipe does not take them up."""
    import json
    import os
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_WRITE)
    rec = write_recipe(tmp_path, "img", kind="image", sources=[{"type": "synthetic_image"}], samples=40,
                       shard_size=8, image_size=32)
    repo = Path(__file__).resolve().parents[1]

    def run(out: Path, kill_at: int = 0, recipe: Path = rec):
        env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{repo}", KILL_AT_WRITE=str(kill_at))
        code = "import sys; from data_recipes.build import build; build(sys.argv[1], sys.argv[2])"
        return subprocess.run([sys.executable, "-c", code, str(recipe), str(out)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    assert run(tmp_path / "whole").returncode == 0
    killed = run(tmp_path / "out", kill_at=21)
    assert killed.returncode == 9
    building = tmp_path / ".img.building"
    assert sorted(f.name for f in building.iterdir()) == [".progress.json", "img-000000.tar", "img-000001.tar",
                                                          "img-000002.tar"]
    kept = {f: (building / f).stat().st_mtime_ns for f in ("img-000000.tar", "img-000001.tar")}
    resumed = run(tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming a killed build at plan position 16 (2 complete shards, 16 samples kept)" in resumed.stderr
    assert {f: (tmp_path / "out" / f).stat().st_mtime_ns for f in kept} == kept  # not written again
    whole, out = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("whole", "out"))
    assert out == whole and out["counts"]["samples"] == 40 and len(out["shards"]) == 5
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(["manifest.json"] + [
        f"img-{i:06d}.tar" for i in range(5)])
    assert not building.exists()

    assert run(tmp_path / "out", kill_at=21).returncode == 9
    changed = write_recipe(tmp_path, "img", kind="image", sources=[{"type": "synthetic_image"}], samples=40,
                           shard_size=8, image_size=32, seed=1)
    again = run(tmp_path / "out", recipe=changed)
    assert again.returncode == 0 and "resuming" not in again.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 1
