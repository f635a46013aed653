"""The options-only floor: what the options alone give away, and that a planted regularity is caught."""

from __future__ import annotations

from dataclasses import replace

import pytest

from data_recipes.synthetic.language import NOTHING, STILL_VERB, TOGETHER, it_phrase
from data_recipes.synthetic.samples import eval_record
from evalsuite.floors import (
    FrequencyPrior, GuessItem, longest, odd_one_out, options_only_floor, shortest, synthetic_fit_items,
)

SINGLETONS = {it_phrase(STILL_VERB), NOTHING, TOGETHER}


def _item(r: dict) -> GuessItem:
    return GuessItem(r["question"], list(r["options"]), int(r["answer"]), r["meta"], r["id"])


@pytest.fixture(scope="module")
def test_items():
    return [_item(eval_record(0, i, "test")) for i in range(300)]


@pytest.fixture(scope="module")
def fit_items():
    return synthetic_fit_items(0)


def test_the_options_alone_give_nothing_away(test_items, fit_items):
    assert len(fit_items) == 2000 and {it.meta["split"] for it in fit_items} == {"train"}
    assert not {it.id for it in fit_items} & {it.id for it in test_items}
    floor = options_only_floor(test_items, fit_items, n_boot=500, seed=0)
    print("options-only floor:", floor)
    assert set(floor["per_guesser"]) == {f"position_{k}" for k in range(5)} | {"odd_one_out", "longest", "shortest",
                                                                                 "prior"}
    assert floor["n"] == 300 and floor["per_guesser"][floor["best"]] == floor["value"]
    assert floor["chosen_on"] == "fit_items"  # chosen on held-out items, then scored once on these
    assert floor["ci_low"] <= floor["value"] <= floor["ci_high"]
    assert floor["value"] <= 0.22, floor
    assert set(floor["by_kind"]) == {"static", "temporal"}
    assert sum(block["n"] for block in floor["by_kind"].values()) == 300
    assert options_only_floor(test_items, fit_items, n_boot=500, seed=0) == floor  # deterministic


def test_no_guesser_beats_chance_on_many_items(fit_items):
    # The best of nine guessers on 300 items varies by a few points from block to block; on 1500 items
    # (one guesser's standard error about 0.01) none may stand out, overall or within a kind.
    items = [_item(eval_record(0, i, "test")) for i in range(300, 1800)]
    floor = options_only_floor(items, fit_items, n_boot=200, seed=0)
    assert max(floor["per_guesser"].values()) <= 0.22 and floor["ci_low"] <= 0.2, floor
    for kind in ("static", "temporal"):
        of_kind = [it for it in items if it.meta["kind"] == kind]
        assert max(options_only_floor(of_kind, fit_items, n_boot=50)["per_guesser"].values()) <= 0.23, kind


def _planted(items, pick):
    return [replace(it, answer=pick(it)) for it in items]


def test_an_answer_that_is_always_the_odd_one_out_is_caught(test_items):
    temporal = [it for it in test_items if it.meta["kind"] == "temporal"]
    assert all(len(SINGLETONS & set(it.options)) == 1 for it in temporal)
    planted = _planted(temporal, lambda it: next(i for i, o in enumerate(it.options) if o in SINGLETONS))
    floor = options_only_floor(planted, n_boot=200)
    assert floor["best"] == "odd_one_out" and floor["value"] > 0.9
    assert floor["by_kind"]["temporal"]["value"] > 0.9


def test_an_answer_that_is_always_the_longest_is_caught(test_items):
    planted = _planted(test_items, lambda it: max(range(len(it.options)), key=lambda i: (len(it.options[i]), -i)))
    floor = options_only_floor(planted, n_boot=200)
    assert floor["best"] == "longest" and floor["value"] > 0.9 and floor["ci_low"] > 0.85


def test_a_prior_fitted_on_other_items_catches_an_answer_the_options_favour(test_items, fit_items):
    # In both sets the answer is the singleton whenever one is offered: the prior learns those texts.
    def singleton_first(it):
        return next((i for i, o in enumerate(it.options) if o in SINGLETONS), it.answer)
    floor = options_only_floor(_planted(test_items, singleton_first), _planted(fit_items, singleton_first),
                               n_boot=200)
    temporal = [it for it in test_items if it.meta["kind"] == "temporal"]
    assert floor["per_guesser"]["prior"] >= len(temporal) / len(test_items) * 0.95
    assert floor["by_kind"]["temporal"]["value"] > 0.9


def test_a_constant_answer_position_is_caught(test_items):
    floor = options_only_floor(_planted(test_items, lambda it: 3), n_boot=200)
    assert floor["best"] == "position_3" and floor["value"] == 1.0


def test_guessers_on_hand_made_items():
    synthetic = GuessItem("what happens to the circle?", ["it moves left", "it grows", "it does not change",
                                                        "it moves right", "it shrinks"], 0)
    assert odd_one_out(synthetic) == 2
    # An event option whose reversal is missing is odd too; a static answer among them makes it abstain.
    unpaired = GuessItem("what happens first?", ["the circle moves up", "the square grows", "the circle moves down",
                                                "the square turns from red to blue", "the square shrinks"], 0)
    assert odd_one_out(unpaired) == 3
    assert odd_one_out(replace(unpaired, options=unpaired.options[:4] + ["red"])) == 0
    free_text = GuessItem("what is c doing?", ["c cooks dinner", "c cleans", "c reads a long book", "c sleeps",
                                               "c runs"], 1)
    assert odd_one_out(free_text) == 0  # not the generator's phrasing: abstains
    assert longest(free_text) == 2 and shortest(free_text) == 4
    tie = GuessItem("q", ["ab", "cd", "e"], 0)
    assert longest(tie) == 0 and shortest(tie) == 2
    fit = [GuessItem("q", ["x", "y", "z"], 0), GuessItem("q", ["x", "y", "w"], 1), GuessItem("q", ["x", "z", "w"], 0)]
    prior = FrequencyPrior(fit)
    assert prior.score("x", 3) == (2 + 1) / (3 + 3)
    assert prior.score("unseen", 5) == 1 / 5  # smoothed toward chance
    assert prior(GuessItem("q", ["z", "y", "x"], 0)) == 2
    assert prior(GuessItem("q", ["new", "other"], 0)) == 0  # ties go to the lower position


def test_items_without_kinds_and_bad_input():
    items = [GuessItem("q", ["a", "bb", "c"], 1), GuessItem("q", ["a", "bb", "c"], 0)]
    floor = options_only_floor(items, n_boot=50)
    assert floor["by_kind"] == {} and "prior" not in floor["per_guesser"]
    assert floor["best"] == "position_0" and floor["value"] == 0.5  # ties go to the first guesser
    dict_floor = options_only_floor([{"question": "q", "options": ["a", "bb", "c"], "answer": 1}], n_boot=50)
    assert dict_floor["best"] == "position_1"
    with pytest.raises(ValueError, match="items is empty"):
        options_only_floor([])
    with pytest.raises(ValueError, match=r"items\[0\]\.answer"):
        options_only_floor([GuessItem("q", ["a", "b"], 2)])
    with pytest.raises(ValueError, match=r"items\[0\]\.options"):
        options_only_floor([GuessItem("q", "ab", 0)])
    with pytest.raises(ValueError, match=r"fit_items\[0\]"):
        options_only_floor(items, [object()])
