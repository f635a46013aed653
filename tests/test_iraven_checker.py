"""Symbolic checker on the reference puzzles (original generator) and on generated ones."""

import copy
import json

import numpy as np
import pytest

from evalsuite.benchmarks.iraven import CONFIG_NAMES, check_item, generate_item, item_from_reference, load_reference


@pytest.fixture(scope="module")
def reference(iraven_reference):
    return load_reference(iraven_reference / "answers.json")


def test_reference_puzzles_have_exactly_the_target_satisfying(reference):
    assert len(reference) == 42
    for key, item in reference.items():
        result = check_item(item)
        assert result.context_ok, (key, result.context_violations)
        assert result.satisfying == [item.target], (key, result.satisfying, result.reasons)
        assert result.unique and result.ok
        for i, reasons in enumerate(result.reasons):
            assert bool(reasons) == (i != item.target)


def test_reference_conversion_keeps_structure(reference, iraven_reference):
    raw = json.loads((iraven_reference / "answers.json").read_text())["puzzles"]
    for key, item in reference.items():
        entry = raw[key]
        assert item.config == entry["config"] and item.target == entry["target"]
        assert len(item.context) == 8 and len(item.candidates) == 8
        # The only unmodified candidate is the answer.
        assert [i for i, m in enumerate(item.modified) if not m] == [item.target]
        comp = entry["candidates"][0]["components"][0]
        got = item.candidates[0].components[0]
        assert got.positions == comp["positions"] and got.uniform == comp["uniformity"]
        assert [e.type for e in got.entities] == [e["type_level"] for e in comp["entities"]]
        assert [(r.name, r.attr) for g in item.rules for r in g] == \
            [(r["name"], r["attr"]) for g in entry["rules"] for r in g]


def test_checker_rejects_a_puzzle_with_a_wrong_rule_parameter(reference):
    """Flip the sign of a Progression: the context itself must then be reported broken."""
    item = copy.deepcopy(reference["center_single/RAVEN_0_train.npz"])
    rule = item.rules[0][2]
    assert (rule.name, rule.attr, rule.value) == ("Progression", "Size", 2)
    rule.value = -2
    result = check_item(item)
    assert not result.context_ok and not result.ok
    assert any("Size" in v for v in result.context_violations)
    assert result.satisfying == []


def test_checker_notices_a_changed_answer(reference):
    """Altering the answer's constrained attribute makes it fail (the checker can fail)."""
    item = copy.deepcopy(reference["distribute_four/RAVEN_8_test.npz"])  # Progression Color +2
    answer = item.candidates[item.target].components[0]
    answer.set_all("Color", answer.entities[0].color - 1)
    result = check_item(item)
    assert result.satisfying == [] and not result.ok
    assert any("Color" in r for r in result.reasons[item.target])


def test_constant_in_regenerating_layout_does_not_constrain(iraven_reference):
    """README convention: Constant Size with a Number rule in a non-uniform layout is free."""
    raw = json.loads((iraven_reference / "answers.json").read_text())["puzzles"]["distribute_four/RAVEN_9_test.npz"]
    item = item_from_reference(raw)  # Arithmetic Number sub, Constant Size, non-uniform
    assert item.rules[0][0].attr == "Number" and item.rules[0][2].name == "Constant"
    assert not item.answer.components[0].uniform
    item.candidates[item.target].components[0].set_all("Size", 0)
    assert check_item(item).satisfying == [item.target]


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_generated_items_have_unique_correct_answer(config):
    rng = np.random.default_rng(CONFIG_NAMES.index(config))
    for _ in range(100):
        item = generate_item(config, rng, render=False)
        result = check_item(item)
        assert result.context_ok, (item.describe(), result.context_violations)
        assert result.satisfying == [item.target], (item.describe(), result.reasons)
        assert item.predict == item.target


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_many_generated_items_have_unique_correct_answer(config):
    rng = np.random.default_rng(1000 + CONFIG_NAMES.index(config))
    for _ in range(1500):
        item = generate_item(config, rng, render=False)
        assert check_item(item).ok, item.describe()


def test_every_wrong_candidate_breaks_a_rule_it_was_modified_on():
    """A wrong candidate fails a rule on (one of) the attributes it was changed on."""
    rng = np.random.default_rng(4)
    for config in CONFIG_NAMES:
        for _ in range(20):
            item = generate_item(config, rng, render=False)
            result = check_item(item)
            for i, mods in enumerate(item.modified):
                if i == item.target:
                    continue
                named = {a for _, a in mods}
                if "Number" in named or "Position" in named:
                    named |= {"Number", "Position", "Number/Position"}
                assert any(any(a in reason for a in named) for reason in result.reasons[i]), \
                    (item.describe(), result.reasons[i])
