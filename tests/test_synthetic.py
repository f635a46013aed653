"""Tests of the synthetic scene/sample generator (data_recipes.synthetic): determinism, split hygiene,
pixels that match the ground truth, captions, option sets and the closed vocabulary. The make-up of
option sets, item kinds and training mixes is tested by
`tests/test_world_items.py::test_temporal_option_sets_are_two_reversal_pairs_and_one_self_reversing_option`,
`tests/test_world_items.py::test_kinds_and_answer_slots_are_exactly_balanced_on_300_items` and
`tests/test_world_items.py::test_training_video_mix`."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_recipes.synthetic import (
    COLOURS, Event, Obj, Scene, eval_item, eval_record, image_record, image_sample, item_scene,
    item_static_caption, item_transition_caption, record_texts, render_frame, sample_indices, split_of,
    static_caption, transition_caption, video_record, video_sample, vocabulary_corpus,
)
from data_recipes.synthetic.sampler import visible_when_sampled
from data_recipes.synthetic.scenes import BACKGROUND, overlap

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(r"[A-Za-z]+")


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _colour_mask(img, colour: str, tol: int = 30) -> np.ndarray:
    """Pixels within `tol` (per channel) of a palette colour."""
    return (np.abs(_pixels(img) - np.array(COLOURS[colour])) <= tol).all(axis=-1)


def _nearest_colour(rgb) -> str:
    palette = {**COLOURS, "background": BACKGROUND}
    return min(palette, key=lambda c: sum((int(a) - b) ** 2 for a, b in zip(rgb, palette[c])))


def _eq_record(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope="module")
def eval_records():
    return [eval_record(0, i, "test") for i in range(500)]


# ---------------------------------------------------------------------------------------- determinism

def test_builders_are_pure_functions_of_their_arguments():
    for build in (lambda i: image_sample(3, i, "train"), lambda i: video_sample(3, i, "val", frames=6)):
        (j1, f1), (j2, f2) = build(7), build(7)
        assert _eq_record(j1, j2)
        assert [f.tobytes() for f in f1] == [f.tobytes() for f in f2]
        j3, f3 = build(8)
        assert j3["meta"]["scene"] != j1["meta"]["scene"] or [f.tobytes() for f in f3] != [f.tobytes() for f in f1]
    e1, e2, e3 = eval_item(1, 5, clip_frames=16), eval_item(1, 5, clip_frames=16), eval_item(1, 6, clip_frames=16)
    assert _eq_record({k: v for k, v in e1.items() if k != "frames"}, {k: v for k, v in e2.items() if k != "frames"})
    assert [f.tobytes() for f in e1["frames"]] == [f.tobytes() for f in e2["frames"]]
    assert e3["meta"]["scene"] != e1["meta"]["scene"]
    # The seed matters too.
    assert image_record(0, 7, "train")[0]["meta"]["scene"] != image_record(1, 7, "train")[0]["meta"]["scene"]


def test_determinism_survives_python_hash_randomisation():
    """Seeds come from BLAKE2, not the salted `hash()`: another process gives the same records."""
    code = ("import json; from data_recipes.synthetic import video_record, eval_record; "
            "print(json.dumps([video_record(0, 3, 'train')[0], eval_record(0, 3)], sort_keys=True))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == json.dumps([video_record(0, 3, "train")[0], eval_record(0, 3)], sort_keys=True)


# ---------------------------------------------------------------------------------------- splits

def test_train_and_evaluation_splits_never_share_a_scene(eval_records):
    train = {Scene.from_dict(image_record(0, i, "train")[0]["meta"]["scene"]).signature() for i in range(1000)}
    train |= {Scene.from_dict(video_record(0, i, "train")[0]["meta"]["scene"]).signature() for i in range(1000)}
    val = {item_scene(video_record(0, i, "val")[0]["meta"]).signature() for i in range(300)}
    test = {item_scene(r["meta"]).signature() for r in eval_records}
    assert len(test) > 450  # the test split is not a handful of scenes repeated
    assert not train & test and not train & val and not val & test
    assert {split_of(s) for s in train} == {"train"}
    assert {split_of(s) for s in test} == {"test"} and {split_of(s) for s in val} == {"val"}


def test_split_is_a_function_of_the_signature_only():
    scene = item_scene(video_record(0, 11, "train")[0]["meta"])
    # Same objects in the same cells and the same events, different jitter and timing: same scene.
    nudged = Scene(tuple(Obj(o.shape, o.colour, o.size, round(o.x + 0.004, 3), round(o.y - 0.004, 3), o.visible)
                         for o in scene.objects),
                   tuple(Event(**{**e.__dict__, "start": e.start + 2, "end": e.end + 2}) for e in scene.events),
                   scene.n_frames + 2)
    assert nudged.signature() == scene.signature()
    assert split_of(nudged.signature()) == split_of(scene.signature()) == "train"
    sigs = [item_scene(image_record(s, i, sp)[0]["meta"]).signature()
            for s in range(2) for i in range(40) for sp in ("train", "val", "test")]
    assert [split_of(s) for s in sigs] == [split_of(s) for s in sigs]
    assert collections.Counter(split_of(s) for s in sigs) == {"train": 80, "val": 80, "test": 80}


# ---------------------------------------------------------------------------------------- pixels

@pytest.mark.parametrize("size", [64, 96, 160, 336])
def test_pixels_at_object_centres_have_the_object_colour(size):
    for i in range(30):
        record, (img,) = image_sample(2, i, "train", image_size=size)
        assert img.size == (size, size) and img.mode == "RGB"
        for o in item_scene(record["meta"]).objects:
            assert _nearest_colour(img.getpixel((int(o.x * size), int(o.y * size)))) == o.colour
        assert img.getpixel((0, 0)) == BACKGROUND  # objects keep inside their cells


def _scene(kind: str, **params) -> Scene:
    """Two objects, the circle changes between frames 1 and 5 of 7; the square stays still."""
    circle = Obj("circle", "red", "small" if kind == "grow" else "large", 0.82, 0.5, kind != "appear")
    square = Obj("square", "blue", "small", 0.17, 0.17)
    start, end = (1, 5) if kind in ("move", "grow", "shrink") else (3, 4)
    return Scene((square, circle), (Event(kind, 1, start, end, **params),), 7)


def test_a_move_left_moves_the_centroid_left():
    scene = _scene("move", direction="left", cells=2)
    xs = [np.nonzero(_colour_mask(render_frame(scene, t), "red"))[1].mean() for t in range(7)]
    assert all(b < a for a, b in zip(xs[1:5], xs[2:6]))  # strictly left during the event
    assert xs[0] == xs[1] and xs[5] == xs[6]  # still before and after
    assert xs[0] - xs[-1] == pytest.approx(64 * 2 / 3, abs=1.5)
    assert transition_caption(scene, 0, 6) == "the red circle moves left."
    assert static_caption(scene, 0).endswith("large red circle on the right")
    assert static_caption(scene, 6).endswith("large red circle on the left")


def test_disappear_appear_recolour_and_grow_show_in_the_pixels():
    gone = _scene("disappear")
    assert _colour_mask(render_frame(gone, 0), "red").sum() > 50
    assert _colour_mask(render_frame(gone, 6), "red").sum() == 0
    assert transition_caption(gone, 2, 5) == "the red circle disappears."
    came = _scene("appear")
    assert _colour_mask(render_frame(came, 0), "red").sum() == 0 < _colour_mask(render_frame(came, 6), "red").sum()
    assert transition_caption(came, 0, 6) == "a red circle appears."
    green = _scene("recolour", colour="green")
    assert _colour_mask(render_frame(green, 3), "red").sum() > 50 and _colour_mask(render_frame(green, 3), "green").sum() == 0
    assert _colour_mask(render_frame(green, 4), "green").sum() > 50 and _colour_mask(render_frame(green, 4), "red").sum() == 0
    assert transition_caption(green, 3, 4) == "the red circle turns green."
    grow = _scene("grow")
    areas = [_colour_mask(render_frame(grow, t), "red").sum() for t in range(7)]
    assert areas == sorted(areas) and areas[-1] > 2 * areas[0]
    assert static_caption(grow, 0).endswith("small red circle on the right")
    assert static_caption(grow, 6).endswith("large red circle on the right")


def test_transition_caption_between_frames_without_events_says_nothing_changes():
    scene = _scene("recolour", colour="green")  # the change happens between frames 3 and 4 only
    for t0 in range(7):
        for t1 in range(t0, 7):
            caption = transition_caption(scene, t0, t1)
            assert (caption == "nothing changes.") == (not t0 < 4 <= t1)
    with pytest.raises(ValueError):
        transition_caption(scene, 4, 2)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10_000), frames=st.integers(2, 9), data=st.data())
def test_transition_captions_agree_with_the_pixels(index, frames, data):
    record, images = video_sample(4, index, "train", frames=frames)
    t0 = data.draw(st.integers(0, frames - 1))
    t1 = data.draw(st.integers(t0, frames - 1))
    caption = item_transition_caption(record["meta"], t0, t1)
    if caption == "nothing changes.":
        assert images[t0].tobytes() == images[t1].tobytes()
    if record["meta"]["events"]:
        # Over the whole clip every event has completed, so something visibly changed.
        assert images[0].tobytes() != images[-1].tobytes()
        assert item_transition_caption(record["meta"], 0, frames - 1) != "nothing changes."
    else:
        # A clip without events ("what changes?" answered "nothing changes"): every frame is the same.
        assert len({im.tobytes() for im in images}) == 1
        assert item_transition_caption(record["meta"], 0, frames - 1) == "nothing changes."


# ---------------------------------------------------------------------------------------- samples

def test_sample_schema_and_one_image_marker_per_image():
    for build in (lambda i: image_sample(0, i, "train"), lambda i: video_sample(0, i, "train", frames=4 + i % 3)):
        for i in range(30):
            record, images = build(i)
            json.dumps(record)  # serialisable as is
            assert record["source"] == "synthetic" and record["kind"] in ("image", "video")
            user, assistant = record["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            markers = [p for p in user["content"] if p["type"] == "image"]
            assert len(markers) == len(images) == (1 if record["kind"] == "image" else 4 + i % 3)
            assert user["content"][-1]["type"] == "text" and all(p["type"] == "image" for p in user["content"][:-1])
            meta = record["meta"]
            assert len(meta["captions"]) == len(images)
            if record["kind"] == "video":
                assert len(meta["transitions"]) == len(images) - 1
                assert all(0 <= e["start"] < e["end"] < len(images) for e in meta["events"])
                # Only "what changes?" may show a clip without events (its answer: nothing changes).
                assert meta["events"] or meta["question_type"].startswith("changes")
            if "options" in meta:
                opts, answer = meta["options"], meta["answer"]
                assert len(set(opts)) == 5 and assistant["content"][0]["text"] == opts[answer]
                assert "\n".join(f"{'ABCDE'[k]}. {o}" for k, o in enumerate(opts)) in user["content"][-1]["text"]


def test_video_meta_holds_every_transition_and_frame_caption():
    record, _ = video_sample(0, 4, "train", frames=5)
    scene = item_scene(json.loads(json.dumps(record["meta"])))
    assert record["meta"]["transitions"] == [transition_caption(scene, t, t + 1) for t in range(4)]
    assert record["meta"]["captions"] == [static_caption(scene, t) for t in range(5)]
    assert Scene.from_dict(scene.to_dict()) == scene


def test_eval_answers_are_uniform_over_the_five_slots(eval_records):
    counts = collections.Counter(r["answer"] for r in eval_records)
    assert sorted(counts) == [0, 1, 2, 3, 4]
    assert max(counts.values()) - min(counts.values()) <= 10  # exactly 100 each by construction


def test_eval_options_are_five_distinct_with_the_answer_among_them(eval_records):
    for r in eval_records:
        assert len(r["options"]) == 5 and len(set(r["options"])) == 5
        assert 0 <= r["answer"] < 5 and r["question"].endswith("?")
        if r["meta"]["kind"] == "temporal":
            assert 0 <= r["meta"]["reversed_answer"] < 5
        else:
            assert r["meta"]["kind"] == "static" and r["meta"]["reversed_answer"] is None


def test_eval_item_frames_and_caption_helpers():
    item = eval_item(0, 2, clip_frames=32, image_size=64)
    assert len(item["frames"]) == 32 and item["frames"][0].size == (64, 64)
    meta = json.loads(json.dumps(item["meta"]))
    idx = sample_indices(32, 5)
    assert idx == meta["sampled_frames"]["5"] == [5, 10, 16, 21, 26]
    scene = item_scene(meta)
    for t in idx:
        assert item_static_caption(meta, t) == static_caption(scene, t)
        assert item["frames"][t].tobytes() == render_frame(scene, t).tobytes()
    assert item_transition_caption(meta, idx[0], idx[-1]) == transition_caption(scene, idx[0], idx[-1])


def _relevant(state):
    return (round(state.x, 6), round(state.y, 6), state.colour, state.visible, state.size)


@pytest.mark.parametrize("clip_frames", [16, 32, 64])
def test_a_single_frame_cannot_tell_the_answer(clip_frames):
    for i in range(60):
        r = eval_record(0, i, "test", clip_frames)
        scene, meta = item_scene(r["meta"]), r["meta"]
        assert visible_when_sampled(scene, (5, 10))
        # The clip played backwards has the same frames; its answer is another option.
        rev = scene.reversed()
        for t in range(clip_frames):
            assert [_relevant(s) for s in rev.state(t)] == [_relevant(s) for s in scene.state(clip_frames - 1 - t)]
        events = scene.events_in_order()
        together = len(events) == 2 and overlap(*events)
        if meta["kind"] == "temporal":
            # The reversed clip has the same answer exactly when the answer is self-reversing: a still
            # target, a clip without events, or two events at once (for order questions).
            singleton = {"happens": meta["target"] is not None and not scene.events_of(meta["target"]),
                         "changes": not events, "first": together, "last": together}[meta["question_type"]]
            assert (meta["reversed_answer"] == r["answer"]) == singleton
        else:
            # A static item asks about an object that looks the same in every frame.
            assert not scene.events_of(meta["target"]) and meta["reversed_answer"] is None
        for f in (5, 10):
            idx = sample_indices(clip_frames, f)
            first, last = scene.state(idx[0]), scene.state(idx[-1])
            # Every event is caught: its object differs between the first and last sampled frames...
            for e in scene.events:
                assert _relevant(first[e.obj]) != _relevant(last[e.obj])
            # ...and with two events, either some sampled frame shows the first done and the second
            # not begun, or they happen at once (one while the other is under way).
            if len(events) == 2:
                assert (", then " in transition_caption(scene, idx[0], idx[-1])) == (not together)


# ---------------------------------------------------------------------------------------- vocabulary

def test_all_texts_stay_within_the_vocabulary_corpus():
    corpus = vocabulary_corpus()
    vocab = {w.lower() for text in corpus for w in WORD.findall(text)}
    assert 40 <= len(vocab) <= 200
    texts = []
    for i in range(200):
        texts += record_texts(image_record(9, i, "val")[0])
        texts += record_texts(video_record(9, i, "test", frames=3 + i % 6)[0])
    for i in range(60):
        r = eval_record(9, i, "test", clip_frames=24)
        texts += record_texts(r)
        scene = item_scene(r["meta"])
        texts += [static_caption(scene, t) for t in (0, 12, 23)] + [transition_caption(scene, 3, 20)]
    unknown = {w.lower() for text in texts for w in WORD.findall(text)} - vocab
    assert not unknown
