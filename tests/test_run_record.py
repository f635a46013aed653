"""run.json's one definition (train.run_record) and the counter names (data_recipes.counters): a record the
trainer wrote reads and writes back byte for byte, an older one without a version reads as version 1, and a
missing or ill-typed field is an error naming the file and the field, in the readers too."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from data_recipes.counters import (CONSUMED_COUNTERS, MANIFEST_COUNTERS, SIZE_FROM_UNITS, SUPERVISED_TOKENS,
                                   TRAIN_MATCH_UNITS)
from data_recipes.files import atomic_write_json
from helpers import run_lora
from train.run_record import RUN_RECORD_VERSION, RunRecord, RunRecordError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs as the trainer leaves them: `ref` (2 steps) and `matched` (stopped at ref's samples)."""
    d = tmp_path_factory.mktemp("run_record")
    (d / "vid.yaml").write_text(yaml.safe_dump({
        "kind": "video", "sources": [{"type": "synthetic_video"}], "samples": 16, "frames": 3, "image_size": 64,
        "seed": 0, "split": "train", "shard_size": 16,
        "train": {"base_model": "tiny:llava", "per_device_batch_size": 4, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": False, "num_workers": 1, "save_steps": 0, "warmup_steps": 1}}))
    common = ("--recipe", str(d / "vid.yaml"), "--ds_config", "none")
    run_lora(d, *common, "--run_name", "ref", "--max_steps", "2")
    run_lora(d, *common, "--run_name", "matched", "--match_to", "ckpt/ref", "--match_by", "samples")
    return d / "ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ref", "matched"])
def test_the_trainers_record_round_trips_byte_for_byte(runs, tmp_path, name):
    written = (runs / name / "run.json").read_text()
    record = RunRecord.read(runs / name / "run.json")
    record.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == written.encode()
    # the same bytes as the unversioned format, plus the version key
    data = json.loads(written)
    assert data.pop("version") == RUN_RECORD_VERSION == record.version
    atomic_write_json(tmp_path / "old.json", data)
    RunRecord.read(tmp_path / "old.json").write(tmp_path / "upgraded.json")
    assert (tmp_path / "upgraded.json").read_text() == written
    assert ("match" in data) == (name == "matched")  # written only for a matched run
    assert record.kind == "video" and record.family == "llava"
    assert record.budget["unit"] == ("samples" if name == "matched" else None)
    assert set(record.consumed) == set(CONSUMED_COUNTERS) and {"steps", "passes", "runtime"} <= set(record.extra)


@pytest.mark.slow
def test_match_to_reads_the_reference_record(runs):
    ref, matched = (RunRecord.read(runs / n / "run.json") for n in ("ref", "matched"))
    assert matched.match["target"] == ref.consumed["samples"] == matched.consumed["samples"]
    assert matched.budget["reference"]["mlflow_run_id"] == ref.mlflow_run_id
    assert matched.budget["reference"]["recipe"] == ref.recipe == "vid"


@pytest.mark.slow
def test_a_study_recognises_its_finished_run_by_the_record(runs):
    from evalsuite.study.run import StudyError, trained

    run = {"run_dir": str(runs / "matched"), "budget": 8, "unit": "samples", "seed": 0}
    assert trained(run) and not trained(run | {"run_dir": str(runs / "absent")})
    with pytest.raises(StudyError, match=r"matched/run\.json: holds a run with budget 8 samples, seed 0, not this"):
        trained(run | {"seed": 1})


def test_a_record_without_version_reads_as_version_1(tmp_path):
    old = {"base_model": "models/tiny-llava", "recipe": "video_demo", "kind": "video", "max_pixels": None,
           "consumed": {"samples": 8}, "steps": 2}
    (tmp_path / "run.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path / "run.json", require=("consumed", "recipe"))
    assert record.version == 1 and record.extra == {"steps": 2} and record.consumed == {"samples": 8}
    assert record.to_dict()["version"] == 1 and "match" not in record.to_dict()
    with pytest.raises(RunRecordError, match=r"run\.json: field 'version' is 7; this code reads versions 1 to"):
        RunRecord.from_dict(old | {"version": 7}, tmp_path / "run.json")


@pytest.mark.parametrize("data, require, message", [
    ({"recipe": "video_demo"}, ("consumed",), r"field 'consumed' missing"),
    ({"kind": "video"}, ("budget", "config"), r"field 'budget' missing"),
    ({"max_pixels": "4096"}, (), r"field 'max_pixels' must be an integer, got '4096'"),
    ({"seed": True}, (), r"field 'seed' must be an integer, got True"),
    ({"base_model": ["m"]}, (), r"field 'base_model' must be a string, got \['m'\]"),
    ({"consumed": {"samples": "8"}}, (), r"field 'consumed\.samples' must be an integer, got '8'"),
    ({"budget": 5}, (), r"field 'budget' must be an object, got 5"),
    ([1, 2], (), r"expected an object \(base_model, recipe, \.\.\.\), got list"),
])
def test_a_missing_or_ill_typed_field_names_the_file_and_the_field(tmp_path, data, require, message):
    path = tmp_path / "ck" / "run.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    with pytest.raises(RunRecordError, match=rf"^{re.escape(str(path))}: {message}"):
        RunRecord.read(path, require=require)


def test_readers_report_the_records_errors_in_their_own_words(tmp_path):
    from evalsuite.checkpoints import CheckpointError, checkpoint_ref
    from evalsuite.study.run import StudyError, trained
    from train.accounting import reference_consumption

    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"recipe": "video_demo"}))
    with pytest.raises(RunRecordError, match=r"run/run\.json: field 'consumed' missing"):
        reference_consumption(str(d), "sqlite:///unused.db")
    with pytest.raises(StudyError, match=r"run/run\.json: field 'budget' missing"):
        trained({"run_dir": str(d), "budget": 10, "unit": "samples", "seed": 0})
    (d / "run.json").write_text("{'not': json")
    with pytest.raises(CheckpointError, match=r"run/run\.json: not valid JSON"):
        checkpoint_ref(d)
    (d / "adapter_config.json").write_text("{}")
    (d / "run.json").write_text(json.dumps({"base_model": 3}))
    with pytest.raises(CheckpointError, match=r"run/run\.json: field 'base_model' must be a string, got 3"):
        checkpoint_ref(d)


def test_an_adapter_finds_its_base_under_another_model_root(tmp_path, monkeypatch):
    """run.json records the base model's resolved path on the training nodes. Evaluated where that path does not
    exist ($MODEL_ROOT mounted elsewhere, with the hub's org/name layout), the base is found from the name the
    trainer was given (`config.base_model`) under this node's $MODEL_ROOT; with neither, the error names the
    recorded path."""
    from evalsuite.checkpoints import CheckpointError, checkpoint_ref

    name = "llava-hf/LLaVA-NeXT-Video-7B-hf"
    here = tmp_path / "eval_node" / name
    here.mkdir(parents=True)
    (here / "config.json").write_text("{}")
    (here / "model-00001-of-00003.safetensors").write_bytes(b"")
    ckpt = tmp_path / "ckpt" / "video-b100-s0"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text("{}")
    (ckpt / "adapter_model.safetensors").write_bytes(b"")
    recorded = "/train_node/models/" + name  # absent here
    (ckpt / "run.json").write_text(json.dumps({"base_model": recorded, "config": {"base_model": name}}))
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "eval_node"))
    assert checkpoint_ref(ckpt).base_model == here.resolve()
    monkeypatch.setenv("MODEL_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(CheckpointError, match=f"base_model '{recorded}' not found"):
        checkpoint_ref(ckpt)


def test_each_match_unit_is_a_counter_its_side_counts():
    from data_recipes.recipe import SIZE_FROM_UNITS as build_units
    from train.accounting import COUNTERS

    assert build_units == SIZE_FROM_UNITS and set(SIZE_FROM_UNITS) <= set(MANIFEST_COUNTERS)
    assert set(TRAIN_MATCH_UNITS) <= set(CONSUMED_COUNTERS)
    assert SUPERVISED_TOKENS not in MANIFEST_COUNTERS  # the build cannot know what the chat template supervises
    assert COUNTERS == CONSUMED_COUNTERS  # the accounting matrices' columns are run.json's consumed keys
