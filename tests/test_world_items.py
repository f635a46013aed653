"""Tests of what the synthetic world asks (data_recipes.synthetic): evaluation items of two kinds with
balanced answer slots, temporal option sets whose texts give nothing away (two time-reversal pairs plus
one self-reversing option that is the answer one time in five), static answers that hold in every
frame, the training video mix, shuffled twins and disjoint pools."""

from __future__ import annotations

import collections
import json
import math
import random

import pytest

from data_recipes.synthetic import (
    CATEGORIES, TOGETHER, category_of, eval_item, eval_record, image_record, item_kind, item_scene,
    reversal_partner, video_record, video_sample,
)
from data_recipes.synthetic.language import (
    NOTHING, OPTION_VERBS, event_phrase, it_phrase, position_phrase, shape_phrase,
)
from data_recipes.synthetic.questions import STATIC_EVAL_TYPES
from data_recipes.synthetic.render import render_frame
from data_recipes.synthetic.sampler import (
    eval_windows, random_scene, sample_indices, video_windows, visible_when_sampled,
)
from data_recipes.synthetic.scenes import COLOURS, SHAPES, overlap

N_ITEMS = 300
SELF_REVERSING = {it_phrase("does not change"), NOTHING, TOGETHER}


@pytest.fixture(scope="module")
def items():
    return [eval_record(0, i, "test") for i in range(N_ITEMS)]


def _within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """Whether a binomial count is within `sigmas` standard deviations of n * p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _option_category(text: str) -> str:
    """The event category an option text talks about (read off the words, independently of the
    generator's own mapping)."""
    verb = text.split(" ", 1)[1] if text.startswith("it ") else text.split(" ", 2)[2]
    if verb in ("moves left", "moves right"):
        return "horizontal"
    if verb in ("moves up", "moves down"):
        return "vertical"
    if verb.startswith("turns from "):
        return "colour"
    return {"appears": "presence", "disappears": "presence", "grows": "size", "shrinks": "size"}[verb]


# ------------------------------------------------------------------------------------- kinds and slots

def test_kinds_come_in_blocks_of_five_two_static_in_five():
    kinds = [item_kind(i) for i in range(50)]
    blocks = [kinds[b * 5:(b + 1) * 5] for b in range(10)]
    assert all(len(set(block)) == 1 for block in blocks)
    assert [block[0] for block in blocks] == ["temporal", "static", "temporal", "static", "temporal"] * 2


def test_kinds_and_answer_slots_are_exactly_balanced_on_300_items(items):
    counts = collections.Counter((r["meta"]["kind"], r["answer"]) for r in items)
    # 60 blocks of five: 24 static, 36 temporal; each block uses every slot once.
    assert counts == {**{("static", k): 24 for k in range(5)}, **{("temporal", k): 36 for k in range(5)}}
    assert [r["meta"]["kind"] for r in items] == [item_kind(i) for i in range(N_ITEMS)]
    # Within every multiple of 25 items the slots are balanced per kind too.
    first25 = collections.Counter((r["meta"]["kind"], r["answer"]) for r in items[:25])
    assert first25 == {**{("static", k): 2 for k in range(5)}, **{("temporal", k): 3 for k in range(5)}}


def test_kind_override_and_bad_kind():
    assert item_kind(5) == "static"
    r = eval_record(0, 5, "test", kind="temporal")
    assert r["meta"]["kind"] == "temporal" and r["meta"]["reversed_answer"] is not None
    assert eval_record(0, 0, "test", kind="static")["meta"]["question_type"] in STATIC_EVAL_TYPES
    with pytest.raises(ValueError, match="kind"):
        eval_record(0, 0, "test", kind="moving")


def test_every_item_survives_sampling_5_and_10_frames(items):
    for r in items:
        assert visible_when_sampled(item_scene(r["meta"]), (5, 10))
        assert r["meta"]["sampled_frames"] == {"5": sample_indices(32, 5), "10": sample_indices(32, 10)}


# ------------------------------------------------------------------------------------- temporal options

def test_temporal_option_sets_are_two_reversal_pairs_and_one_self_reversing_option(items):
    for r in items:
        if r["meta"]["kind"] != "temporal":
            continue
        options = r["options"]
        singles = [o for o in options if reversal_partner(o) is None]
        assert len(singles) == 1 and singles[0] in SELF_REVERSING
        paired = [o for o in options if o not in singles]
        assert all(reversal_partner(o) in paired and reversal_partner(o) != o for o in paired)
        # The reversed clip's answer: the answer itself if self-reversing; else the answer's reversal,
        # or for "what happens first/last?" the reversal of the other event (last played backwards
        # comes first).
        answer, reversed_answer = options[r["answer"]], options[r["meta"]["reversed_answer"]]
        partner = reversal_partner(answer)
        if partner is None:
            assert reversed_answer == answer
        elif r["meta"]["question_type"] in ("happens", "changes"):
            assert reversed_answer == partner
        else:
            scene = item_scene(r["meta"])
            other = scene.events_in_order()[r["meta"]["question_type"] == "first"]
            assert reversed_answer not in (answer, partner)
            assert reversed_answer == reversal_partner(event_phrase(scene, other))


def test_the_self_reversing_option_is_the_answer_of_exactly_one_temporal_item_per_block(items):
    per_block = collections.defaultdict(list)
    for i, r in enumerate(items):
        if r["meta"]["kind"] == "temporal":
            per_block[i // 5].append(reversal_partner(r["options"][r["answer"]]) is None)
    assert len(per_block) == 36 and all(sum(flags) == 1 and len(flags) == 5 for flags in per_block.values())
    # ...and which item it is varies between blocks (a seeded position, not a fixed one).
    positions = {flags.index(True) for flags in per_block.values()}
    assert len(positions) >= 3


def test_self_reversing_answers_match_the_clip(items):
    """A still target, a clip without events, or two events that overlap in time."""
    seen = collections.Counter()
    for r in items:
        meta = r["meta"]
        if meta["kind"] != "temporal":
            continue
        scene, answer, qtype = item_scene(meta), r["options"][r["answer"]], meta["question_type"]
        events = scene.events_in_order()
        if qtype == "happens":
            assert (answer == it_phrase("does not change")) == (not scene.events_of(meta["target"]))
        elif qtype == "changes":
            assert (answer == NOTHING) == (not events)
            assert len(events) <= 1
        else:
            assert len(events) == 2 and (answer == TOGETHER) == overlap(*events)
        if reversal_partner(answer) is None:
            seen[qtype] += 1
    assert set(seen) == {"happens", "changes", "first", "last"}  # each kind of self-reversing answer occurs


def test_decoy_category_never_equals_the_answers(items):
    for r in items:
        meta = r["meta"]
        if meta["kind"] != "temporal" or meta["question_type"] not in ("happens", "changes"):
            continue
        answer = r["options"][r["answer"]]
        cats = collections.Counter(_option_category(o) for o in r["options"] if reversal_partner(o) is not None)
        # Two pairs of two different categories.
        assert sorted(cats.values()) == [2, 2]
        if reversal_partner(answer) is not None:
            events = item_scene(meta).events_in_order()
            real = events[0] if meta["question_type"] == "changes" else item_scene(meta).events_of(meta["target"])[0]
            assert _option_category(answer) == category_of(real)


def test_real_and_decoy_categories_are_drawn_alike():
    """Real events' categories are uniform, and so are the decoys' among the other four: given the two
    pairs' categories, each is the real one equally often (binomial bounds over 1500 items)."""
    real, pairs = collections.Counter(), collections.Counter()
    for i in range(1500):
        r = eval_record(1, i, "test", clip_frames=16, kind="temporal")
        meta = r["meta"]
        answer = r["options"][r["answer"]]
        if meta["question_type"] not in ("happens", "changes") or reversal_partner(answer) is None:
            continue
        a = _option_category(answer)
        (d,) = {_option_category(o) for o in r["options"] if reversal_partner(o) is not None} - {a}
        real[a] += 1
        pairs[frozenset((a, d)), a] += 1
    n = sum(real.values())
    assert n > 600
    assert all(_within(real[c], n, 1 / 5) for c in CATEGORIES)
    for a in CATEGORIES:
        for b in CATEGORIES:
            if a < b:
                both = pairs[frozenset((a, b)), a] + pairs[frozenset((a, b)), b]
                assert both > 20 and _within(pairs[frozenset((a, b)), a], both, 1 / 2)


# ------------------------------------------------------------------------------------- static items

def test_static_answers_hold_in_every_frame(items):
    statics = [r for r in items if r["meta"]["kind"] == "static"]
    assert {r["meta"]["question_type"] for r in statics} == set(STATIC_EVAL_TYPES)
    for r in statics[:40]:
        meta = r["meta"]
        scene, answer, target = item_scene(meta), r["options"][r["answer"]], meta["target"]
        assert scene.events and not scene.events_of(target)  # other objects change, the target does not
        assert r["question"].endswith(f"the {scene.objects[target].shape}?")
        for t in range(scene.n_frames):
            s = scene.state(t)[target]
            assert s.visible
            assert answer == (s.colour if meta["question_type"] == "colour" else position_phrase(*s.cell))
            if meta["question_type"] == "colour":  # and the pixels agree at every frame
                pixel = render_frame(scene, t).getpixel((int(s.x * 64), int(s.y * 64)))
                assert pixel == COLOURS[answer]
        pool = list(COLOURS) if meta["question_type"] == "colour" else None
        if pool is not None:
            assert set(r["options"]) <= set(pool)
        with pytest.raises(ValueError):
            reversal_partner(answer)  # static answers are not event phrases


# ------------------------------------------------------------------------------------- reversal_partner

def test_reversal_partner_round_trips_on_every_option_phrase():
    texts = [it_phrase(v) for v in OPTION_VERBS] + [shape_phrase(s, v) for s in SHAPES for v in OPTION_VERBS]
    for text in texts:
        partner = reversal_partner(text)
        assert partner is not None and partner != text and reversal_partner(partner) == text
    assert reversal_partner("it moves left") == "it moves right"
    assert reversal_partner("the circle appears") == "the circle disappears"
    assert reversal_partner("it turns from red to green") == "it turns from green to red"
    for text in SELF_REVERSING:
        assert reversal_partner(text) is None
    for bad in ("red", "on the left", "the man opens the door", "the cat moves left", "it turns from red to red"):
        with pytest.raises(ValueError):
            reversal_partner(bad)


# ------------------------------------------------------------------------------------- random scenes

def test_random_scene_draws_categories_uniformly_and_simultaneous_events_overlap():
    rng = random.Random(0)
    counts, n = collections.Counter(), 0
    while n < 3000:
        scene = random_scene(rng, 32, 3, eval_windows(32, 2))
        counts.update(category_of(e) for e in scene.events)
        n += len(scene.events)
    assert all(_within(counts[c], n, 1 / 5) for c in CATEGORIES)
    for _ in range(200):
        scene = random_scene(rng, 5, rng.randint(2, 3), video_windows(5, 2), simultaneous=True)
        e1, e2 = scene.events_in_order()
        assert overlap(e1, e2)
        scene = random_scene(rng, 5, 2, video_windows(5, 2))
        assert not overlap(*scene.events_in_order())
    with pytest.raises(ValueError, match="two windows"):
        random_scene(rng, 5, 2, video_windows(5, 1), simultaneous=True)
    with pytest.raises(ValueError, match="categor"):
        random_scene(rng, 5, 2, video_windows(5, 1), categories=("spin",))


# ------------------------------------------------------------------------------------- training mix

def test_training_video_mix():
    records = [video_record(0, i, "train", frames=5)[0] for i in range(400)]
    kinds = collections.Counter(r["meta"]["kind"] for r in records)
    assert kinds == {"static": 120, "temporal": 280}  # 3 in 10, cycled
    singles = mc = 0
    kinds_of_single = set()
    for r in records:
        meta, answer = r["meta"], r["messages"][1]["content"][0]["text"]
        scene = item_scene(meta)
        if meta["kind"] == "static":
            assert scene.events  # the clip still changes, elsewhere
            if meta["target"] is not None:
                assert not scene.events_of(meta["target"])
            else:  # count: no object appears or disappears
                assert meta["question_type"].startswith("count")
                assert len({sum(s.visible for s in scene.state(t)) for t in range(5)}) == 1
            assert "reversed_answer" not in meta
            continue
        if "options" in meta:
            mc += 1
            if reversal_partner(answer) is None:
                singles += 1
                kinds_of_single.add(meta["question_type"])
                assert meta["reversed_answer"] == meta["answer"]
    assert mc == 180 and _within(singles, mc, 1 / 5)
    assert kinds_of_single == {"happens_mc", "changes_mc", "first_mc", "last_mc"}
    # Free-form questions about the new cases exist too.
    free = {r["messages"][1]["content"][0]["text"] for r in records if "options" not in r["meta"]}
    assert {"nothing changes.", TOGETHER + ".", "it does not change."} <= free


def test_shuffled_twins_differ_only_in_frame_order():
    for i in range(30):
        frames = 3 + i % 5
        ordered, ordered_images = video_sample(2, i, "train", frames=frames)
        shuffled, shuffled_images = video_sample(2, i, "train", frames=frames, shuffle_frames=True)
        order = shuffled["meta"].pop("frame_order")
        assert sorted(order) == list(range(frames)) and order != list(range(frames))
        assert shuffled["id"].replace("video-shuffled", "video") == ordered["id"] != shuffled["id"]
        assert json.dumps({**shuffled, "id": ""}, sort_keys=True) == json.dumps({**ordered, "id": ""}, sort_keys=True)
        assert [im.tobytes() for im in shuffled_images] == [ordered_images[t].tobytes() for t in order]
    # The permutation is seeded: the same arguments give the same order, other indices other orders.
    orders = {tuple(video_record(2, i, "train", frames=6, shuffle_frames=True)[0]["meta"]["frame_order"])
              for i in range(20)}
    assert len(orders) > 10
    assert (video_record(2, 3, "train", shuffle_frames=True)[0]["meta"]["frame_order"]
            == video_record(2, 3, "train", shuffle_frames=True)[0]["meta"]["frame_order"])


# ------------------------------------------------------------------------------------- pools

def test_pools_give_disjoint_ids_and_streams():
    default = [eval_record(0, i, "train") for i in range(50)]
    pooled = [eval_record(0, i, "train", pool="reading") for i in range(50)]
    assert not {r["id"] for r in default} & {r["id"] for r in pooled}
    assert all(r["id"].startswith("synthetic-reading-eval-train-") for r in pooled)
    assert all(r["id"].startswith("synthetic-eval-train-") for r in default)
    # Different random streams: the scenes differ (not just the names).
    assert sum(a["meta"]["scene"] == b["meta"]["scene"] for a, b in zip(default, pooled)) == 0
    for build in (lambda i, p: video_record(0, i, "train", pool=p)[0],
                  lambda i, p: image_record(0, i, "train", pool=p)[0]):
        ids = {p: {build(i, p)["id"] for i in range(30)} for p in ("", "base", "guesser-fit")}
        assert not ids[""] & ids["base"] and not ids["base"] & ids["guesser-fit"] and not ids[""] & ids["guesser-fit"]
        assert all(i.startswith("synthetic-base-") for i in ids["base"])
    with pytest.raises(ValueError, match="pool"):
        eval_record(0, 0, pool=3)


def test_eval_item_passes_pool_and_kind():
    item = eval_item(0, 0, clip_frames=16, pool="x", kind="static")
    assert item["id"].startswith("synthetic-x-eval-") and item["meta"]["kind"] == "static"
    assert len(item["frames"]) == 16
