"""The seven I-RAVEN configurations: their tree, slot layouts and value ranges.

Each configuration is a fixed structure (``Singleton``, ``Left_Right``, ``Up_Down`` or
``Out_In``) with one or two components; each component has one layout, i.e. a list of slot
boxes plus the admissible level ranges of Number, Type, Size, Color and Angle before any
rule narrows them. Slot boxes are ``(y_center, x_center, height, width)`` as fractions of
the panel (the first number is vertical), identical to answers.json ``layout_slots``.

The ranges are those of the original generator: every layout excludes the ``none`` type;
the outer shape of the in/out configurations is always large (size level >= 3) and white
(color level 0); the four inner shapes of ``in_distribute_four_out_center_single`` are at
least size level 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_recipes.hints import did_you_mean

from .attributes import ANGLE_VALUES, COLOR_VALUES, META_STRUCTURE_COLUMNS, SIZE_VALUES, TYPE_VALUES

Box = tuple[float, float, float, float]
Range = tuple[int, int]  # inclusive (min_level, max_level)

_FULL_TYPE = (1, len(TYPE_VALUES) - 1)  # "none" (level 0) is never drawn in I-RAVEN
_FULL_SIZE = (0, len(SIZE_VALUES) - 1)
_FULL_COLOR = (0, len(COLOR_VALUES) - 1)
_FULL_ANGLE = (0, len(ANGLE_VALUES) - 1)


@dataclass(frozen=True)
class LayoutSpec:
    """One component's layout: slots and unconstrained level ranges."""

    name: str          # layout node, e.g. "In_Distribute_Four"
    component: str     # component node, e.g. "In"
    slots: tuple[Box, ...]
    number: Range = (0, 0)
    type: Range = _FULL_TYPE
    size: Range = _FULL_SIZE
    color: Range = _FULL_COLOR
    angle: Range = _FULL_ANGLE

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    def range_of(self, attr: str) -> Range:
        return getattr(self, attr.lower())


@dataclass(frozen=True)
class ConfigSpec:
    """A configuration: structure node plus its components' layouts, in drawing order."""

    name: str
    structure: str
    layouts: tuple[LayoutSpec, ...]

    def structure_tokens(self) -> list[str]:
        """Pre-order serialisation of the tree as stored in the ``structure`` field."""
        tokens = ["Scene", self.structure]
        for lay in self.layouts:
            tokens += [lay.component, lay.name, "/", "/"]
        return tokens + ["/", "/"]

    def structure_array(self) -> np.ndarray:
        # The official files hold byte strings (the generator ran on Python 2), so the
        # dtype is |S<longest token>, not a unicode array.
        return np.array([t.encode("ascii") for t in self.structure_tokens()])

    def meta_structure(self) -> np.ndarray:
        out = np.zeros(len(META_STRUCTURE_COLUMNS), np.uint8)
        for tok in self.structure_tokens():
            if tok in META_STRUCTURE_COLUMNS:
                out[META_STRUCTURE_COLUMNS.index(tok)] = 1
        return out


def _center(name: str, component: str, box: Box, **ranges) -> LayoutSpec:
    return LayoutSpec(name, component, (box,), number=(0, 0), **ranges)


_GRID4 = ((0.25, 0.25, 0.5, 0.5), (0.25, 0.75, 0.5, 0.5),
          (0.75, 0.25, 0.5, 0.5), (0.75, 0.75, 0.5, 0.5))
_GRID9 = tuple((y, x, 0.33, 0.33) for y in (0.16, 0.5, 0.83) for x in (0.16, 0.5, 0.83))
_IN4 = ((0.42, 0.42, 0.15, 0.15), (0.42, 0.58, 0.15, 0.15),
        (0.58, 0.42, 0.15, 0.15), (0.58, 0.58, 0.15, 0.15))
# The outer shape of the in/out configurations: big and never filled.
_OUT = dict(size=(3, 5), color=(0, 0))

LAYOUTS: dict[str, LayoutSpec] = {
    spec.name: spec for spec in (
        _center("Center_Single", "Grid", (0.5, 0.5, 1, 1)),
        LayoutSpec("Distribute_Four", "Grid", _GRID4, number=(0, 3)),
        LayoutSpec("Distribute_Nine", "Grid", _GRID9, number=(0, 8)),
        _center("Left_Center_Single", "Left", (0.5, 0.25, 0.5, 0.5)),
        _center("Right_Center_Single", "Right", (0.5, 0.75, 0.5, 0.5)),
        _center("Up_Center_Single", "Up", (0.25, 0.5, 0.5, 0.5)),
        _center("Down_Center_Single", "Down", (0.75, 0.5, 0.5, 0.5)),
        _center("Out_Center_Single", "Out", (0.5, 0.5, 1, 1), **_OUT),
        _center("In_Center_Single", "In", (0.5, 0.5, 0.33, 0.33)),
        LayoutSpec("In_Distribute_Four", "In", _IN4, number=(0, 3), size=(2, 5)),
    )
}

# Listed in the order the original generator's (Python 3) dict lists them.
CONFIGS: dict[str, ConfigSpec] = {
    c.name: c for c in (
        ConfigSpec("center_single", "Singleton", (LAYOUTS["Center_Single"],)),
        ConfigSpec("distribute_four", "Singleton", (LAYOUTS["Distribute_Four"],)),
        ConfigSpec("distribute_nine", "Singleton", (LAYOUTS["Distribute_Nine"],)),
        ConfigSpec("left_center_single_right_center_single", "Left_Right",
                   (LAYOUTS["Left_Center_Single"], LAYOUTS["Right_Center_Single"])),
        ConfigSpec("up_center_single_down_center_single", "Up_Down",
                   (LAYOUTS["Up_Center_Single"], LAYOUTS["Down_Center_Single"])),
        ConfigSpec("in_center_single_out_center_single", "Out_In",
                   (LAYOUTS["Out_Center_Single"], LAYOUTS["In_Center_Single"])),
        ConfigSpec("in_distribute_four_out_center_single", "Out_In",
                   (LAYOUTS["Out_Center_Single"], LAYOUTS["In_Distribute_Four"])),
    )
}
CONFIG_NAMES: tuple[str, ...] = tuple(CONFIGS)


class UnknownConfigError(ValueError):
    """Raised for a configuration name that is not one of :data:`CONFIG_NAMES`."""


def get_config(name: str) -> ConfigSpec:
    """Look a configuration up by name; unknown names get a "did you mean" hint."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise UnknownConfigError(unknown_config_message(name)) from None


def unknown_config_message(name: str) -> str:
    hint = did_you_mean(name, CONFIG_NAMES, cutoff=0.5, substring=True, sentence=True)
    return (f"unknown I-RAVEN configuration {name!r}.{hint} "
            f"Known configurations: {', '.join(CONFIG_NAMES)}")


def slot_box(layout: str, slot: int) -> Box:
    return LAYOUTS[layout].slots[slot]
