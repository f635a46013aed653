"""Oracle infills in their own words, noisy infills, and the base stage's reading items and still clips."""

from __future__ import annotations

from itertools import combinations

import pytest

from data_recipes.synthetic import language
from data_recipes.synthetic.language import INTERLEAVED, format_mc, static_caption, transition_caption
from data_recipes.synthetic.narration import (
    OPTION_WORDING, is_corrupted, item_oracle_transition, narration_texts, noisy_transition, oracle_transition,
    reversed_transition,
)
from data_recipes.synthetic.questions import IMAGE_TYPES
from data_recipes.synthetic.reading import READING_CLIP_FRAMES, reading_record, still_record, still_sample
from data_recipes.synthetic.sampler import sample_indices, split_of
from data_recipes.synthetic.samples import eval_record, image_record, item_scene, video_record
from data_recipes.synthetic.scenes import Event, Obj, Scene
from evalsuite.prompts import user_content

N_ITEMS = 300


@pytest.fixture(scope="module")
def items():
    return [eval_record(0, i, "test") for i in range(N_ITEMS)]


def _changed(scene: Scene, t0: int, t1: int) -> bool:
    return any(t0 < e.end and t1 > e.start for e in scene.events)


def _forbidden(text: str) -> list[str]:
    return [w for w in OPTION_WORDING if w in text.lower()]


# --------------------------------------------------------------------------------------- hand-made scenes

def _scene(events, objects=None, n_frames=6):
    objects = objects or (Obj("circle", "red", "small", 0.5, 0.5), Obj("square", "blue", "large", 0.17, 0.17))
    return Scene(tuple(objects), tuple(events), n_frames)


def test_each_event_kind_is_told_in_narration_words():
    cases = [
        (Event("move", 0, 1, 3, direction="left", cells=1), "the red circle slides toward the left side."),
        (Event("move", 0, 1, 3, direction="down", cells=1), "the red circle slides toward the bottom."),
        (Event("recolour", 1, 2, 3, colour="green"), "the blue square changes colour to green."),
        (Event("disappear", 0, 2, 3), "the red circle vanishes."),
        (Event("grow", 0, 1, 4), "the red circle gets bigger."),
        (Event("shrink", 1, 1, 4), "the blue square gets smaller."),
    ]
    for event, expected in cases:
        assert oracle_transition(_scene([event]), 0, 5) == expected
    hidden = (Obj("circle", "red", "small", 0.5, 0.5), Obj("triangle", "yellow", "small", 0.83, 0.83, visible=False))
    assert oracle_transition(_scene([Event("appear", 1, 2, 3)], hidden), 0, 5) == "a yellow triangle shows up."
    assert oracle_transition(_scene([Event("grow", 0, 1, 4)]), 4, 5) == "the picture stays the same."


def test_order_words_follow_the_timeline_and_names_follow_frame_t0():
    successive = _scene([Event("recolour", 1, 1, 2, colour="green"), Event("move", 0, 3, 5, direction="up", cells=1)])
    assert oracle_transition(successive, 0, 5) == \
        "the blue square changes colour to green, then the red circle slides toward the top."
    # From frame 2 on, the square is green: it is named as it looks at t0.
    assert oracle_transition(successive, 2, 5) == "the red circle slides toward the top."
    assert oracle_transition(successive, 1, 2) == "the blue square changes colour to green."
    overlapping = _scene([Event("grow", 0, 1, 4), Event("move", 1, 2, 5, direction="right", cells=1)])
    assert oracle_transition(overlapping, 0, 5) == \
        "the red circle gets bigger while the blue square slides toward the right side."
    with pytest.raises(ValueError, match="t0"):
        oracle_transition(overlapping, 4, 2)


# ----------------------------------------------------------------------------------------- eval items

def test_narration_never_uses_option_wording(items):
    templates = narration_texts()
    assert not [t for t in templates if _forbidden(t)]
    for item in items:
        scene = item_scene(item["meta"])
        frames = sorted(set(sample_indices(32, 5)) | set(sample_indices(32, 10)) | {0, 31})
        for t0, t1 in combinations(frames, 2):
            for text in (oracle_transition(scene, t0, t1), noisy_transition(item["meta"], t0, t1, 1.0, item["id"])):
                assert not _forbidden(text), (item["id"], t0, t1, text)
                # Temporal options are phrases ("it moves left"); static ones are single words ("red").
                if item["meta"].get("kind") != "static":
                    assert not any(option in text for option in item["options"]), (item["id"], text)


def test_narration_tells_the_same_events_as_the_transition_caption(items):
    for item in items[:100]:
        scene = item_scene(item["meta"])
        idx = sample_indices(32, 10)
        for t0, t1 in zip(idx, idx[1:]):
            caption, narration = transition_caption(scene, t0, t1), oracle_transition(scene, t0, t1)
            assert (caption == language.NOTHING + ".") == (narration == "the picture stays the same.")
            # One clause per event, with the same order words ("and" for overlap is "while" here).
            assert caption.count(", then ") == narration.count(", then ")
            assert caption.count(" and ") == narration.count(" while ")
        assert item_oracle_transition(item["meta"], idx[0], idx[-1]) == oracle_transition(scene, idx[0], idx[-1])


def test_narration_differs_from_the_option_of_the_same_event(items):
    seen = 0
    for item in items:
        scene = item_scene(item["meta"])
        for e, meta_event in zip(scene.events_in_order(), item["meta"]["events"]):
            narration = oracle_transition(scene, e.start, e.end)
            verb = language.event_verb(e)
            assert verb not in narration and meta_event["text"] not in narration
            assert language.it_phrase(verb) not in narration
            seen += 1
    assert seen >= N_ITEMS  # most items have at least one event


# ---------------------------------------------------------------------------------------------- noisy

def _pairs(items, n):
    out = []
    for item in items:
        idx = sample_indices(32, 10)
        out += [(item, t0, t1) for t0, t1 in zip(idx, idx[1:])]
    return out[:n]


def test_noisy_rate_is_binomial_and_the_extremes_are_exact(items):
    pairs = _pairs(items, 2000)
    assert len(pairs) == 2000
    for item, t0, t1 in pairs:
        oracle = item_oracle_transition(item["meta"], t0, t1)
        assert noisy_transition(item["meta"], t0, t1, 0.0, item["id"]) == oracle
        assert noisy_transition(item["meta"], t0, t1, 1.0, item["id"]) != oracle
    p, n = 0.3, len(pairs)
    wrong = sum(noisy_transition(it["meta"], t0, t1, p, it["id"]) != item_oracle_transition(it["meta"], t0, t1)
                for it, t0, t1 in pairs)
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(wrong - n * p) <= 4.5 * sd, wrong
    # The corrupted set only grows with p, and depends on the key.
    assert all(is_corrupted(it["id"], a, b, 0.5) for it, a, b in pairs if is_corrupted(it["id"], a, b, 0.2))
    assert [is_corrupted("x", a, b, 0.5) for _, a, b in pairs[:200]] != \
        [is_corrupted(it["id"], a, b, 0.5) for it, a, b in pairs[:200]]
    for bad in (1.5, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match="p must be a probability"):
            noisy_transition(items[0]["meta"], 2, 5, bad, "k")


def test_a_corrupted_change_is_its_time_reversal_and_a_still_pair_gets_a_made_up_change():
    scene = _scene([Event("move", 0, 1, 3, direction="left", cells=1), Event("recolour", 1, 4, 5, colour="green")])
    meta = {"scene": scene.to_dict()}
    assert noisy_transition(meta, 0, 3, 1.0, "k") == "the red circle slides toward the right side."
    assert noisy_transition(meta, 3, 5, 1.0, "k") == "the green square changes colour to blue."
    assert reversed_transition(scene, 0, 5) == \
        "the green square changes colour to blue, then the red circle slides toward the right side."
    still = _scene([], n_frames=4)
    made_up = {noisy_transition({"scene": still.to_dict()}, 0, 3, 1.0, f"k{i}") for i in range(40)}
    assert "the picture stays the same." not in made_up
    assert len(made_up) > 5  # drawn over objects and kinds, not one fixed lie
    assert all(text.startswith(("the red circle", "the blue square")) for text in made_up)
    with pytest.raises(ValueError, match="scene"):
        item_oracle_transition({}, 0, 1)


# -------------------------------------------------------------------------------------------- reading

def test_reading_items_are_the_text_only_layout_without_images():
    ids = set()
    for i in range(40):
        r = reading_record(0, i, "train")
        meta = r["meta"]
        f = 5 if i % 2 == 0 else 10
        frames = sample_indices(READING_CLIP_FRAMES, f)
        assert meta["frames"] == frames and r["kind"] == "text"
        infills = [item_oracle_transition(meta, a, b) for a, b in zip(frames, frames[1:])]
        user, assistant = r["messages"][0]["content"], r["messages"][1]["content"]
        assert user == user_content("text_only", f, meta["question"], meta["options"], texts=infills)
        assert user[:-1] == [{"type": "text", "text": INTERLEAVED.format(text=t)} for t in infills]
        assert user[-1]["text"] == format_mc(meta["question"], meta["options"])
        assert all(part["type"] == "text" for m in r["messages"] for part in m["content"])
        assert assistant == [{"type": "text", "text": meta["options"][meta["answer"]]}]
        assert split_of(Scene.from_dict(meta["scene"]).signature()) == "train"
        assert r["id"].startswith("synthetic-base-reading-train-")
        ids.add(r["id"])
        # The infills tell this clip apart from the same frames played backwards.
        scene = Scene.from_dict(meta["scene"])
        if scene.events:
            assert infills != [reversed_transition(scene, a, b) for a, b in zip(frames, frames[1:])]
    assert len(ids) == 40
    assert reading_record(0, 3, "train") == reading_record(0, 3, "train")
    assert reading_record(0, 3, "train", pool="other")["id"] != reading_record(0, 3, "train")["id"]


# ------------------------------------------------------------------------------------------------ still

def test_still_clips_show_the_same_objects_in_every_frame():
    layouts, types = set(), set()
    for i in range(40):
        record, frames = still_sample(0, i, "train", frames=3 + i % 4)
        scene = Scene.from_dict(record["meta"]["scene"])
        assert not scene.events and 1 <= len(scene.objects) <= 3
        assert len(frames) == scene.n_frames == 3 + i % 4
        assert all(scene.state(t) == scene.state(0) for t in range(scene.n_frames))
        assert all(f.tobytes() == frames[0].tobytes() for f in frames)
        user = record["messages"][0]["content"]
        assert sum(p["type"] == "image" for p in user) == scene.n_frames
        interleaved = i % 2 == 1
        assert record["meta"]["interleaved"] is interleaved
        if interleaved:
            captions = [p["text"] for p in user if p["type"] == "text"][:-1]
            assert captions == [INTERLEAVED.format(text=static_caption(scene, t)) for t in range(scene.n_frames)]
            assert [p["type"] for p in user[:2]] == ["image", "text"]
        else:
            assert [p["type"] for p in user] == ["image"] * scene.n_frames + ["text"]
        assert split_of(scene.signature()) == "train"
        layouts.add((record["meta"]["question_type"], interleaved))
        types.add(record["meta"]["question_type"])
    assert types >= set(IMAGE_TYPES) - {"relation"}  # relation falls back to "where" on one-object scenes
    # Each type comes with and without captions ("relation" may fall back to "where" on one of them).
    assert all({(t, True), (t, False)} <= layouts for t in types - {"relation"})
    forced, _ = still_record(0, 0, "train", interleaved=True)
    assert forced["meta"]["interleaved"] is True
    with pytest.raises(ValueError, match="frames"):
        still_record(0, 0, "train", frames=1)


def test_base_pool_ids_are_disjoint_from_the_recipes_samples():
    base = {reading_record(1, i)["id"] for i in range(30)} | {still_record(1, i)[0]["id"] for i in range(30)}
    recipes = {image_record(1, i, "train")[0]["id"] for i in range(30)} | \
        {video_record(1, i, "train")[0]["id"] for i in range(30)} | {eval_record(1, i, "train")["id"] for i in range(30)}
    assert len(base) == 60 and not base & recipes
