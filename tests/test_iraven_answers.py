"""The I-RAVEN answer set: context-blind shortcuts are at chance and the tree is balanced."""

import math
from collections import Counter

import numpy as np
import pytest

from evalsuite.benchmarks.iraven import CONFIG_NAMES, generate_item, item_rng, load_reference
from evalsuite.benchmarks.iraven.attributes import attribute_signature
from evalsuite.benchmarks.iraven.candidates import _apply_change, _NumberState, _sample_change, modifiable_attributes
from evalsuite.benchmarks.iraven.layouts import get_config

ATTRS = ("Number", "Position", "Type", "Size", "Color")
PER_CONFIG = 100  # 700 puzzles in all


def value_counts(candidates) -> np.ndarray:
    """For each candidate, summed over attributes: how many candidates share its value."""
    sigs = [[attribute_signature(c, a) for c in panel.components for a in ATTRS]
            for panel in candidates]
    return np.array([sum(sum(other[f] == mine[f] for other in sigs) for f in range(len(mine)))
                     for mine in sigs])


def pick(scores: np.ndarray, rng, best=max) -> int:
    """The shortcut's choice, ties broken at random."""
    return int(rng.choice(np.flatnonzero(scores == best(scores))))


def binomial_bounds(n: int, p: float, z: float = 4.0) -> tuple[float, float]:
    sd = math.sqrt(p * (1 - p) / n)
    return p - z * sd, p + z * sd


@pytest.fixture(scope="module")
def items():
    return [generate_item(c, item_rng(2024, c, k), render=False)
            for c in CONFIG_NAMES for k in range(PER_CONFIG)]


def test_shortcuts_pick_the_target_at_chance(items):
    rng = np.random.default_rng(0)
    most = np.mean([pick(value_counts(it.candidates), rng, max) == it.target for it in items])
    odd = np.mean([pick(value_counts(it.candidates), rng, min) == it.target for it in items])
    lo, hi = binomial_bounds(len(items), 1 / 8)
    assert lo < most < hi, most
    assert lo < odd < hi, odd


def raven_style_candidates(item, rng):
    """The biased RAVEN answer set for the same answer: 7 single-attribute changes."""
    config = get_config(item.config)
    avail = modifiable_attributes(config, item.rules, item.answer)
    numbers = {k: _NumberState(spec) for k, spec in enumerate(config.layouts)}
    cands = [item.answer]
    for i in range(7):
        mod = avail[i % len(avail)]
        k = mod.component
        change = _sample_change(mod, item.answer.components[k], config.layouts[k], numbers[k],
                                False, rng)
        cands.append(_apply_change(item.answer, [], k, change)[0])
    return cands


def test_shortcut_finds_the_answer_in_a_raven_style_set(items):
    """Control: the same statistic does find the answer when candidates differ from it by
    one attribute each (the bias I-RAVEN removes), so the chance result is not vacuous."""
    rng = np.random.default_rng(1)
    hits = [pick(value_counts(raven_style_candidates(it, rng)), rng, max) == 0
            for it in items[::7]]
    assert np.mean(hits) > 0.6


def test_three_attribute_tree_is_balanced(items):
    three = [it for it in items if len(it.selected) == 3]
    assert len(three) > 0.8 * len(items)  # the usual case
    for it in three:
        sets = Counter(frozenset(m) for m in it.modified)
        # The 8 candidates are exactly the subsets of the 3 chosen attributes.
        assert len(sets) == 8 and max(len(s) for s in sets) == 3
        assert set().union(*sets) == set(it.selected)
        for attr in it.selected:
            assert sum(attr in m for m in it.modified) == 4
        # Every candidate's value of every attribute is shared by the same number of
        # candidates, so value counting cannot single anything out.
        assert len(set(value_counts(it.candidates).tolist())) == 1
        # Each chosen attribute takes exactly two values over the candidates, 4 and 4.
        # (A Number change re-lays entities, which also changes the per-entity tuples and
        # slot sets of the other attributes; then only the count itself splits 4/4.)
        has_number = any(a == "Number" for _, a in it.selected)
        for k, attr in it.selected:
            if has_number and attr != "Number":
                continue
            vals = Counter(attribute_signature(p.components[k], attr) for p in it.candidates)
            assert sorted(vals.values()) == [4, 4], (it.describe(), attr)


def test_smaller_trees_fill_eight_candidates(items):
    """With fewer than three modifiable attributes the set is still 8 distinct-by-construction
    candidates: (A, then 3 values of B on both halves) or (Position, 6 Numbers)."""
    for it in items:
        assert len(it.candidates) == 8 and [m for m in it.modified if not m] == [[]]
        if len(it.selected) == 2:
            first, second = it.selected
            with_first = sum(first in m for m in it.modified)
            with_second = sum(second in m for m in it.modified)
            if {first[1], second[1]} == {"Position", "Number"}:
                assert (with_first, with_second) == (1, 6)
            else:
                assert (with_first, with_second) == (4, 6)


def test_reference_answer_sets_have_the_same_shape(iraven_reference):
    """The original generator's candidates show the same modification structure."""
    for key, item in load_reference(iraven_reference / "answers.json").items():
        sets = Counter(frozenset(m) for m in item.modified)
        chosen = set().union(*sets)
        if len(chosen) == 3:
            assert len(sets) == 8, key
            assert all(sum(a in m for m in map(set, item.modified)) == 4 for a in chosen), key
