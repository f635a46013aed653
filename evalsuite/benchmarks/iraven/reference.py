"""Read the reference puzzles' answers.json into :class:`~.item.Item` objects.

answers.json (written from the original generator's in-memory objects) describes every
panel with the same levels this package uses, so the conversion is direct: a component
``{component, layout, uniformity, entities: [{slot, type_level, ...}]}`` becomes a
:class:`~.attributes.ComponentState`, each rule ``{name, attr, value, component,
value_levels}`` a :class:`~.rules.Rule`. The images are not in the JSON; pass the
matching ``.npz`` directory to :func:`load_reference` to attach them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .attributes import ComponentState, Entity, Panel
from .item import Item
from .rules import Rule


def _panel(entry: dict) -> Panel:
    comps = []
    for comp in entry["components"]:
        ents = [Entity(slot=int(e["slot"]), type=int(e["type_level"]), size=int(e["size_level"]),
                       color=int(e["color_level"]), angle=int(e["angle_level"]))
                for e in comp["entities"]]
        positions = [int(p) for p in comp.get("positions", [e.slot for e in ents])]
        if positions != [e.slot for e in ents]:
            raise ValueError(f"positions {positions} disagree with entity slots in {comp['layout']}")
        comps.append(ComponentState(comp["component"], comp["layout"], bool(comp["uniformity"]), ents))
    return Panel(entry["structure"], comps)


def _rule(entry: dict) -> Rule:
    levels = entry.get("value_levels")
    if levels is not None:
        levels = [[(list(x) if isinstance(x, list) else int(x)) for x in row] for row in levels]
    value = entry.get("value")
    return Rule(entry["name"], entry["attr"], None if value is None else int(value),
                int(entry["component"]), levels)


def item_from_reference(entry: dict) -> Item:
    """Convert one ``puzzles[...]`` entry of answers.json to an :class:`Item`."""
    candidates = sorted(entry["candidates"], key=lambda c: c["index"])
    if [c["index"] for c in candidates] != list(range(8)) or len(entry["context"]) != 8:
        raise ValueError("a puzzle needs 8 context panels and candidates indexed 0..7")
    return Item(
        config=entry["config"],
        rules=[[_rule(r) for r in group] for group in entry["rules"]],
        context=[_panel(p) for p in entry["context"]],
        candidates=[_panel(c) for c in candidates],
        target=int(entry["target"]),
        modified=[[(int(k), str(a)) for k, a in c["modified_attributes"]] for c in candidates],
        predict=int(entry["predict"]) if "predict" in entry else None,
        k=entry.get("k"),
        split=entry.get("split"),
    )


def load_reference(answers_json: str | Path, with_images: bool = False) -> dict[str, Item]:
    """All puzzles of an answers.json, keyed by their ``<config>/RAVEN_<k>_<split>.npz`` path.

    With ``with_images`` the images are read from the ``.npz`` files next to the JSON.
    """
    path = Path(answers_json)
    data = json.loads(path.read_text())
    items = {}
    for key, entry in data["puzzles"].items():
        item = item_from_reference(entry)
        if with_images:
            with np.load(path.parent / key) as npz:
                item.image = np.asarray(npz["image"])
        items[key] = item
    return items
