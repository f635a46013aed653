"""Corrupt and bad input, one row each: what enters where, and how the toolkit handles it.

Handling is either an ERROR (the toolkit's own exception type, naming the file, the field and what was
expected) or a counted SKIP (the record is left out and counted where that part reports it: the
manifest's `skipped`, `ShardStream.errors`, a benchmark's `problems`, an evaluation row's `error`).
A row whose check is a test's node id (`tests/test_x.py::test_name`) is tested by that test; the
others are tested here. The second half covers the safety rules (safetensors only, no
remote code unless asked, the UI on loopback, names that cannot leave their directory, `--verify`).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import pytest
import yaml
from PIL import Image

from data_recipes.__main__ import main as recipes_cli
from data_recipes.build import BuildError, build, read_manifest, shard_urls, verify
from data_recipes.recipe import RecipeError, load_recipe, parse_recipe
from data_recipes.shards import ShardWriter, sample_members
from data_recipes.sources import open_sources
from data_recipes.synthetic import video_sample
from data_recipes.video import write_video
from evalsuite.benchmarks.video_qa import BenchmarkError, EgoSchema
from evalsuite.checkpoints import CheckpointError, checkpoint_ref
from evalsuite.benchmarks.iraven.loader import IRavenFormatError, read_npz
from helpers import tiny_model
from train.chat import ConversationError, validate_messages
from train.data import ShardStream
from train.families import FamilyError, detect_family, load_model

REPO = Path(__file__).resolve().parents[1]
FRAMES = 3


class Inputs:
    """Shared, lazily built material: a small video build, a tiny model, an I-RAVEN file."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.root = tmp_path_factory.mktemp("inputs")

    @cached_property
    def shards(self) -> Path:
        recipe = self.root / "vid.yaml"
        recipe.write_text(yaml.safe_dump({"kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 10,
                                          "frames": FRAMES, "image_size": 32, "shard_size": 5}))
        build(str(recipe), self.root / "vid")
        return self.root / "vid"

    @cached_property
    def model(self) -> Path:
        return tiny_model("llava", self.factory)

    @cached_property
    def processor(self):
        from data_recipes.processors import load_processor

        return load_processor(self.model)

    @cached_property
    def npz(self) -> Path:
        from evalsuite.benchmarks.iraven.generate import generate_dataset
        from evalsuite.benchmarks.iraven.layouts import CONFIG_NAMES

        generate_dataset(self.root / "iraven", 10, seed=1, configs=[CONFIG_NAMES[0]])
        return sorted((self.root / "iraven" / CONFIG_NAMES[0]).glob("*.npz"))[0]

    def copy_shards(self, tmp: Path) -> Path:
        return Path(shutil.copytree(self.shards, tmp / "vid"))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return Inputs(tmp_path_factory)


def raises(exc, match: str, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- shards and the training stream --------------------------------------------------------------------
def _cut_inside(shard: Path, member: str) -> None:
    """Truncate a tar in the middle of one member's data, as an interrupted copy leaves it."""
    with tarfile.open(shard) as t:
        m = t.getmember(member)
    shard.write_bytes(shard.read_bytes()[: m.offset_data + m.size // 2])


def truncated_shard(tmp, fx):
    out = fx.copy_shards(tmp)
    urls = shard_urls(out)
    _cut_inside(Path(urls[0]), "000000002.001.jpg")  # sample 2 keeps its json and 1 of its 3 frames
    intact = {"000000000", "000000001", "000000005", "000000006", "000000007", "000000008", "000000009"}
    stream = ShardStream(urls, fx.processor, batch_size=2, seed=0, shuffle_buffer=4)
    seen = []
    for batch, _ in zip(stream, range(len(intact))):  # two passes of real, collated batches
        seen += batch.keys
        assert batch.counts["images"] == [FRAMES, FRAMES]  # never a half sample
    assert sorted(seen) == sorted(list(intact) * 2)  # 7 batches of 2 = the 7 intact samples, twice
    assert stream.errors >= 2 * 2  # per pass: the tar read error and the incomplete sample 2
    assert any("000000002" in e and "3 image markers" in e and "but 1 images" in e for e in stream.error_examples)
    problems = verify(out)  # and data_recipes verify names the shard
    assert len(problems) == 1 and Path(urls[0]).name in problems[0] and "does not match" in problems[0]
    assert recipes_cli(["verify", str(out)]) == 1


def _shard(tmp: Path, samples: list[list[tuple[str, bytes]]]) -> str:
    w = ShardWriter(tmp, "bad", shard_size=100)
    for members in samples:
        w.write(members)
    w.close()
    return str(tmp / "bad-000000.tar")


def _good(key: str, i: int):
    js, ims = video_sample(0, i, "train", frames=FRAMES, image_size=32)
    return sample_members(key, js, ims)


def wrong_sample_json_in_shard(tmp, fx):
    js, ims = video_sample(0, 9, "train", frames=FRAMES, image_size=32)
    no_messages = sample_members("k1", {k: v for k, v in js.items() if k != "messages"}, ims)
    extra_marker = dict(js, messages=[dict(js["messages"][0], content=[{"type": "image"}] + js["messages"][0]["content"]),
                                      *js["messages"][1:]])
    image_in_answer = dict(js, messages=[*js["messages"][:-1], {"role": "assistant", "content": [{"type": "image"}]}])
    url = _shard(tmp, [
        _good("k0", 0),
        no_messages,
        [("k2.json", b'{"id": "k2", "messa')] + sample_members("k2", js, ims)[1:],   # undecodable json
        sample_members("k3", extra_marker, ims),                                      # 4 markers, 3 frames
        sample_members("k4", image_in_answer, ims),
        [("k5.json", b"[1, 2]")] + sample_members("k5", js, ims)[1:],                 # not an object
        sample_members("k6", js, ims)[1:],                                            # frames, no json
        _good("k7", 1),
    ])
    stream = ShardStream([url], fx.processor, batch_size=2, seed=0, shuffle_buffer=1)
    keys = [s["__key__"] for p, s in zip(range(100), stream._raw(0, 0, 1))]
    assert sorted(keys) == ["k0", "k7"] and stream.errors == 6
    text = "\n".join(stream.error_examples)
    assert f"{url}: sample k1: field 'messages' must be a non-empty list" in text
    assert "sample k3: 4 image markers in 'messages' but 3 images" in text
    assert "sample k4: messages[1] is an assistant turn with an image" in text


def manifest_not_json(tmp, fx):
    out = fx.copy_shards(tmp)
    (out / "manifest.json").write_text('{"recipe": "vid", "shards": [')
    raises(BuildError, r"manifest\.json: not valid JSON", read_manifest, out)
    assert recipes_cli(["verify", str(out)]) == 2


def manifest_shard_name_escapes(tmp, fx):
    out = fx.copy_shards(tmp)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["name"] = "../../elsewhere.tar"
    (out / "manifest.json").write_text(json.dumps(m))
    raises(BuildError, r"shard name '\.\./\.\./elsewhere\.tar' is not a plain \.tar file name", shard_urls, out)


def missing_and_extra_shard(tmp, fx):
    out = fx.copy_shards(tmp)
    names = [s["name"] for s in read_manifest(out)["shards"]]
    (out / names[1]).unlink()
    shutil.copy(out / names[0], out / "vid-000007.tar")
    problems = verify(out)
    assert problems == [f"{out / names[1]}: missing", f"{out / 'vid-000007.tar'}: not in the manifest"]


# --- LLaVA sources ---------------------------------------------------------------------------------------
def _llava(tmp: Path, video: bool, bad_name: str, bad_bytes: bytes) -> Path:
    media = tmp / "media"
    media.mkdir()
    field, recs = ("video" if video else "image"), []
    for i in range(3):
        name = f"{i}.{'mp4' if video else 'jpg'}"
        if video:
            write_video(media / name, [Image.new("RGB", (32, 32), (20 * k, 90, 200 - 20 * k)) for k in range(8)])
        else:
            Image.new("RGB", (40, 32), (30 * i, 60, 90)).save(media / name, quality=90)
        recs.append({"id": f"r{i}", field: name,
                     "conversations": [{"from": "human", "value": f"<{field}>\nWhat is {i}?"},
                                       {"from": "gpt", "value": f"It is {i}."}]})
    (media / bad_name).write_bytes(bad_bytes)
    recs.append({"id": "bad", field: bad_name, "conversations": recs[0]["conversations"]})
    (tmp / "ann.json").write_text(json.dumps(recs))
    recipe = tmp / "real.yaml"
    for seed in range(20):  # records are read in a seeded shuffled order: pick one that meets the bad record
        recipe.write_text(yaml.safe_dump({"kind": field, "samples": 3, "frames": FRAMES, "image_size": 32, "seed": seed,
                                          "max_bad_fraction": 0.5, "sources": [{"type": f"llava_{field}",
                                          "path": str(tmp / "ann.json"), "media_root": str(media)}]}))
        if open_sources(load_recipe(str(recipe)))[0].order.index(3) < 3:  # before the last good one: it is read
            break
    return recipe


def truncated_jpeg(tmp, fx):
    whole = tmp / "whole.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(whole, quality=95)
    data = whole.read_bytes()
    m = build(str(_llava(tmp, False, "cut.jpg", data[: len(data) // 2])), tmp / "out")
    assert m["skipped"] == {"unreadable_image": 1} and m["counts"]["samples"] == 3
    assert "record bad" in m["skipped_examples"][0] and "cut.jpg" in m["skipped_examples"][0]


def broken_png(tmp, fx):
    """A PNG whose second IDAT chunk is damaged: it opens, and PIL's load raises SyntaxError, not OSError."""
    import io

    buf = io.BytesIO()
    Image.effect_noise((400, 300), 60).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    second = data.index(b"IDAT", data.index(b"IDAT") + 4)
    data = data[:second] + b"P'>\x0b" + data[second + 4:]
    with pytest.raises(SyntaxError):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    m = build(str(_llava(tmp, False, "broken.png", data)), tmp / "out")
    assert m["skipped"] == {"unreadable_image": 1} and m["counts"]["samples"] == 3
    assert "broken.png" in m["skipped_examples"][0] and "broken PNG file" in m["skipped_examples"][0]


def truncated_mp4(tmp, fx):
    write_video(tmp / "whole.mp4", [Image.new("RGB", (32, 32), (9 * k, 50, 50)) for k in range(12)])
    data = (tmp / "whole.mp4").read_bytes()
    m = build(str(_llava(tmp, True, "cut.mp4", data[: len(data) // 2])), tmp / "out")
    assert m["skipped"] == {"unreadable_video": 1} and m["counts"]["samples"] == 3
    assert "cut.mp4" in m["skipped_examples"][0]


def annotations_not_json(tmp, fx):
    recipe = _llava(tmp, False, "x.jpg", b"")
    (tmp / "ann.json").write_text('[{"id": "r0", "image": ')
    raises(RecipeError, r"ann\.json: not valid JSON .*expected a JSON list of \{'id', 'image', 'conversations'\}",
           build, str(recipe), tmp / "out")
    (tmp / "ann.json").write_text('{"r0": {}}')
    raises(RecipeError, r"ann\.json: top level must be a list of records", build, str(recipe), tmp / "out")


def annotations_not_utf8(tmp, fx):
    """One line written by a latin-1 tool costs its record in a JSONL file; a JSON list that is not UTF-8 is an
    error naming the file and the byte."""
    recipe = _llava(tmp, False, "x.jpg", b"")
    recs = json.loads((tmp / "ann.json").read_text())[:3]
    lines = [json.dumps(r).encode() for r in recs]
    lines.insert(1, json.dumps({**recs[0], "id": "cafe"}).encode().replace(b"cafe", b"caf\xe9"))
    (tmp / "ann.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    spec = yaml.safe_load(recipe.read_text())
    spec["sources"][0]["path"] = str(tmp / "ann.jsonl")
    spec["samples"] = 3
    recipe.write_text(yaml.safe_dump(spec))
    m = build(str(recipe), tmp / "out")
    assert m["skipped"] == {"malformed_record": 1} and m["counts"]["samples"] == 3, (m["skipped"], m["counts"])
    assert re.search(r"ann\.jsonl line 2: not UTF-8 \(byte \d+: b'\\xe9'\)", m["skipped_examples"][0])
    (tmp / "ann.json").write_bytes((tmp / "ann.json").read_bytes().replace(b"What", b"Wh\xe9t", 1))
    spec["sources"][0]["path"] = str(tmp / "ann.json")
    recipe.write_text(yaml.safe_dump(spec))
    raises(RecipeError, r"ann\.json: not UTF-8 text \(byte \d+: b'\\xe9'\)", build, str(recipe), tmp / "out2")


def media_folder_missing(tmp, fx):
    recipe = _llava(tmp, False, "x.jpg", b"")
    shutil.rmtree(tmp / "media")
    raises(RecipeError, r"sources\[0\]: media folder .*media does not exist", build, str(recipe), tmp / "out")


# --- sample JSON -------------------------------------------------------------------------------------------
def messages_missing(tmp, fx):
    sample = {"id": "x", "kind": "image"}
    raises(ConversationError, r"shard-7\.tar: sample x: field 'messages' must be a non-empty list of turns",
           validate_messages, sample.get("messages"), 1, where="shard-7.tar: sample x")
    raises(ConversationError, r"messages\[0\]\.content must be a string or a list of parts",
           validate_messages, [{"role": "user", "content": 5}])


# --- EgoSchema ------------------------------------------------------------------------------------------
def _egoschema(tmp: Path, questions, answers) -> Path:
    (tmp / "videos").mkdir(parents=True, exist_ok=True)
    (tmp / "questions.json").write_text(questions if isinstance(questions, str) else json.dumps(questions))
    (tmp / "subset_answers.json").write_text(json.dumps(answers))
    return tmp


def _q(uid: str, **fields) -> dict:
    return {"q_uid": uid, "question": "What happened?", **{f"option {i}": f"o{i}" for i in range(5)}} | fields


def egoschema_bad_entries(tmp, fx):
    q0 = _q("q0")
    del q0["question"]
    raises(BenchmarkError, r"questions\.json: q_uid q0 has no field 'question'",
           EgoSchema, _egoschema(tmp, [q0], {"q0": 1}), None, None)
    raises(BenchmarkError, r"questions\.json: question \[1\] must be an object",
           EgoSchema, _egoschema(tmp, [_q("q0"), "q1"], {"q0": 1}), None, None)
    raises(BenchmarkError, r"subset_answers\.json: answer 'A' of q_uid q0 is not 0\.\.4",
           EgoSchema, _egoschema(tmp, [_q("q0")], {"q0": "A"}), None, None)
    raises(BenchmarkError, r"subset_answers\.json: answer 7 of q_uid q0 is not 0\.\.4",
           EgoSchema, _egoschema(tmp, [_q("q0")], {"q0": 7}), None, None)
    raises(BenchmarkError, r"subset_answers\.json: expected a mapping",
           EgoSchema, _egoschema(tmp, [_q("q0")], [1]), None, None)
    raises(BenchmarkError, r"questions\.json: not valid JSON",
           EgoSchema, _egoschema(tmp, '[{"q_uid": "q0",', {"q0": 1}), None, None)
    bench = EgoSchema(_egoschema(tmp, [_q("q0"), _q("q1")], {"q0": "2", "q1": 0}), None, None)
    assert bench.items == [] and len(bench.problems) == 2  # well-formed, but no videos: counted, not fatal
    assert bench.problems[0] == {"id": "q0", "reason": f"missing video {tmp.resolve() / 'videos' / 'q0.mp4'}"}


def egoschema_uid_escapes(tmp, fx):
    raises(BenchmarkError, r"q_uid '\.\./\.\./etc/x' is not a plain file name",
           EgoSchema, _egoschema(tmp, [_q("../../etc/x")], {"../../etc/x": 1}), None, None)


# --- I-RAVEN ----------------------------------------------------------------------------------------------
def iraven_unreadable_npz(tmp, fx):
    data = fx.npz.read_bytes()
    d = tmp / fx.npz.parent.name
    d.mkdir()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    for name, content in [("empty", b""), ("cut", data[: len(data) // 2]), ("flipped", bytes(flipped)),
                          ("pickle", b"not an npz at all")]:
        f = d / "RAVEN_3_test.npz"
        f.write_bytes(content)
        raises(IRavenFormatError, rf"{f}: not a readable \.npz file", read_npz, f)
    raises(IRavenFormatError, r"file name should be RAVEN_<k>_<split>\.npz", read_npz, d / "puzzle.npz")


# --- recipes ----------------------------------------------------------------------------------------------
def recipe_not_yaml_or_not_a_mapping(tmp, fx):
    f = tmp / "r.yaml"
    f.write_text("kind: image\nsources: [{type: synthetic_image\n")
    raises(RecipeError, r"r\.yaml: not valid YAML", load_recipe, str(f))
    f.write_text("- kind\n- image\n")
    raises(RecipeError, r"r\.yaml: a recipe must be a mapping of fields, got list", load_recipe, str(f))


def recipe_source_without_type(tmp, fx):
    raises(RecipeError, r"r\.yaml: sources\[0\]: field 'type' is required",
           parse_recipe, {"kind": "image", "sources": [{"weight": 2}], "samples": 3}, "r", "r.yaml")


def recipe_name_escapes(tmp, fx):
    for name in ("../up", "a/b", ".hidden"):
        raises(RecipeError, r"field 'name' must be letters, digits",
               parse_recipe, {"name": name, "kind": "image", "sources": [{"type": "synthetic_image"}], "samples": 1},
               "r", "r.yaml")


# --- checkpoints and models -----------------------------------------------------------------------------
def _bin_only(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return dst


def checkpoint_without_weights(tmp, fx):
    d = tmp / "noweights"
    d.mkdir()
    shutil.copy(fx.model / "config.json", d / "config.json")
    raises(FamilyError, r"has no \*\.safetensors weights\.$", load_model, d)
    raises(CheckpointError, r"is not a checkpoint: no adapter_config\.json", checkpoint_ref, d)
    (d / "run.json").write_text("{'not': json")
    raises(CheckpointError, r"run\.json: not valid JSON", checkpoint_ref, d)


def config_without_model_type(tmp, fx):
    (tmp / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    raises(FamilyError, r"config\.json: field 'model_type' missing", detect_family, tmp)


def adapter_without_safetensors(tmp, fx):
    d = tmp / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text("{}")
    (d / "run.json").write_text(json.dumps({"base_model": str(fx.model)}))
    (d / "adapter_model.bin").write_bytes(b"pickled")
    raises(CheckpointError, r"no adapter_model\.safetensors .*adapter_model\.bin only", checkpoint_ref, d)


@dataclass
class Row:
    case: str
    enters: str
    handling: str
    check: Callable | str
    """A function (tmp_path, fx) run here, or 'tests/test_x.py::test_name': the test that covers it."""


ROWS = [
    # shards and the training stream
    Row("tar shard truncated mid-member", "train.data.ShardStream / data_recipes verify",
        "skip: ShardStream.errors (+ the cut sample); verify names the shard, exit 1", truncated_shard),
    Row("shard byte modified", "data_recipes verify", "error: sha256 mismatch, exit 1",
        "tests/test_recipes.py::test_verify_detects_tampering"),
    Row("shard missing / extra shard", "data_recipes verify", "error: 'missing' / 'not in the manifest'",
        missing_and_extra_shard),
    Row("sample json: no messages, undecodable, not an object, markers != frames, image in answer, no json",
        "train.data.ShardStream", "skip: ShardStream.errors, examples name shard+sample+field",
        wrong_sample_json_in_shard),
    Row("manifest.json not JSON", "data_recipes read_manifest / verify", "error: BuildError, exit 2", manifest_not_json),
    Row("manifest shard name with ../", "data_recipes read_manifest", "error: BuildError", manifest_shard_name_escapes),
    # LLaVA sources
    Row("JPEG cut in half", "llava_image source", "skip: manifest skipped.unreadable_image", truncated_jpeg),
    Row("zero-byte / garbage JPEG and mp4, missing media file, malformed conversation", "llava_* source",
        "skip: manifest skipped by reason", "tests/test_recipes.py::test_real_sources_build_and_count_bad_records"),
    Row("PNG with a damaged chunk (PIL raises SyntaxError)", "llava_image source",
        "skip: manifest skipped.unreadable_image", broken_png),
    Row("mp4 cut in half", "llava_video source", "skip: manifest skipped.unreadable_video", truncated_mp4),
    Row("too many bad records", "data_recipes build", "error: BuildError naming the first records",
        "tests/test_recipes.py::test_real_sources_build_and_count_bad_records"),
    Row("annotation file not JSON / not a list", "llava_* source", "error: RecipeError with the layout", annotations_not_json),
    Row("annotation file not UTF-8 (a JSONL line / a JSON list)", "llava_* source",
        "skip: manifest skipped.malformed_record / error: RecipeError naming the byte", annotations_not_utf8),
    Row("annotation file missing", "llava_* source", "error: RecipeError with the layout",
        "tests/test_recipes.py::test_missing_annotation_file_explains_layout"),
    Row("media folder missing", "llava_* source", "error: RecipeError", media_folder_missing),
    Row("$DATA_ROOT unset", "recipe paths", "error: RecipeError", "tests/test_recipes.py::test_missing_data_root_is_explained"),
    # sample / conversation schema
    Row("messages missing, content of the wrong type", "train.chat.validate_messages", "error: ConversationError",
        messages_missing),
    Row("assistant turn with an image, unknown role, bad part", "train.chat.validate_messages",
        "error: ConversationError", "tests/test_families.py::test_bad_conversations"),
    Row("markers != images", "train.chat.validate_messages", "error: ConversationError",
        "tests/test_families.py::test_marker_count_must_match_images"),
    # EgoSchema
    Row("question with 4 options, questions.json missing", "evalsuite.benchmarks.video_qa.EgoSchema",
        "error: BenchmarkError", "tests/test_eval_egoschema.py::test_egoschema_errors_name_the_file_and_question"),
    Row("video missing / undecodable", "evalsuite vcot", "skip: metrics.json problems / errors",
        "tests/test_eval_egoschema.py::test_egoschema_end_to_end_with_missing_and_broken_videos"),
    Row("question without text, entry not an object, answer not 0..4, answers not a mapping, not JSON",
        "evalsuite.benchmarks.video_qa.EgoSchema", "error: BenchmarkError", egoschema_bad_entries),
    Row("q_uid with ../", "evalsuite.benchmarks.video_qa.EgoSchema", "error: BenchmarkError", egoschema_uid_escapes),
    # I-RAVEN
    Row("npz image of the wrong shape", "evalsuite.benchmarks.iraven.loader", "error: IRavenFormatError",
        "tests/test_iraven_loader.py::test_wrong_image_shape_names_file_field_and_expectation"),
    Row("npz wrong dtype, missing field, target out of range", "evalsuite.benchmarks.iraven.loader",
        "error: IRavenFormatError", "tests/test_iraven_loader.py::test_wrong_dtype_and_missing_field_are_reported"),
    Row("npz empty, cut, bit-flipped, not a zip; bad file name", "evalsuite.benchmarks.iraven.loader",
        "error: IRavenFormatError", iraven_unreadable_npz),
    # recipes
    Row("recipe with an unknown key / unknown source type / no sources", "data_recipes.recipe",
        "error: RecipeError with did-you-mean", "tests/test_recipes.py::test_bad_recipes_name_file_and_field"),
    Row("recipe not YAML / not a mapping", "data_recipes.recipe", "error: RecipeError",
        recipe_not_yaml_or_not_a_mapping),
    Row("source without 'type'", "data_recipes.recipe", "error: RecipeError", recipe_source_without_type),
    Row("recipe name with .. or /", "data_recipes.recipe", "error: RecipeError", recipe_name_escapes),
    Row("unknown recipe name", "data_recipes.recipe", "error: RecipeError", "tests/test_recipes.py::test_unknown_recipe_suggests"),
    # checkpoints and models
    Row("model dir without weights; run.json not JSON", "train.families.load_model / evalsuite.checkpoints",
        "error: FamilyError / CheckpointError", checkpoint_without_weights),
    Row("model dir with pytorch_model.bin only", "train.families.load_model", "error: FamilyError",
        "tests/test_families.py::test_checkpoint_without_safetensors_is_refused"),
    Row("adapter with adapter_model.bin only", "evalsuite.checkpoints", "error: CheckpointError",
        adapter_without_safetensors),
    Row("run.json without weights under CKPT_DIR", "evalsuite all (discover)", "skip: warning, listed as broken",
        "tests/test_eval_cli.py::test_discovery_skips_training_states_and_reports_broken_checkpoints"),
    Row("config.json without model_type", "train.families.detect_family", "error: FamilyError", config_without_model_type),
    Row("unsupported family (model_type / name)", "train.families", "error: FamilyError listing the supported ones",
        "tests/test_families.py::test_unknown_family_lists_supported"),
    Row("training flag unknown / ill-typed / run_name with ../", "train.config", "error: ConfigError",
        "tests/test_train.py::test_bad_settings_are_errors"),
]


@pytest.mark.parametrize("row", [r for r in ROWS if callable(r.check)], ids=lambda r: r.check.__name__)
def test_bad_input_is_handled(row, tmp_path, fx):
    row.check(tmp_path, fx)


def test_every_row_says_how_it_is_handled_and_where_it_is_tested():
    for r in ROWS:
        assert r.handling.split(":")[0] in ("error", "skip"), r
        assert callable(r.check) or re.fullmatch(r"tests/test_\w+\.py::test_\w+", r.check), r


# --- safety ---------------------------------------------------------------------------------------------
def test_pickled_weights_are_refused_by_every_loader(tmp_path, fx, monkeypatch):
    import torch

    from evalsuite.checkpoints import load_checkpoint
    from evalsuite.generation import ChatModel

    d = _bin_only(fx.model, tmp_path / "bin")

    def unpickling(*a, **k):
        raise AssertionError("a pickled weights file was loaded")

    monkeypatch.setattr(torch, "load", unpickling)
    raises(FamilyError, r"no \*\.safetensors weights\. It holds \.bin weights only", load_model, d)
    raises(CheckpointError, r"is not a checkpoint.*\.bin weights only", checkpoint_ref, d)
    raises(CheckpointError, r"is not a checkpoint.*\.bin weights only", load_checkpoint, d)
    with pytest.raises(Exception) as err:  # the text-model fallback (rephraser, judge) refuses it too
        ChatModel.load(d)
    assert not isinstance(err.value, AssertionError), err.value


def test_remote_code_is_off_unless_asked(monkeypatch, fx):
    import transformers

    from evalsuite.checkpoints import load_checkpoint
    from evalsuite.cli import build_parser, config_from
    from train.config import TrainConfig

    seen = []

    def spy(cls, name):
        real = getattr(cls, "from_pretrained")

        def from_pretrained(*a, **k):
            seen.append((name, k.get("trust_remote_code"), k.get("use_safetensors")))
            return real(*a, **k)
        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    spy(transformers.LlavaForConditionalGeneration, "model")
    spy(transformers.AutoTokenizer, "tokenizer")
    load_model(fx.model)
    load_checkpoint(fx.model)
    assert seen and all(trc is False for _, trc, _ in seen), seen
    assert all(st is True for n, _, st in seen if n == "model")
    assert TrainConfig().trust_remote_code is False
    args = build_parser().parse_args(["vcot", "ckpt"])
    assert config_from(args).trust_remote_code is False
    assert config_from(build_parser().parse_args(["vcot", "ckpt", "--trust-remote-code"])).trust_remote_code is True


def test_source_never_hardcodes_remote_code_or_pickled_weights():
    """No call in the toolkit passes trust_remote_code=True or use_safetensors=False literally."""
    offenders = []
    for f in sorted(p for pkg in ("train", "evalsuite", "data_recipes") for p in (REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant) and (
                    (node.arg == "trust_remote_code" and node.value.value is True)
                    or (node.arg in ("use_safetensors", "safe_serialization") and node.value.value is False)
                    or (node.arg == "allow_pickle" and node.value.value is True)):
                offenders.append(f"{f.relative_to(REPO)}:{node.value.lineno} {node.arg}={node.value.value}")
    assert not offenders


def test_make_ui_binds_loopback_only():
    text = (REPO / "Makefile").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ui:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line)
    cmd = " ".join(recipe)
    assert "mlflow ui" in cmd and "--host 127.0.0.1" in cmd, cmd
    assert "0.0.0.0" not in text and "--host ::" not in text


def test_evalsuite_output_dirs_cannot_be_named_from_outside(tmp_path):
    from evalsuite.cli import main
    from evalsuite.config import ConfigError
    from evalsuite.tasks import get_task

    # The task name is the only name in CKPT/eval/<task>/; it must be a registered task.
    for name in ("../vcot", "vcot/../../x", str(tmp_path / "x")):
        with pytest.raises(ConfigError, match="Unknown task"):
            get_task(name)
        assert main([name, str(tmp_path)]) == 2


def test_verify_flag_stops_training_before_it_starts(tmp_path, fx):
    from train.config import TrainConfig
    from train.lora import LoRATrainer

    class MainProcess:
        is_main_process = True
        num_processes = 1

        def print(self, *a):
            pass

        def wait_for_everyone(self):
            pass

    def ensure_shards(cfg):
        trainer = LoRATrainer(cfg)
        trainer.acc, trainer.recipe = MainProcess(), load_recipe(str(fx.root / "vid.yaml"))
        return trainer._setup_shards()

    shutil.copytree(fx.shards, tmp_path / "shards" / "vid")
    cfg = TrainConfig(recipe=str(fx.root / "vid.yaml"), shards_root=str(tmp_path / "shards"), verify=True)
    assert ensure_shards(cfg) == tmp_path / "shards" / "vid"
    shard = tmp_path / "shards" / "vid" / "vid-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"(?s)--verify: shards of .* do not match.*vid-000001\.tar: sha256"):
        ensure_shards(cfg)
    cfg.verify = False  # without the flag nothing is re-hashed
    assert ensure_shards(cfg) == tmp_path / "shards" / "vid"
