"""Instruction data as published (LLaVA-1.5 mix665k, LLaVA-Video-178K, LLaMA-Factory / TRL ShareGPT)
builds into valid shards; records the toolkit does not support are counted apart from bad ones.

The datasets are written by tests/fixtures_real_data.py (real JPEGs and mp4s, rows shaped like the
published ones). Every build is checked record by record: the manifest's `kinds`, `bad` (=
`skipped`) and `unsupported` must equal what the fixture says of the records the build read.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
import yaml

from data_recipes.build import BuildError, build, shard_urls
from data_recipes.recipe import load_recipe
from data_recipes.sources import UNSUPPORTED, Unsupported, open_sources, turns_to_messages, parse_turns
from fixtures_real_data import Fixture, llava_video_178k, mix665k, sharegpt_images, sharegpt_videos
from train.chat import validate_messages

FRAMES = 4
BUILDERS = {"mix665k": (mix665k, "image"), "llava_video_178k": (llava_video_178k, "video"),
            "sharegpt_images": (sharegpt_images, "image"), "sharegpt_videos": (sharegpt_videos, "video")}


def write_recipe(tmp: Path, name: str, fx: Fixture, kind: str, **fields) -> Path:
    p = tmp / f"{name}.yaml"
    fields = {"kind": kind, "samples": fx.good, "frames": FRAMES, "image_size": 32, "max_bad_fraction": 0.5,
              "shard_size": 7, **fields}
    fields["sources"] = [{"type": f"llava_{kind}", "path": str(fx.annotations), "media_root": str(fx.media_root)}]
    p.write_text(yaml.safe_dump(fields))
    return p


def record_ids(fx: Fixture) -> list[str]:
    """Record ids in file order, as the fixture names them (independently of the source code)."""
    if fx.annotations.suffix == ".jsonl":
        ids = []
        for n, line in enumerate(fx.annotations.read_text().splitlines(), 1):
            try:
                rec = json.loads(line)
                ids.append(rec.get("id", f"#{len(ids)}"))
            except json.JSONDecodeError:
                ids.append(f"line {n}")
        return ids
    return [r.get("id", f"#{k}") for k, r in enumerate(json.loads(fx.annotations.read_text()))]


def expected_audit(fx: Fixture, recipe: Path) -> tuple[dict, dict, dict, list[str]]:
    """kinds, bad, unsupported of the records the build reads: in the seeded order, up to the last sample."""
    ids = record_ids(fx)
    assert sorted(ids) == sorted(fx.expected), "fixture and file disagree"
    kinds, bad, unsup, written = Counter(), Counter(), Counter(), []
    for idx in open_sources(load_recipe(str(recipe)))[0].order:
        e = fx.expected[ids[idx]]
        if e[0] == "sample":
            kinds[e[1]] += 1
            written.append(ids[idx])
            if len(written) == fx.good:
                break
        else:
            (bad if e[0] == "bad" else unsup)[e[1]] += 1
    return dict(kinds), dict(bad), dict(unsup), written


def read_samples(out: Path) -> list[dict]:
    return list(wds.WebDataset(shard_urls(out), shardshuffle=False).decode("pil"))


def image_names(s: dict) -> list[str]:
    return ["jpg"] if "jpg" in s else sorted(k for k in s if k.endswith(".jpg"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every format built once: name -> (fixture, recipe path, manifest, samples)."""
    out = {}
    for name, (make, kind) in BUILDERS.items():
        d = tmp_path_factory.mktemp(name)
        fx = make(d / "data")
        recipe = write_recipe(d, name, fx, kind)
        m = build(str(recipe), d / "out")
        out[name] = (fx, recipe, m, read_samples(d / "out"))
    return out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_manifest_counts_by_kind(built, name):
    fx, recipe, m, samples = built[name]
    kinds, bad, unsup, written = expected_audit(fx, recipe)
    assert {k: v for k, v in m["kinds"].items() if v} == kinds
    assert m["bad"] == m["skipped"] == bad
    assert m["unsupported"] == unsup
    assert set(unsup) <= set(UNSUPPORTED)
    assert m["counts"]["samples"] == fx.good == sum(m["kinds"].values())
    assert sorted(s["json"]["id"] for s in samples) == sorted(written)
    n_images = sum(fx.expected[i][2] if fx.expected[i][2] is not None else FRAMES for i in written)
    assert m["counts"]["images"] == n_images
    assert m["counts"]["frames"] == (n_images if BUILDERS[name][1] == "video" else 0)
    assert m["bad_fraction"] == pytest.approx(sum(bad.values()) / (sum(bad.values()) + fx.good))
    assert len(m["unsupported_examples"]) == min(5, sum(unsup.values()))
    assert m["adjusted"] == ({"leading_assistant_turn_dropped": len(fx.adjusted)} if fx.adjusted else {})


def test_every_format_read_something_of_each_kind(built):
    """The seeded orders reach the fixtures' bad and unsupported records (else the counts test proves little)."""
    for name, (fx, recipe, m, _) in built.items():
        assert sum(m["bad"].values()) >= 1 and sum(m["unsupported"].values()) >= 1, name
    assert {k for _, _, m, _ in built.values() for k, v in m["kinds"].items() if v} == {
        "image", "multi_image", "text_only", "video"}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_sample_fits_the_schema(built, name):
    fx, _, m, samples = built[name]
    for s in samples:
        js = s["json"]
        names = image_names(s)
        assert validate_messages(js["messages"], len(names), where=js["id"]) == len(names)
        e = fx.expected[js["id"]]
        assert len(names) == (FRAMES if e[2] is None else e[2])
        assert js["kind"] == BUILDERS[name][1]
        assert all(s[k].width * s[k].height <= 32 * 32 for k in names)  # the resize rule's default budget
        roles = [msg["role"] for msg in js["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2)
        if js["id"] in fx.adjusted:  # the opening assistant turn is gone, the rest kept, and the sample says so
            assert js["messages"][0]["content"] == [{"type": "text", "text": fx.adjusted[js["id"]]}]
            assert len(js["messages"]) == 2 and js["meta"]["adjusted"] == ["leading_assistant_turn_dropped"]
        else:
            assert "adjusted" not in js["meta"]


def _user(samples, rid, turn=0):
    s = next(s for s in samples if s["json"]["id"] == rid)
    return [p.get("text", "<IMG>") for p in s["json"]["messages"][turn]["content"]], s


def test_tags_become_markers_where_they_stood(built):
    samples = built["mix665k"][3]
    ids = {s["json"]["id"] for s in samples}
    layouts = {
        f"{33471:012d}": ["<IMG>", "What are the colors of the bus in the image?"],
        f"{7919 + 33471:012d}": ["What is the man holding in his hand?", "<IMG>"],
        f"{2 * 7919 + 33471:012d}": ["Look at this picture:", "<IMG>", "How many people are visible?"],
        "VG_2356347": ["<IMG>", "Describe the scene briefly."],  # no tag: before the question
        "multi_1": ["Image 1:", "<IMG>", "Image 2:", "<IMG>", "Image 3:", "<IMG>",
                    "Which of these book covers is the odd one out?"],
    }
    for rid, want in layouts.items():
        if rid in ids:
            assert _user(samples, rid)[0] == want, rid
    vid = built["llava_video_178k"][3]
    for s in vid:  # `<image>` (as LLaVA-Video-178K writes it) and `<video>` both stand for the frames
        parts = [p["type"] for p in s["json"]["messages"][0]["content"]]
        assert parts.count("image") == FRAMES and "image" in parts
        if s["json"]["id"] == "nextqa_1150_6":
            assert parts == ["text"] + ["image"] * FRAMES
        assert s["json"]["meta"]["file"].endswith(".mp4")
    assert any(s["json"]["meta"].get("data_source") == "0_30_s_academic_v0_1" for s in vid)
    sg = {s["json"]["id"]: s["json"] for s in built["sharegpt_images"][3]}
    if "#2" in sg:  # top-level "system" becomes a system turn
        assert sg["#2"]["messages"][0] == {"role": "system", "content": [
            {"type": "text", "text": "You are a helpful sports commentator."}]}
    if "#3" in sg:  # one image per turn, in order
        assert [[p["type"] for p in m["content"]] for m in sg["#3"]["messages"]] == [
            ["image", "text"], ["text"], ["text", "image"], ["text"]]
        assert sg["#3"]["meta"]["files"] == ["mllm_demo_data/4.jpg", "mllm_demo_data/5.jpg"]


def test_turn_conversion_rules():
    where = "f record r"
    msgs = turns_to_messages(parse_turns([{"role": "system", "content": "Be brief."}, {"from": "human", "value": "Hi"},
                                          {"role": "assistant", "content": "Hello."}], where), [], None, where)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    with pytest.raises(ValueError, match="may only come first"):
        turns_to_messages(parse_turns([{"from": "human", "value": "a"}, {"from": "system", "value": "b"}], where),
                          [], None, where)
    for conv, media, kind, reason in [
        ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "see <image>"}], [1], "image", "media_tag_placement"),
        ([{"from": "human", "value": "<video> a"}, {"from": "gpt", "value": "b"}], [1], "image", "media_tag_mismatch"),
        ([{"from": "human", "value": "a b"}, {"from": "gpt", "value": "c"}], [1, 1], "image", "media_tag_mismatch"),
        ([{"from": "human", "value": "<audio> a"}, {"from": "gpt", "value": "c"}], [], None, "audio"),
        ([{"from": "human", "value": "a"}, {"from": "observation", "value": "{}"}], [], None, "tool_turns"),
    ]:
        with pytest.raises(ValueError) as e:
            turns_to_messages(parse_turns(conv, where), media, kind, where)
        assert getattr(e.value, "reason", None) == reason and where in str(e.value)


def test_unsupported_records_do_not_use_the_bad_budget(tmp_path):
    """An image build with 10% unsupported records (video rows, audio rows, tag mismatches) succeeds with
    max_bad_fraction 0; one bad record among the same then fails it."""
    media = tmp_path / "media"
    from fixtures_real_data import g, h, jpeg

    recs = []
    for i in range(36):
        jpeg(media / f"coco/{i:012d}.jpg", i)
        recs.append({"id": f"c{i}", "image": f"coco/{i:012d}.jpg",
                     "conversations": [h(f"<image>\nWhat is object {i}?"), g(f"Object {i} is a cup.")]})
    recs[5:5] = [{"id": f"t{i}", "conversations": [h(f"Question {i}?"), g(f"Answer {i}.")]} for i in range(4)]
    unsupported = [{"id": "u0", "video": "v.mp4", "conversations": [h("<video>\nWhat?"), g("x")]},
                   {"id": "u1", "audio": "a.wav", "conversations": [h("<audio>\nWhat?"), g("x")]},
                   {"id": "u2", "image": "coco/000000000001.jpg", "conversations": [h("<image><image>"), g("x")]},
                   {"id": "u3", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "{}"}]}]
    recs = recs + unsupported  # 40 good + 4 unsupported: 10% of the file

    def recipe_reading_all(name: str) -> Path:
        """A recipe whose seeded order puts a good record last, so that the build reads every record."""
        (tmp_path / "ann.json").write_text(json.dumps(recs))
        fx = Fixture(tmp_path / "ann.json", media)
        for seed in range(100):
            recipe = write_recipe(tmp_path, name, fx, "image", samples=40, max_bad_fraction=0.0, seed=seed)
            if recs[open_sources(load_recipe(str(recipe)))[0].order[-1]]["id"][0] in "ct":
                return recipe
        raise AssertionError("no seed reads every record")

    m = build(str(recipe_reading_all("mixed")), tmp_path / "out")
    assert m["counts"]["samples"] == 40 and m["bad"] == {} and m["bad_fraction"] == 0.0
    assert m["kinds"]["image"] == 36 and m["kinds"]["text_only"] == 4
    assert m["unsupported"] == {"video_in_image_recipe": 1, "audio": 1, "media_tag_mismatch": 1, "tool_turns": 1}

    recs.append({"id": "b0", "image": "coco/missing.jpg", "conversations": [h("<image>\nWhat?"), g("x")]})
    with pytest.raises(BuildError, match=r"1 of 41 records are bad.*missing_image.*besides 4 unsupported records"):
        build(str(recipe_reading_all("mixed_bad")), tmp_path / "out2")


def test_unsupported_records_are_reported_when_the_sources_run_short(tmp_path):
    fx = llava_video_178k(tmp_path / "data")
    recipe = write_recipe(tmp_path, "short", fx, "video", samples=fx.good + 1)
    with pytest.raises(BuildError, match=r"ran out after \d+ usable samples.*unsupported records by reason: \{"):
        build(str(recipe), tmp_path / "out")


def test_sources_mark_unsupported_apart(tmp_path):
    fx = mix665k(tmp_path / "data")
    src = open_sources(load_recipe(str(write_recipe(tmp_path, "r", fx, "image"))))[0]
    out = [src.make(i) for i in range(len(src))]
    got = Counter(o.reason for o in out if isinstance(o, Unsupported))
    assert got == Counter(e[1] for e in fx.expected.values() if e[0] == "unsupported")


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from helpers import tiny_model
    from train.families import load_model

    return load_model(tiny_model("llava", tmp_path_factory))[1]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shards_stream_and_encode(built, processor, name):
    from train.data import ShardStream, shard_counts_from_manifest

    fx, recipe, m, _ = built[name]
    urls, counts = shard_counts_from_manifest(recipe.parent / "out")
    stream = ShardStream(urls, processor, batch_size=4, seed=1, shuffle_buffer=8, shard_counts=counts)
    total, seen = m["counts"]["samples"], {}
    for batch in stream.reader_batches(0, 1):  # one pass (the last batch may run into the next one)
        assert batch.inputs["input_ids"].shape[0] == len(batch.keys)
        assert all(v > 0 for v in batch.counts["supervised_tokens"])
        for key, n_img, vis in zip(batch.keys, batch.counts["images"], batch.counts["visual_tokens"]):
            assert (vis > 0) == (n_img > 0)
            seen.setdefault(key, n_img)
        if len(seen) >= total:
            break
    assert len(seen) == total and sum(seen.values()) == m["counts"]["images"]
    assert stream.errors == 0


def test_worker_processes_give_the_same_build(built, tmp_path, monkeypatch):
    """Two workers build the same shards, and the annotation file is parsed once, by the build itself: the
    workers inherit its records (each used to parse the whole file again: several GB a worker for
    mix665k's JSON list)."""
    import os

    from data_recipes import sources

    parses, real = tmp_path / "parses", sources.LlavaSource.__init__

    def counted(self, *args, **kwargs):
        with open(parses, "a") as f:  # a file: the forked workers' calls count too
            f.write(f"{os.getpid()}\n")
        real(self, *args, **kwargs)

    monkeypatch.setattr(sources.LlavaSource, "__init__", counted)
    fx, recipe, m, _ = built["mix665k"]
    m2 = build(str(recipe), tmp_path / "out", workers=2)
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]
    assert (m2["kinds"], m2["bad"], m2["unsupported"]) == (m["kinds"], m["bad"], m["unsupported"])
    assert parses.read_text().split() == [str(os.getpid())]


def test_the_same_data_builds_the_same_shards_wherever_it_lies(built, tmp_path):
    """The record order is seeded by the recipe's seed and the annotation file's name, not by where the
    data is mounted: a copy elsewhere builds byte-identical shards."""
    import shutil

    fx, recipe, m, _ = built["llava_video_178k"]
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(fx.annotations.parent, moved)
    fields = yaml.safe_load(Path(recipe).read_text())
    src = fields["sources"][0]
    src["path"] = str(moved / Path(src["path"]).relative_to(fx.annotations.parent))
    src["media_root"] = str(moved / Path(src["media_root"]).relative_to(fx.annotations.parent))
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(fields))
    m2 = build(str(tmp_path / "moved.yaml"), tmp_path / "out")
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]


def test_a_matroska_video_is_counted_once(tmp_path, monkeypatch):
    """An MKV (like WebM and fragmented MP4) has no frame count in its header, so counting its frames means
    decoding it whole. A record's video is counted once and its frames read once: the read and the
    sampled-frame rate each counted it again (three passes over the file)."""
    import av
    import numpy as np

    from helpers import count_decoded

    media = tmp_path / "videos"
    media.mkdir()
    n = 24
    with av.open(str(media / "clip.mkv"), "w", format="matroska") as c:
        stream = c.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = i
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    (tmp_path / "ann.json").write_text(json.dumps([{"id": "mkv1", "video": "clip.mkv", "conversations": [
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It gets brighter."}]}]))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"kind": "video", "samples": 1, "frames": 4, "sources": [
        {"type": "llava_video", "path": str(tmp_path / "ann.json"), "media_root": str(media)}]}))
    source = open_sources(load_recipe(str(tmp_path / "r.yaml")))[0]
    decoded = count_decoded(monkeypatch)
    sample = source.make(0)
    assert len(sample.images) == 4 and sample.json["clip_fps"] == [round(4 / n * 8, 6)]
    assert n < len(decoded) <= 2 * n, len(decoded)  # one pass to count, at most one to read


def test_a_killed_build_is_not_resumed_over_changed_annotations(built, tmp_path):
    """A killed build's shards are kept only for the same annotation files: one edited in between (a record
    fixed) changes the resume key, so the build starts over."""
    import os
    import shutil

    from data_recipes.build import resume_key

    fx, recipe, _, _ = built["mix665k"]
    copy = tmp_path / fx.annotations.name
    shutil.copy(fx.annotations, copy)
    fields = yaml.safe_load(Path(recipe).read_text())
    fields["sources"][0]["path"] = str(copy)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(fields))
    r = load_recipe(str(tmp_path / "r.yaml"))
    before = resume_key(r, open_sources(r), limit=None, model=None, unit="samples", target=fx.good)
    assert resume_key(r, open_sources(r), limit=None, model=None, unit="samples", target=fx.good) == before
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 1_000_000_000))
    assert resume_key(r, open_sources(r), limit=None, model=None, unit="samples", target=fx.good) != before
