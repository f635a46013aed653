"""Build the 3x3 matrix of one component by applying its rules along the rows.

Procedure (the original generator's, restated):

1. The component is uniform (all entities identical) with probability 1/4, fixed for the
   whole matrix.
2. Each row starts from a freshly sampled first column: a number of entities from the
   narrowed range, at random slots, each entity with random Type/Size/Color/Angle (one
   shared entity if uniform).
3. The Number/Position rule produces columns 2 and 3. Rules on Number and Arithmetic on
   Position place new entities (a copy of the previous column's first entity, re-drawn
   unless the layout is uniform); Constant, Progression on Position and
   Distribute_Three on Position keep the entities and only move them.
4. The Type, Size and Color rules then set those attributes column by column. Every rule
   other than Constant first makes the first column consistent (all entities take the
   level of its first entity), so that the rule holds for every entity.

Distribute_Three draws its three values in row 1 and stores them (one rotation per row)
in ``rule.value_levels``, which the checker and answers.json use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attributes import ANGLE_VALUES, COLOR_VALUES, UNIFORMITY_VALUES, ComponentState, Entity
from .layouts import LayoutSpec
from .rules import Ranges, Rule, latin_rows

_COLOR_TOP = len(COLOR_VALUES) - 1


def _draw(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


@dataclass
class _Context:
    """What every step of one component's matrix needs."""

    spec: LayoutSpec
    ranges: Ranges
    uniform: bool
    rng: np.random.Generator

    def entity(self, slot: int) -> Entity:
        r, rng = self.ranges, self.rng
        return Entity(slot=int(slot), type=_draw(rng, *r.type), size=_draw(rng, *r.size),
                      color=_draw(rng, *r.color), angle=_draw(rng, 0, len(ANGLE_VALUES) - 1))

    def random_slots(self, number: int) -> list[int]:
        return [int(s) for s in self.rng.choice(self.spec.n_slots, number, replace=False)]

    def fresh(self, number: int | None = None) -> ComponentState:
        """A first column: random number (within range), random slots, random entities."""
        if number is None:
            number = _draw(self.rng, *self.ranges.number) + 1
        return self.populate(self.random_slots(number), template=None)

    def populate(self, slots: list[int], template: Entity | None) -> ComponentState:
        """Entities at ``slots``: copies of ``template`` if uniform, else newly drawn.

        A uniform layout copies one entity everywhere (angle included); with no template
        (a fresh first column) that entity is drawn first.
        """
        if self.uniform:
            proto = template if template is not None else self.entity(slots[0])
            ents = [Entity(int(s), proto.type, proto.size, proto.color, proto.angle) for s in slots]
        else:
            ents = [self.entity(s) for s in slots]
        return ComponentState(self.spec.component, self.spec.name, self.uniform, ents)

    def redraw(self, prev: ComponentState, number: int | None = None,
               slots: list[int] | None = None) -> ComponentState:
        """Next column with new entities (rules on Number, Arithmetic on Position)."""
        if slots is None:
            slots = self.random_slots(number)
        return self.populate(slots, template=prev.entities[0])


def _moved(comp: ComponentState, slots: list[int]) -> ComponentState:
    """Same entities, in the same order, placed at ``slots``."""
    out = comp.copy()
    for ent, slot in zip(out.entities, slots):
        ent.slot = int(slot)
    return out


def _layout_row(rule: Rule, row: int, col1: ComponentState, ctx: _Context):
    """Apply the Number/Position rule: return the row's three columns."""
    name, attr, v, n_slots = rule.name, rule.attr, rule.value, ctx.spec.n_slots
    rng, spec = ctx.rng, ctx.spec
    if name == "Constant":
        return col1, col1.copy(), col1.copy()
    if name == "Progression" and attr == "Number":
        col2 = ctx.redraw(col1, number=col1.number + v)
        return col1, col2, ctx.redraw(col2, number=col2.number + v)
    if name == "Progression":  # Position: every slot index moves by v (mod slots)
        col2 = _moved(col1, [(s + v) % n_slots for s in col1.positions])
        return col1, col2, _moved(col2, [(s + v) % n_slots for s in col2.positions])
    if name == "Arithmetic" and attr == "Number":
        l1, lo = col1.number_level, spec.number[0]
        # Column 2 is drawn so that column 3 stays within the layout's original range.
        hi = spec.number[1] - l1 - 1 if v > 0 else l1 - lo - 1
        l2 = _draw(rng, lo, hi)
        l3 = l1 + l2 + 1 if v > 0 else l1 - l2 - 1   # on counts: n3 = n1 +/- n2
        col2 = ctx.redraw(col1, number=l2 + 1)
        return col1, col2, ctx.redraw(col2, number=l3 + 1)
    if name == "Arithmetic":  # Position: union / difference of slot sets
        s1 = col1.position_set
        while True:
            slots2 = ctx.random_slots(_draw(rng, *ctx.ranges.number) + 1)
            # A union must add a slot; a difference must leave one.
            if (v > 0 and not set(slots2) <= s1) or (v < 0 and not s1 <= set(slots2)):
                break
        s3 = s1 | set(slots2) if v > 0 else s1 - set(slots2)
        col2 = ctx.redraw(col1, slots=slots2)
        return col1, col2, ctx.redraw(col2, slots=sorted(s3))
    if name == "Distribute_Three" and attr == "Number":
        if row == 0:
            lo, hi = ctx.ranges.number
            others = [lv for lv in range(lo, hi + 1) if lv != col1.number_level]
            picked = [int(x) for x in rng.choice(others, 2, replace=False)]
            rule.value_levels = latin_rows([col1.number_level] + picked, rng)
        else:
            col1 = ctx.fresh(rule.value_levels[row][0] + 1)
        levels = rule.value_levels[row]
        col2 = ctx.redraw(col1, number=levels[1] + 1)
        return col1, col2, ctx.redraw(col2, number=levels[2] + 1)
    if name == "Distribute_Three":  # Position: three different slot sets of one size
        if row == 0:
            seen = [col1.position_set]
            sets = [col1.positions]
            while len(sets) < 3:
                cand = ctx.random_slots(col1.number)
                if frozenset(cand) not in seen:
                    seen.append(frozenset(cand))
                    sets.append(cand)
            rule.value_levels = latin_rows(sets, rng)
        else:
            first = rule.value_levels[row][0]
            col1 = _moved(ctx.fresh(len(first)), first)
        triple = rule.value_levels[row]
        col2 = _moved(col1, triple[1])
        return col1, col2, _moved(col2, triple[2])
    raise ValueError(f"unsupported layout rule {rule.describe()}")


def _entity_row(rule: Rule, row: int, cols, ctx: _Context, alarm: dict) -> None:
    """Apply a Type/Size/Color rule to the row's three columns, in place."""
    name, attr, v = rule.name, rule.attr, rule.value
    if name == "Constant":
        return
    rng, spec = ctx.rng, ctx.spec
    # Every non-Constant rule takes column 1's first entity as the row's starting level
    # and then gives all entities of each column the same level.
    l1 = cols[0].entities[0].level(attr)
    if name == "Progression":
        levels = (l1, l1 + v, l1 + 2 * v)
    elif name == "Distribute_Three":
        if row == 0:
            lo, hi = ctx.ranges.range_of(attr)
            base = [int(x) for x in rng.choice(np.arange(lo, hi + 1), 3, replace=False)]
            rule.value_levels = latin_rows(base, rng)
        levels = tuple(rule.value_levels[row])
    elif name == "Arithmetic" and attr == "Size":
        lo = spec.size[0]
        hi = spec.size[1] - l1 - 1 if v > 0 else l1 - lo - 1
        l2 = _draw(rng, lo, hi)
        levels = (l1, l2, l1 + l2 + 1 if v > 0 else l1 - l2 - 1)
    elif name == "Arithmetic" and attr == "Color":
        # If column 2 is white (level 0) in row 1 and again in row 2, add and subtract
        # cannot be told apart; the generator keeps row 2's column 2 non-white then, first
        # re-drawing a column-1 color that would force it to be white.
        if row == 1 and alarm.get("white") and l1 == (_COLOR_TOP if v > 0 else 0):
            lo, hi = ctx.ranges.color
            l1 = int(rng.choice([c for c in range(lo, hi + 1) if c != l1]))
        lo = spec.color[0]  # column 2 may go down to the layout's lowest level ...
        hi = spec.color[1] - l1 if v > 0 else l1  # ... but column 3 must stay in range
        l2 = _draw(rng, lo, hi)
        if row == 0:
            alarm["white"] = l2 == 0
        elif row == 1 and alarm.get("white") and l2 == 0:
            l2 = int(rng.choice([c for c in range(lo, hi + 1) if c != 0]))
        levels = (l1, l2, l1 + l2 if v > 0 else l1 - l2)
    else:
        raise ValueError(f"unsupported entity rule {rule.describe()}")
    for comp, level in zip(cols, levels):
        comp.set_all(attr, level)


def build_component_rows(spec: LayoutSpec, ranges: Ranges, group: list[Rule],
                         rng: np.random.Generator) -> list[list[ComponentState]]:
    """The 3x3 states of one component under its rule group ([layout, type, size, color])."""
    uniform = bool(UNIFORMITY_VALUES[int(rng.integers(len(UNIFORMITY_VALUES)))])
    ctx = _Context(spec, ranges, uniform, rng)
    layout_rule, *entity_rules = group
    alarm: dict = {}  # Arithmetic Color's memory across rows (see _entity_row)
    rows = []
    for row in range(3):
        cols = _layout_row(layout_rule, row, ctx.fresh(), ctx)
        for rule in entity_rules:
            _entity_row(rule, row, cols, ctx, alarm)
        rows.append(list(cols))
    return rows
