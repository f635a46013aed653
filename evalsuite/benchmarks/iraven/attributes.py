"""Attribute value tables and the symbolic panel model of I-RAVEN.

Every attribute is stored as a *level*: an index into one of the value tables below,
exactly as the original generator and the official ``.xml``/answers.json files do. The
tables are the published ones (answers.json ``value_tables``), so levels read from real
I-RAVEN metadata and levels produced by :mod:`evalsuite.benchmarks.iraven.generate` mean the same.

A panel is a :class:`Panel` (a structure name plus one :class:`ComponentState` per
component); a component holds its layout name, its uniformity flag and its entities in
the order the generator lists them. An entity's position is the index of its slot in the
layout (see :mod:`evalsuite.benchmarks.iraven.layouts` for the slot boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Value tables; an attribute's level indexes into its table.
NUMBER_VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 9)
TYPE_VALUES = ("none", "triangle", "square", "pentagon", "hexagon", "circle")
SIZE_VALUES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Grey value of the fill: level 0 is white (outline only), level 9 is black.
COLOR_VALUES = (255, 224, 196, 168, 140, 112, 84, 56, 28, 0)
# Self-rotation in degrees (counter-clockwise as displayed); random noise, never ruled.
ANGLE_VALUES = (-135, -90, -45, 0, 45, 90, 135, 180)
# A layout is uniform (all its entities identical) with probability 1/4: the generator
# draws a level from this table.
UNIFORMITY_VALUES = (False, False, False, True)

ENTITY_ATTRS = ("Type", "Size", "Color")
RULE_NAMES = ("Constant", "Progression", "Arithmetic", "Distribute_Three")

META_MATRIX_COLUMNS = (
    "Constant", "Progression", "Arithmetic", "Distribute_Three",
    "Number", "Position", "Type", "Size", "Color",
)
META_STRUCTURE_COLUMNS = (
    "Singleton", "Left_Right", "Up_Down", "Out_In", "Left", "Right", "Up", "Down", "Out",
    "In", "Grid", "Center_Single", "Distribute_Four", "Distribute_Nine",
    "Left_Center_Single", "Right_Center_Single", "Up_Center_Single", "Down_Center_Single",
    "Out_Center_Single", "In_Center_Single", "In_Distribute_Four",
)


@dataclass
class Entity:
    """One shape: its slot in the layout and its attribute levels."""

    slot: int
    type: int
    size: int
    color: int
    angle: int

    def level(self, attr: str) -> int:
        """Level of ``"Type"``, ``"Size"``, ``"Color"`` or ``"Angle"``."""
        return getattr(self, attr.lower())

    def with_level(self, attr: str, level: int) -> "Entity":
        return replace(self, **{attr.lower(): int(level)})

    def describe(self) -> str:
        return (f"{TYPE_VALUES[self.type]}/{SIZE_VALUES[self.size]}/"
                f"{COLOR_VALUES[self.color]}@{self.slot}")


@dataclass
class ComponentState:
    """One component of one panel: a layout filled with entities.

    ``name`` is the component node (``Grid``, ``Left``, ``Out`` ...), ``layout`` the layout
    node (``Distribute_Four`` ...). Number and Position are not stored separately: they are
    the entity count and the entities' slots, which keeps them consistent by construction.
    """

    name: str
    layout: str
    uniform: bool
    entities: list[Entity] = field(default_factory=list)

    @property
    def number(self) -> int:
        return len(self.entities)

    @property
    def number_level(self) -> int:
        return len(self.entities) - 1

    @property
    def positions(self) -> list[int]:
        return [e.slot for e in self.entities]

    @property
    def position_set(self) -> frozenset[int]:
        return frozenset(e.slot for e in self.entities)

    def levels(self, attr: str) -> list[int]:
        return [e.level(attr) for e in self.entities]

    def copy(self) -> "ComponentState":
        return ComponentState(self.name, self.layout, self.uniform,
                              [replace(e) for e in self.entities])

    def set_all(self, attr: str, level: int) -> None:
        """Give every entity the same level of ``attr`` (what the rules on Type/Size/Color do)."""
        self.entities = [e.with_level(attr, level) for e in self.entities]

    def describe(self) -> str:
        ents = " ".join(e.describe() for e in self.entities)
        return f"{self.layout}: n={self.number} [{ents}]"


@dataclass
class Panel:
    """A whole panel: the structure (``Singleton``, ``Left_Right`` ...) and its components."""

    structure: str
    components: list[ComponentState]

    def copy(self) -> "Panel":
        return Panel(self.structure, [c.copy() for c in self.components])

    def describe(self) -> str:
        return " | ".join(c.describe() for c in self.components)


def attribute_signature(comp: ComponentState, attr: str):
    """Hashable value of one attribute of one component, for comparing candidates.

    Number is the count, Position the set of slots, Type/Size/Color the tuple of entity
    levels in entity order (a uniform change gives a constant tuple).
    """
    if attr == "Number":
        return comp.number
    if attr == "Position":
        return comp.position_set
    return tuple(comp.levels(attr))
