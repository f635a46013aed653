"""The base stage (train/toy/pretrain.py) and the demo's clock (train/toy/demo.py)."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_recipes.recipe import load_recipe
from data_recipes.sources import open_sources
from train.toy import demo as D
from train.toy import pretrain as P
from train.chat import IGNORE_INDEX, image_token_id
from train.families import load_model
from train.toy.tiny import build_tiny

N_KEYS = 300


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny("llava", tmp_path_factory.mktemp("pretrain") / "llava", seed=P.BASE_SEED)
    return load_model(path)


# --- the pool --------------------------------------------------------------------------------------
def _keys(records) -> tuple[set, set, set]:
    ids, scenes, pairs = set(), set(), set()
    for r in records:
        ids.add(r["id"])
        scenes.add(r["meta"]["signature"])
        pairs.add((r["meta"]["signature"], r["meta"]["question"]))
    return ids, scenes, pairs


def test_base_pool_is_disjoint_from_the_recipes_by_key():
    """The base stage's samples (own pool and seed) never are one of the demo recipes' samples. Scenes
    may recur (the scene space is small): their overlap is printed, not asserted."""
    base = {part: _keys(P.part_record(part, P.BASE_SEED, i) for i in range(N_KEYS)) for part in P.PARTS}
    for part, (ids, _, _) in base.items():
        assert len(ids) == N_KEYS, f"{part}: ids repeat within the base pool"
        assert all(f"-{P.BASE_POOL}-" in i for i in ids), f"{part}: an id without the base pool's name"
    for name in ("image_demo", "video_demo"):
        recipe = load_recipe(name)
        assert recipe.seed != P.BASE_SEED
        source = open_sources(recipe)[0]
        ids, scenes, pairs = _keys(source.make(i).json for i in range(N_KEYS))
        for part, (b_ids, b_scenes, b_pairs) in base.items():
            assert not ids & b_ids, f"{name} and the base stage's {part} part share sample ids"
            print(f"{name} vs base {part}: {len(scenes & b_scenes)} of {len(b_scenes)} scenes and "
                  f"{len(pairs & b_pairs)} (scene, question) pairs in common over the first {N_KEYS} samples")


def test_steps_follow_the_mixture_interleaved():
    plan = P.step_parts(1200, P.BASE_SEED)
    assert Counter(plan) == {p: round(1200 * P.MIXTURE[p]) for p in P.PARTS}
    assert plan == P.step_parts(1200, P.BASE_SEED) and plan != P.step_parts(1200, P.BASE_SEED + 1)
    # interleaved, not in blocks: every window of 60 steps trains every part
    assert all(set(plan[i:i + 60]) == set(P.PARTS) for i in range(0, 1200 - 60, 60))
    odd = P.step_parts(7, 0)  # shares that do not divide the steps: largest remainders, exact total
    assert len(odd) == 7 and Counter(odd) == {"image": 3, "still": 2, "reading": 2}
    assert P.step_parts(5, 0, {"reading": 1.0}) == ["reading"] * 5
    with pytest.raises(ValueError, match="positive shares"):
        P.step_parts(5, 0, {"reading": 0.0})


def test_pool_sizes_are_whole_batches_in_the_mixture():
    sizes = P.pool_sizes(P.POOL_SAMPLES, P.BATCH)
    assert set(sizes) == set(P.PARTS)
    assert all(n % (2 * P.BATCH) == 0 and n > 0 for n in sizes.values())
    for p in P.PARTS:
        assert abs(sizes[p] - P.POOL_SAMPLES * P.MIXTURE[p]) < 2 * P.BATCH
    batches = P.batch_indices(100, 32)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert all(len({i % 2 for i in b}) == 1 and len(b) <= 32 for b in batches)


def test_each_batch_holds_one_part(tiny):
    _, processor, _ = tiny
    image_tok = image_token_id(processor)
    per_image = None
    expected_images = {"image": 1, "still": P.STILL_FRAMES, "reading": 0}
    for part in P.PARTS:
        inputs = P.encode_part(processor, part, P.BASE_SEED, "train", range(4))
        counts = (inputs["input_ids"] == image_tok).sum(1).tolist()
        if part == "image":
            per_image = counts[0]
            assert per_image > 0
        assert counts == [expected_images[part] * per_image] * 4, part
        assert ("pixel_values" in inputs) == (part != "reading")
        for row in range(4):  # only the answer is supervised
            answer = P.part_record(part, P.BASE_SEED, row)["messages"][-1]["content"][0]["text"]
            labels = inputs["labels"][row]
            supervised = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
            assert answer in supervised and len(supervised) < len(answer) + 20, (part, answer, supervised)


def test_training_is_seeded(tiny):
    model, processor, fam = tiny
    batches = {p: [P.encode_part(processor, p, P.BASE_SEED, "train", range(4))] for p in P.PARTS}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for _ in range(2):
        model.load_state_dict(state)
        runs.append(P.pretrain(model, processor, fam, steps=6, batch=4, batches=batches, log_every=100))
    model.load_state_dict(state)
    assert runs[0] == runs[1] and all(x == x for x in runs[0])
    with pytest.raises(ValueError, match="parts without batches: still"):
        P.pretrain(model, processor, fam, steps=3, batches={"image": batches["image"]},
                   mixture={"image": 1.0, "still": 1.0})
    model.load_state_dict(state)


def test_base_stage_writes_accuracy_by_part(tmp_path, monkeypatch):
    """A short base stage: the loss falls, tiny.json holds each part's held-out accuracy and the design,
    and `is_current` tells this base from one built with other settings."""
    monkeypatch.setattr(P, "VAL_SAMPLES", 16)
    out = P.pretrain_tiny("llava", tmp_path / "base", steps=40, pool=3 * 64, vision_steps=30)
    info = json.loads((out / "tiny.json").read_text())["base_stage"]
    assert set(info["val_answer_accuracy_by_part"]) == set(P.PARTS)
    assert all(0.0 <= v <= 1.0 for v in info["val_answer_accuracy_by_part"].values())
    assert info["seed"] == P.BASE_SEED and info["steps"] == 40
    assert info["design"] == P.design(40, P.BASE_SEED, 3 * 64, 30)
    vision = info["vision"]
    assert vision["steps"] == 30 and set(vision["val_patch_accuracy"]) == {"colour", "shape", "size"}
    assert info["seconds"]["vision"] == vision["seconds"] > 0
    assert info["train_samples_per_s"] > 0 and info["seconds"]["total"] >= info["seconds"]["train"]
    assert info["final_loss"] < 6.0  # log(vocab 512) = 6.2: the model has learned something
    assert P.is_current(out, 40, P.BASE_SEED, 3 * 64, 30)
    assert not P.is_current(out, 40, P.BASE_SEED, 3 * 64, 31)
    assert not P.is_current(out) and not P.is_current(tmp_path / "absent")
    assert (out / "config.json").exists() and not list(tmp_path.glob(".base.*"))


def test_design_follows_the_vision_stage_frames_and_labels(monkeypatch):
    """A base whose vision stage drew other frames, or labelled them otherwise, is not current: the
    design fingerprints them beside the base parts' records."""
    from train.toy import vision

    current = P.design()
    assert P.design() == current  # deterministic
    monkeypatch.setattr(P, "patch_labels", lambda scene, t, grid: torch.zeros(3, grid * grid, dtype=torch.long))
    assert P.design() != current
    monkeypatch.undo()
    monkeypatch.setattr(P, "vision_frame", lambda seed, index, split: vision.frame(seed, index + 1, split))
    assert P.design() != current


# --- the demo's clock ------------------------------------------------------------------------------
def test_demo_stages_run_the_documented_commands():
    stages = D.demo_stages("py", "acc", 2, base_current=False)
    assert [s.name for s in stages] == ["data", "base", "video", "image", "eval"]
    cmds = {s.name: s.commands for s in stages}
    assert cmds["data"][0] == ["py", "-m", "data_recipes", "build", "video_demo"]
    assert cmds["base"] == [["py", "-m", "train.toy.pretrain", "--family", "llava", "--out",
                             "models/tiny-llava-pretrained"]]
    assert stages[1].env == {"OMP_NUM_THREADS": "2"}
    assert cmds["image"][0][-5:] == ["image_demo", "--match_to", "ckpt/video_demo", "--match_by", "visual_tokens"]
    assert cmds["eval"] == [["acc", "launch", "--multi_gpu", "--num_processes", "2", "-m", "evalsuite", "all", "ckpt/",
                             "--infills", "oracle", "--limit", "300", "--frames", "5", "--iraven_limit", "20",
                             "--iraven_layout", "candidates"]]
    assert stages[4].env == {"ACCELERATE_USE_CPU": "1"}
    assert D.demo_stages("py", "acc", 2, base_current=True)[1].skip
    control = D.control_stages("py", "acc")
    assert [s.name for s in control] == ["control_data", "control_train", "control_eval"]
    assert control[1].commands[0][-5:] == ["video_shuffled_demo", "--match_to", "ckpt/video_demo", "--match_by",
                                           "visual_tokens"]
    assert control[2].commands == cmds["eval"]  # evaluated like the demo: its evaluations are reused
    assert set(D.STAGE_RATIOS) == {s.name for s in stages + control}


def test_estimate_scales_with_the_calibration_and_leaves_out_skipped_stages():
    stages = D.demo_stages("py", "acc", 2, base_current=True)
    est = D.estimate(2.0, stages)
    assert "base" not in est and set(est) == {"data", "video", "image", "eval"}
    assert est == {k: 2 * v for k, v in D.estimate(1.0, stages).items()}
    assert est["video"] == pytest.approx(2.0 * D.STAGE_RATIOS["video"])


def test_run_stages_times_each_stage_and_stops_at_a_failure(capsys):
    calls = []

    def runner(argv, cwd, env):
        calls.append((argv, env.get("X")))
        return types.SimpleNamespace(returncode=3 if argv == ["fail"] else 0)

    stages = [D.Stage("a", [["one"], ["two"]], env={"X": "1"}), D.Stage("b", [["skip"]], skip="up to date"),
              D.Stage("c", [["fail"], ["never"]]), D.Stage("d", [["never"]])]
    code = D.run_stages(stages, {"a": 1.0, "c": 2.0, "d": 3.0}, runner=runner, cwd=Path("."))
    out = capsys.readouterr().out
    assert code == 3
    assert calls == [(["one"], "1"), (["two"], "1"), (["fail"], None)]
    assert "stage a done in 0 s" in out and "stage b skipped: up to date" in out
    assert "stage c failed (exit 3)" in out and "stage d" not in out.split("stage c failed")[0]
    table = out.split("stage c failed")[1]
    assert "skipped" in table and "total" in table and "\nd " in table  # the rest still shows its estimate


def test_control_needs_the_video_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "ROOT", tmp_path)
    assert D.main(["--control"]) == 2
    assert "ckpt/video_demo/run.json not found" in capsys.readouterr().err


def test_calibration_times_base_stage_steps():
    threads = torch.get_num_threads()
    s = D.calibrate(steps=2, batch=2)
    assert 0 < s < 60 and torch.get_num_threads() == threads


def test_a_stale_tiny_pretrained_base_is_refused_not_reused(tmp_path, monkeypatch):
    """`tiny-pretrained:FAMILY` names the base stage's output; one left by an older base stage (other data,
    other tokenizer) must not be trained on silently."""
    import json

    from train import models

    monkeypatch.setattr(models, "MODELS_ROOT", tmp_path)
    out = tmp_path / "tiny-llava-pretrained"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "tiny.json").write_text(json.dumps({"base_stage": {"steps": 1500, "seed": 0}}))  # the old design
    with pytest.raises(models.ModelNotFound, match="older base stage"):
        models.resolve_base_model("tiny-pretrained:llava")
    (out / "tiny.json").write_text(json.dumps({"base_stage": {"design": P.design(P.DEFAULT_STEPS, P.BASE_SEED,
                                                                                  P.POOL_SAMPLES)}}))
    assert models.resolve_base_model("tiny-pretrained:llava") == out
