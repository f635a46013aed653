"""Rule groups of an I-RAVEN puzzle, read from its ``meta_matrix``: spatial layout vs abstract attributes.

The ``meta_matrix`` (official field, written by the original generator and by :mod:`.generate` through
:meth:`~.rules.Rule.meta_row`) has one row per rule: component 0's Number/Position, Type, Size and Color
rules, then component 1's; each used row sets one rule column (Constant, Progression, Arithmetic,
Distribute_Three) and one attribute column, except the layout rule "Constant on Number/Position", which
sets both Number and Position. :func:`meta_rules` decodes it and :func:`rule_groups` groups it.

A rule is *active* when it is not Constant (Constant holds one value along a row, or constrains nothing
on entities re-drawn in every column: nothing to infer). A puzzle counts for ``spatial`` when an active
rule governs Number or Position, for ``abstract`` when one governs Type, Size or Color, and for
``abstract_only`` when it is abstract and not spatial. The first two overlap; ``spatial`` and
``abstract_only`` do not. The I-RAVEN task (:mod:`evalsuite.tasks.iraven`) writes each puzzle's groups
into its prediction rows and its accuracy per group into metrics.json; the report pairs runs by group.
Numpy and this package only (the report imports it without loading torch).
"""

from __future__ import annotations

from .attributes import META_MATRIX_COLUMNS, RULE_NAMES
from .loader import IRavenFormatError

RULE_GROUPS = {"spatial": ("Number", "Position"), "abstract": ("Type", "Size", "Color")}
"""The attributes whose active rules put a puzzle in each overlapping group."""
ACTIVE_RULES = tuple(r for r in RULE_NAMES if r != "Constant")
GROUPS = (*RULE_GROUPS, "abstract_only")
GROUPING = "active rules: spatial=Number,Position; abstract=Type,Size,Color; abstract_only=abstract-spatial"
"""The grouping in one line, recorded in the task's settings: evaluations made before it are redone."""
_N_RULES = META_MATRIX_COLUMNS.index("Number")  # columns 0..3: the rule, 4..8: the attribute(s)


def meta_rules(meta_matrix, source: str) -> list[list]:
    """[component, rule, attribute] of every used row of a meta_matrix (rows 0-3: component 0, 4-7: 1);
    the layout rule "Constant Number/Position" sets both attribute columns and reads "Number/Position".

    Raises:
        IRavenFormatError: a row that is not one rule column and one attribute column (or Constant with
            Number and Position), naming `source`, the field and the row.
    """
    out = []
    for i, row in enumerate(meta_matrix.tolist()):
        if not any(row):
            continue
        rules = [META_MATRIX_COLUMNS[j] for j, v in enumerate(row[:_N_RULES]) if v]
        attrs = [META_MATRIX_COLUMNS[_N_RULES + j] for j, v in enumerate(row[_N_RULES:]) if v]
        ok = set(row) <= {0, 1} and len(rules) == 1 and (
            len(attrs) == 1 or (rules == ["Constant"] and attrs == ["Number", "Position"]))
        if not ok:
            raise IRavenFormatError(
                f"{source}: field 'meta_matrix' row {i} is {row}: expected 0/1 values with one rule column "
                f"({', '.join(META_MATRIX_COLUMNS[:_N_RULES])}) and one attribute column "
                f"({', '.join(META_MATRIX_COLUMNS[_N_RULES:])}), or Constant with both Number and Position")
        out.append([i // 4, rules[0], "/".join(attrs)])
    return out


def rule_groups(rules: list[list]) -> dict[str, list[str]]:
    """{group: its active rule types, sorted} of one puzzle's `meta_rules`; a group without one is absent."""
    out: dict[str, set[str]] = {}
    for _, rule, attr in rules:
        if rule == "Constant":
            continue
        for group, attrs in RULE_GROUPS.items():
            if set(attr.split("/")) & set(attrs):
                out.setdefault(group, set()).add(rule)
    return {g: sorted(out[g]) for g in RULE_GROUPS if g in out}


def in_group(row: dict, group: str) -> bool:
    """Whether a prediction row's puzzle counts for `group` (one of `GROUPS`); False without rule metadata."""
    groups = row.get("rule_groups")
    if not isinstance(groups, dict):
        return False
    if group == "abstract_only":
        return "abstract" in groups and "spatial" not in groups
    return group in groups
