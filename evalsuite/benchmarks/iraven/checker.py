"""Symbolic checker: which candidates complete the matrix according to its rules?

Each rule is read as a relation between the three panels (a, b, c) of a row, for one
component, using the rule's recorded parameter:

Number/Position rule
  * Constant: the three panels occupy the same set of slots.
  * Progression Number: counts step by ``value``; Position: every slot index moves by
    ``value`` modulo the number of slots.
  * Arithmetic Number: ``n_c = n_a + n_b`` (add) or ``n_a - n_b``; Position: the slot
    set of c is the union (add) or difference of those of a and b.
  * Distribute_Three: the row's counts (number levels) or slot sets equal the triple
    recorded for the row.

Type / Size / Color rule (every rule but Constant also needs all entities of a panel to
share the level)
  * Progression: levels step by ``value``.
  * Arithmetic: Size ``l_c = l_a + l_b + 1`` / ``l_a - l_b - 1``; Color ``l_a +/- l_b``.
  * Distribute_Three: the row's levels equal the recorded triple.
  * Constant: in a uniform layout one level throughout the row. In a non-uniform layout
    each entity keeps its level along the row (compared entity by entity) when the
    entities persist; when the Number/Position rule re-draws them (a rule on Number, or
    Arithmetic on Position) Constant does not constrain anything, as in the generator's
    own solver.

The context rows 1 and 2 must satisfy every rule; a candidate satisfies the puzzle if
row 3 completed with it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attributes import ComponentState, Panel
from .layouts import LAYOUTS
from .rules import Rule


@dataclass
class CheckResult:
    """Outcome of :func:`check_item`.

    ``satisfying`` lists the candidates that satisfy every rule; ``reasons[i]`` says why
    candidate ``i`` fails (empty when it satisfies); ``scores[i]`` counts the rules it
    satisfies; ``context_violations`` lists rules broken by the context rows.
    """

    target: int
    satisfying: list[int]
    reasons: list[list[str]]
    scores: list[int]
    context_violations: list[str] = field(default_factory=list)

    @property
    def context_ok(self) -> bool:
        return not self.context_violations

    @property
    def unique(self) -> bool:
        return len(self.satisfying) == 1

    @property
    def ok(self) -> bool:
        """Context consistent and the target is the one and only satisfying candidate."""
        return self.context_ok and self.satisfying == [self.target]

    def summary(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return (f"{state}: satisfying={self.satisfying} target={self.target} "
                f"context_violations={len(self.context_violations)}")


def _consistent(comp: ComponentState, attr: str) -> bool:
    return len(set(comp.levels(attr))) == 1


def _check_layout(rule: Rule, row: int, a: ComponentState, b: ComponentState,
                  c: ComponentState, n_slots: int) -> str | None:
    """None if the row satisfies the Number/Position rule, else the reason."""
    name, attr, v = rule.name, rule.attr, rule.value
    sa, sb, sc = a.position_set, b.position_set, c.position_set
    if name == "Constant":
        ok = sa == sb == sc
        return None if ok else f"slots {sorted(sa)}, {sorted(sb)}, {sorted(sc)} not constant"
    if name == "Progression" and attr == "Number":
        ok = b.number == a.number + v and c.number == b.number + v
        return None if ok else f"counts {a.number}, {b.number}, {c.number} do not step by {v:+d}"
    if name == "Progression":
        def shift(s):
            return frozenset((p + v) % n_slots for p in s)
        ok = shift(sa) == sb and shift(sb) == sc
        return None if ok else f"slots {sorted(sa)}, {sorted(sb)}, {sorted(sc)} do not shift by {v:+d}"
    if name == "Arithmetic" and attr == "Number":
        want = a.number + b.number if v > 0 else a.number - b.number
        return None if c.number == want else f"count {c.number} != {want}"
    if name == "Arithmetic":
        want = sa | sb if v > 0 else sa - sb
        return None if sc == want else f"slots {sorted(sc)} != {sorted(want)}"
    if name == "Distribute_Three":
        triple = rule.value_levels[row]
        if attr == "Number":
            got = [a.number_level, b.number_level, c.number_level]
            return None if got == [int(x) for x in triple] else f"number levels {got} != {list(triple)}"
        want = [frozenset(int(p) for p in s) for s in triple]
        got = [sa, sb, sc]
        return None if got == want else f"slot sets {[sorted(s) for s in got]} != {[sorted(s) for s in want]}"
    raise ValueError(f"unknown layout rule {rule.describe()}")


def _check_entity(rule: Rule, layout_rule: Rule, row: int, a: ComponentState,
                  b: ComponentState, c: ComponentState) -> str | None:
    """None if the row satisfies the Type/Size/Color rule, else the reason."""
    name, attr, v = rule.name, rule.attr, rule.value
    if name == "Constant":
        if a.uniform:
            if not all(_consistent(p, attr) for p in (a, b, c)):
                return f"{attr} not uniform within a panel"
            levels = [p.entities[0].level(attr) for p in (a, b, c)]
            return None if len(set(levels)) == 1 else f"{attr} levels {levels} not constant"
        if layout_rule.regenerates_entities or not a.number == b.number == c.number:
            return None  # entities re-drawn along the row: nothing to compare
        la, lb, lc = a.levels(attr), b.levels(attr), c.levels(attr)
        return None if la == lb == lc else f"{attr} per entity {la}, {lb}, {lc} not constant"
    for p, col in zip((a, b, c), (1, 2, 3)):
        if not _consistent(p, attr):
            return f"{attr} differs between entities in column {col}"
    la, lb, lc = (p.entities[0].level(attr) for p in (a, b, c))
    if name == "Progression":
        ok = lb == la + v and lc == lb + v
        return None if ok else f"{attr} levels {la}, {lb}, {lc} do not step by {v:+d}"
    if name == "Arithmetic":
        # Size level 0 is a visible size (0.4), so the generator counts it as one unit;
        # Color level 0 is white, i.e. "no color", and adds nothing.
        offset = 1 if attr == "Size" else 0
        want = la + lb + offset if v > 0 else la - lb - offset
        return None if lc == want else f"{attr} level {lc} != {want}"
    if name == "Distribute_Three":
        triple = [int(x) for x in rule.value_levels[row]]
        return None if [la, lb, lc] == triple else f"{attr} levels {[la, lb, lc]} != {triple}"
    raise ValueError(f"unknown entity rule {rule.describe()}")


def check_row(rules: list[list[Rule]], row: int, panels: list[Panel]) -> list[tuple[Rule, str | None]]:
    """Check every rule on one row of three panels; returns (rule, reason-or-None) pairs."""
    out = []
    for k, group in enumerate(rules):
        a, b, c = (p.components[k] for p in panels)
        n_slots = LAYOUTS[a.layout].n_slots
        layout_rule = group[0]
        out.append((layout_rule, _check_layout(layout_rule, row, a, b, c, n_slots)))
        for rule in group[1:]:
            out.append((rule, _check_entity(rule, layout_rule, row, a, b, c)))
    return out


def _label(rule: Rule, reason: str) -> str:
    return f"component {rule.component} {rule.describe()}: {reason}"


def check_item(item) -> CheckResult:
    """Check an :class:`~.item.Item` (generated, or converted from answers.json)."""
    ctx = item.context
    violations = []
    for row in (0, 1):
        for rule, reason in check_row(item.rules, row, ctx[3 * row:3 * row + 3]):
            if reason is not None:
                violations.append(f"row {row + 1}: " + _label(rule, reason))
    reasons, scores = [], []
    for cand in item.candidates:
        results = check_row(item.rules, 2, [ctx[6], ctx[7], cand])
        reasons.append([_label(rule, why) for rule, why in results if why is not None])
        scores.append(sum(why is None for _, why in results))
    satisfying = [i for i, r in enumerate(reasons) if not r]
    return CheckResult(int(item.target), satisfying, reasons, scores, violations)


def solver_choice(item, rng: np.random.Generator) -> int:
    """The generator's heuristic answer: a candidate satisfying the most rules (ties at
    random). Stored as ``predict`` in the official files; not ground truth."""
    scores = np.array(check_item(item).scores)
    best = np.flatnonzero(scores == scores.max())
    return int(rng.choice(best))
