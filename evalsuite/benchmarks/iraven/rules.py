"""Rules of I-RAVEN: what can be sampled, how rules narrow the value ranges, and the
meaning of each rule as a relation between the three panels of a row.

A component gets one rule per attribute group, in this order: a Number/Position rule,
then one rule each on Type, Size and Color. Rules act along rows (column 1 -> 2 -> 3).

Sampling (as in the original generator): each group's rule is drawn uniformly from its
list below, and its parameter uniformly from the rule's parameter list. A rule set is
kept only if, after narrowing the layout's ranges (:func:`narrow_ranges`), every range is
still non-empty; otherwise all rules are drawn again. Narrowing is what keeps every value
reachable: e.g. a Progression of +2 on Size needs the first column at most level 1, so
that columns 2 and 3 (levels +2, +4) still exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attributes import META_MATRIX_COLUMNS
from .layouts import LayoutSpec, Range

# (rule, attribute, parameter choices). Progression steps are in levels per column;
# Arithmetic +1 is "add" (set union for Position), -1 "subtract" (set difference).
_STEPS = (-2, -1, 1, 2)
_SIGNS = (1, -1)
RULE_CHOICES: tuple[tuple[tuple[str, str, tuple[int, ...] | None], ...], ...] = (
    (("Progression", "Number", _STEPS), ("Progression", "Position", _STEPS),
     ("Arithmetic", "Number", _SIGNS), ("Arithmetic", "Position", _SIGNS),
     ("Distribute_Three", "Number", None), ("Distribute_Three", "Position", None),
     ("Constant", "Number/Position", None)),
    (("Progression", "Type", _STEPS), ("Distribute_Three", "Type", None),
     ("Constant", "Type", None)),
    (("Progression", "Size", _STEPS), ("Arithmetic", "Size", _SIGNS),
     ("Distribute_Three", "Size", None), ("Constant", "Size", None)),
    (("Progression", "Color", _STEPS), ("Arithmetic", "Color", _SIGNS),
     ("Distribute_Three", "Color", None), ("Constant", "Color", None)),
)


@dataclass
class Rule:
    """A sampled rule with its parameter.

    ``value`` is the Progression step or the Arithmetic sign (None for Constant and
    Distribute_Three). ``value_levels`` is filled for Distribute_Three while the rows are
    built: one triple per row (levels; for Position, lists of slot indices).
    """

    name: str
    attr: str
    value: int | None
    component: int
    value_levels: list | None = field(default=None)

    @property
    def regenerates_entities(self) -> bool:
        """Whether this layout rule re-draws the entities from column to column.

        Rules on Number, and Arithmetic on Position, place a fresh set of entities in each
        column, so in a non-uniform layout a "Constant" Type/Size/Color cannot tie
        entities across the row and does not constrain anything.
        """
        return self.attr == "Number" or (self.name == "Arithmetic" and self.attr == "Position")

    def meta_row(self) -> np.ndarray:
        row = np.zeros(len(META_MATRIX_COLUMNS), np.uint8)
        row[META_MATRIX_COLUMNS.index(self.name)] = 1
        for attr in self.attr.split("/"):  # "Number/Position" sets both columns
            row[META_MATRIX_COLUMNS.index(attr)] = 1
        return row

    def describe(self) -> str:
        if self.name == "Arithmetic":
            if self.attr == "Position":
                return f"Arithmetic Position {'union' if self.value > 0 else 'difference'}"
            return f"Arithmetic {self.attr} {'add' if self.value > 0 else 'sub'}"
        if self.name == "Progression":
            return f"Progression {self.attr} {self.value:+d}"
        return f"{self.name} {self.attr}"


@dataclass
class Ranges:
    """Admissible level ranges of one component after its rules narrowed them."""

    number: Range
    type: Range
    size: Range
    color: Range

    def range_of(self, attr: str) -> Range:
        return getattr(self, attr.lower())

    def is_empty(self) -> bool:
        return any(lo > hi for lo, hi in (self.number, self.type, self.size, self.color))


def sample_rule_group(component: int, rng: np.random.Generator) -> list[Rule]:
    """Draw the four rules (Number/Position, Type, Size, Color) of one component."""
    group = []
    for choices in RULE_CHOICES:
        name, attr, params = choices[rng.integers(len(choices))]
        value = None if params is None else int(params[rng.integers(len(params))])
        group.append(Rule(name, attr, value, component))
    return group


def narrow_ranges(spec: LayoutSpec, group: list[Rule]) -> Ranges:
    """Narrow a layout's level ranges so that every rule of ``group`` can be applied.

    The result may be empty (see :meth:`Ranges.is_empty`): the rule set is then not
    admissible for this layout. The arithmetic mirrors the original generator, including
    its integer divisions.
    """
    (n_lo, n_hi), (t_lo, t_hi) = spec.number, spec.type
    (s_lo, s_hi), (c_lo, c_hi) = spec.size, spec.color
    for rule in group:
        name, attr, v = rule.name, rule.attr, rule.value
        if name == "Progression":
            # Column 3 is two steps from column 1: leave room for 2*|v| levels.
            if attr == "Number":
                n_hi, n_lo = (n_hi - 2 * v, n_lo) if v > 0 else (n_hi, n_lo - 2 * v)
            elif attr == "Position":
                n_hi -= 2 * abs(v)
            elif attr == "Type":
                t_hi, t_lo = (t_hi - 2 * v, t_lo) if v > 0 else (t_hi, t_lo - 2 * v)
            elif attr == "Size":
                s_hi, s_lo = (s_hi - 2 * v, s_lo) if v > 0 else (s_hi, s_lo - 2 * v)
            elif attr == "Color":
                c_hi, c_lo = (c_hi - 2 * v, c_lo) if v > 0 else (c_hi, c_lo - 2 * v)
        elif name == "Arithmetic":
            if attr == "Number":
                # n3 = n1 + n2 needs n1 small enough; n3 = n1 - n2 needs n1 > n2 >= min.
                n_hi, n_lo = (n_hi - n_lo - 1, n_lo) if v > 0 else (n_hi, 2 * n_lo + 1)
            elif attr == "Position":
                if v > 0:  # union: column 2 must add something to column 1
                    n_hi -= 1
                else:      # difference: column 1 big enough that something is left
                    n_lo, n_hi = (n_hi + 2) // 2 - 1, n_hi - 1
            elif attr == "Size":  # l3 = l1 + l2 + 1 or l1 - l2 - 1
                s_hi, s_lo = (s_hi - s_lo - 1, s_lo) if v > 0 else (s_hi, 2 * s_lo + 1)
            elif attr == "Color":  # l3 = l1 + l2 or l1 - l2; needs two colors at least
                if c_hi - c_lo < 1:
                    c_hi = c_lo - 1
                elif v > 0:
                    c_hi = c_hi - c_lo
                else:
                    c_lo = 2 * c_lo
        elif name == "Distribute_Three":
            # Three distinct values are needed; for Position, three distinct slot sets of
            # one size, which holds when at most n_slots - 1 entities are placed.
            if attr == "Number" and n_hi - n_lo + 1 < 3:
                n_hi = n_lo - 1
            elif attr == "Position":
                n_hi = n_lo - 1 if n_hi + 1 < 3 else n_hi - 1
            elif attr == "Type" and t_hi - t_lo + 1 < 3:
                t_hi = t_lo - 1
            elif attr == "Size" and s_hi - s_lo + 1 < 3:
                s_hi = s_lo - 1
            elif attr == "Color" and c_hi - c_lo + 1 < 3:
                c_hi = c_lo - 1
    return Ranges((n_lo, n_hi), (t_lo, t_hi), (s_lo, s_hi), (c_lo, c_hi))


def sample_admissible_rules(spec: LayoutSpec, component: int,
                            rng: np.random.Generator) -> tuple[list[Rule], Ranges]:
    """Draw rule groups until one is admissible for ``spec``; return it with its ranges.

    Rejecting per component is the same distribution as the original's joint rejection,
    because the components' rules are drawn independently.
    """
    for _ in range(10_000):
        group = sample_rule_group(component, rng)
        ranges = narrow_ranges(spec, group)
        if not ranges.is_empty():
            return group, ranges
    raise RuntimeError(f"no admissible rule set found for layout {spec.name}")


def latin_rows(base: list, rng: np.random.Generator) -> list[list]:
    """Distribute_Three's rows: ``base`` for row 1, its two rotations for rows 2 and 3
    in random order, so each value appears once per row and once per column."""
    rot1 = [base[1], base[2], base[0]]
    rot2 = [base[2], base[0], base[1]]
    return [list(base), rot1, rot2] if rng.random() >= 0.5 else [list(base), rot2, rot1]
