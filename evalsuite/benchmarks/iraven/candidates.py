"""The I-RAVEN answer set: eight candidates built by attribute bisection.

RAVEN made each wrong candidate by changing one attribute of the answer, so the answer
was the candidate sharing most values with the others (the "most common value" and
"odd one out" shortcuts found it without the context). I-RAVEN instead grows a tree:

* pick three attributes that the rules constrain (``modifiable_attributes``);
* start from ``[answer]``; for each picked attribute draw one new value and append a
  modified copy of every candidate so far: 1 -> 2 -> 4 -> 8 candidates.

Each picked attribute then has the answer's value in four candidates and the new value
in the other four, so value counts carry no information about the answer. With only two
(or one) modifiable attributes the generator fills the eight candidates by drawing the
last attribute several times (see :func:`build_candidates`). Number is always modified
last so that the entities it copies already carry the other changes; when Position is
modified too, Number gets two slot sets so that the Position split survives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np

from .attributes import ComponentState, Entity, Panel
from .layouts import ConfigSpec, LayoutSpec
from .rules import Rule


@dataclass
class Modifiable:
    """An attribute of one component whose change the rules would detect."""

    component: int
    attr: str
    lo: int | None = None  # level range for Number/Type/Size/Color
    hi: int | None = None
    uniform: bool = True   # Type/Size/Color: one new level for all entities?


@dataclass
class _NumberState:
    """Number changes of one component within one item: slot sets already used per
    number level (candidates must differ) and the levels used in the current cycle (the
    generator goes through all other counts before repeating one)."""

    spec: LayoutSpec
    used_sets: dict[int, set] = field(default_factory=dict)
    cycle: set = field(default_factory=set)

    def remaining(self, level: int) -> int:
        return comb(self.spec.n_slots, level + 1) - len(self.used_sets.get(level, ()))


def modifiable_attributes(config: ConfigSpec, rules: list[list[Rule]],
                          answer: Panel) -> list[Modifiable]:
    """The attributes that may be changed to make wrong candidates, in generator order."""
    out = []
    for k, (spec, group) in enumerate(zip(config.layouts, rules)):
        comp = answer.components[k]
        layout_rule = group[0]
        lo, hi = spec.number
        # Number can change if some other count exists in the layout.
        if any(level + 1 != comp.number for level in range(lo, hi + 1)):
            out.append(Modifiable(k, "Number", lo, hi))
        # A rule on Number places entities at random slots, so only other rules make
        # the slot set itself part of the answer.
        if layout_rule.attr != "Number" and comb(spec.n_slots, comp.number) > 1:
            out.append(Modifiable(k, "Position"))
        for rule in group[1:]:
            a_lo, a_hi = spec.range_of(rule.attr)
            if a_hi <= a_lo:
                continue  # a single admissible value (e.g. the outer shape's white)
            if rule.name != "Constant":
                out.append(Modifiable(k, rule.attr, a_lo, a_hi, uniform=True))
            elif comp.uniform or not layout_rule.regenerates_entities:
                # "Constant" binds only if the entities persist along the row (Constant,
                # Progression/Distribute_Three on Position) or are all alike (uniform);
                # a change would otherwise go unnoticed by the rules.
                out.append(Modifiable(k, rule.attr, a_lo, a_hi, uniform=comp.uniform))
    return out


@dataclass
class Change:
    """A new value for one attribute, drawn once and applied to several candidates.

    Number: ``select`` says which of the candidate's entities fill the new count (by
    index, repeated when the count grows) and ``slot_sets`` holds one slot list, or two
    when Position is also being changed. Position: ``slots``. Type/Size/Color:
    ``levels``, one for all entities or one per entity.
    """

    attr: str
    select: list[int] = field(default_factory=list)
    slot_sets: list[list[int]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)


def _number_change(mod: Modifiable, comp: ComponentState, spec: LayoutSpec,
                   numbers: _NumberState, two_sets: bool, rng: np.random.Generator) -> Change:
    need = 2 if two_sets else 1
    eligible = [lv for lv in range(mod.lo, mod.hi + 1)
                if lv != comp.number_level and numbers.remaining(lv) >= need]
    pool = [lv for lv in eligible if lv not in numbers.cycle]
    if not pool:  # every other count used once: start a new cycle
        numbers.cycle.clear()
        pool = eligible
    if not pool:
        raise RuntimeError("no Number change left for this layout")
    level = int(rng.choice(pool))
    numbers.cycle.add(level)
    new_n, old_n = level + 1, comp.number
    if old_n >= new_n:  # keep a random subset of the entities
        select = [int(i) for i in rng.choice(old_n, new_n, replace=False)]
    else:               # repeat all of them, then a random subset for the remainder
        select, rest = [], new_n
        while old_n < rest:
            select += list(range(old_n))
            rest -= old_n
        select += [int(i) for i in rng.choice(old_n, rest, replace=False)]
    used = numbers.used_sets.setdefault(level, set())
    slot_sets = []
    for _ in range(need):
        while True:
            slots = [int(s) for s in rng.choice(spec.n_slots, new_n, replace=False)]
            if frozenset(slots) not in used:
                break
        used.add(frozenset(slots))
        slot_sets.append(slots)
    return Change("Number", select=select, slot_sets=slot_sets)


def _sample_change(mod: Modifiable, comp: ComponentState, spec: LayoutSpec,
                   numbers: _NumberState, two_sets: bool, rng: np.random.Generator) -> Change:
    """Draw a new value of ``mod.attr`` relative to the answer's component ``comp``."""
    if mod.attr == "Number":
        return _number_change(mod, comp, spec, numbers, two_sets, rng)
    if mod.attr == "Position":  # same count, another slot set
        while True:
            slots = [int(s) for s in rng.choice(spec.n_slots, comp.number, replace=False)]
            if frozenset(slots) != comp.position_set:
                return Change("Position", slots=slots)

    def other(level: int) -> int:
        return int(rng.choice([x for x in range(mod.lo, mod.hi + 1) if x != level]))

    # Type / Size / Color: a level different from the answer's, per entity if not uniform.
    if mod.uniform:
        levels = [other(comp.entities[0].level(mod.attr))]
    else:
        levels = [other(e.level(mod.attr)) for e in comp.entities]
    return Change(mod.attr, levels=levels)


def _apply_change(panel: Panel, modified: list, k: int, change: Change) -> tuple[Panel, list]:
    """A modified copy of a candidate (and its list of modifications)."""
    out = panel.copy()
    comp = out.components[k]
    if change.attr == "Number":
        # Candidates whose Position was changed take the second slot set, so that after
        # the Number change they still differ from the others in position.
        moved = (k, "Position") in modified and len(change.slot_sets) == 2
        slots = change.slot_sets[1 if moved else 0]
        old = comp.entities
        comp.entities = [Entity(s, old[i].type, old[i].size, old[i].color, old[i].angle)
                         for i, s in zip(change.select, slots)]
    elif change.attr == "Position":
        for ent, slot in zip(comp.entities, change.slots):
            ent.slot = slot
    else:
        levels = change.levels
        comp.entities = [e.with_level(change.attr, levels[i % len(levels)])
                         for i, e in enumerate(comp.entities)]
    return out, modified + [(k, change.attr)]


def build_candidates(config: ConfigSpec, rules: list[list[Rule]], answer: Panel,
                     rng: np.random.Generator):
    """Build and shuffle the eight candidates.

    Returns ``(candidates, modified, target, selected)``: the panels in their final order,
    the list of ``(component, attribute)`` changes of each, the answer's index and the
    attributes picked for the tree.
    """
    avail = modifiable_attributes(config, rules, answer)
    if not avail:
        raise RuntimeError("no attribute can be modified to build candidates")
    if len(avail) >= 3:
        selected = [avail[int(i)] for i in rng.choice(len(avail), 3, replace=False)]
    else:
        selected = list(avail)
    names = [m.attr for m in selected]
    if "Number" in names:  # swap Number into last place
        i = names.index("Number")
        selected[i], selected[-1] = selected[-1], selected[i]
    pos_and_num = "Number" in names and "Position" in names
    numbers = {k: _NumberState(spec) for k, spec in enumerate(config.layouts)}

    def change(mod: Modifiable, two_sets: bool = False):
        k = mod.component
        return _sample_change(mod, answer.components[k], config.layouts[k], numbers[k],
                              two_sets, rng)

    cands: list[tuple[Panel, list]] = [(answer, [])]
    if len(selected) >= 3:
        for mod in selected:
            value = change(mod, two_sets=pos_and_num)
            cands += [_apply_change(p, m, mod.component, value) for p, m in cands]
    elif len(selected) == 2:
        first, second = selected
        cands.append(_apply_change(answer, [], first.component, change(first)))
        # Position then Number: six counts on the answer; otherwise three values of the
        # second attribute on both the answer and its first modification.
        draws, bases = (6, 1) if pos_and_num else (3, 2)
        for _ in range(draws):
            value = change(second)
            cands += [_apply_change(*cands[j], second.component, value) for j in range(bases)]
    else:
        only = selected[0]
        for _ in range(7):
            cands.append(_apply_change(answer, [], only.component, change(only)))
    order = rng.permutation(len(cands))
    panels = [cands[i][0] for i in order]
    modified = [cands[i][1] for i in order]
    target = int(np.flatnonzero(order == 0)[0])
    return panels, modified, target, selected
