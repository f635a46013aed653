"""The in-memory I-RAVEN puzzle (:class:`Item`) and its official array encoding.

An :class:`Item` is what the generator produces and what :mod:`.reference` builds from
an answers.json entry: the rules with their parameters, the eight context panels and the
eight candidates as symbolic :class:`~.attributes.Panel` objects, the target, and which
attributes were changed in every candidate. ``to_arrays`` gives the seven fields of an
official ``RAVEN_<k>_<split>.npz`` file with the official dtypes and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attributes import Panel
from .layouts import get_config
from .rules import Rule

IMAGE_SHAPE = (16, 160, 160)
SPLITS = ("train", "val", "test")


def split_of(k: int, val: int = 2, test: int = 2) -> str:
    """Split of puzzle ``k``: of every ten, the first ``10-val-test`` train, then val, then test."""
    slot = k % 10
    if slot < 10 - val - test:
        return "train"
    return "val" if slot < 10 - test else "test"


def npz_name(k: int, split: str | None = None) -> str:
    return f"RAVEN_{k}_{split or split_of(k)}.npz"


@dataclass
class Item:
    """One puzzle with its full symbolic description.

    ``context`` holds panels 1..8 row-major (the 9th cell is the answer's place),
    ``candidates`` the eight choices in image order, ``candidates[target]`` the answer.
    ``rules[c]`` is component ``c``'s rule group: [Number/Position, Type, Size, Color].
    ``modified[i]`` lists the ``(component, attribute)`` changes that turned the answer
    into candidate ``i`` (empty for the answer). ``image`` is the (16, 160, 160) uint8
    rendering, or None when generated with ``render=False``.
    """

    config: str
    rules: list[list[Rule]]
    context: list[Panel]
    candidates: list[Panel]
    target: int
    modified: list[list[tuple[int, str]]] = field(default_factory=list)
    selected: list[tuple[int, str]] = field(default_factory=list)
    image: np.ndarray | None = None
    predict: int | None = None
    k: int | None = None
    split: str | None = None

    @property
    def answer(self) -> Panel:
        return self.candidates[self.target]

    @property
    def panels(self) -> list[Panel]:
        """All 16 panels in image order (context then candidates)."""
        return self.context + self.candidates

    def rows(self, candidate: int | None = None) -> list[list[Panel]]:
        """The 3x3 matrix completed with ``candidate`` (default: the answer)."""
        last = self.candidates[self.target if candidate is None else candidate]
        c = self.context
        return [c[0:3], c[3:6], [c[6], c[7], last]]

    # ------------------------------------------------------------- official encoding
    def meta_matrix(self) -> np.ndarray:
        out = np.zeros((8, 9), np.uint8)
        flat = [rule for group in self.rules for rule in group]
        for i, rule in enumerate(flat):
            out[i] = rule.meta_row()
        return out

    def meta_target(self) -> np.ndarray:
        return np.bitwise_or.reduce(self.meta_matrix(), axis=0).astype(np.uint8)

    def structure(self) -> np.ndarray:
        return get_config(self.config).structure_array()

    def meta_structure(self) -> np.ndarray:
        return get_config(self.config).meta_structure()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The seven fields of an official ``.npz`` (requires a rendered ``image``)."""
        if self.image is None:
            raise ValueError("item has no image; generate it with render=True")
        image = np.asarray(self.image)
        if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 {IMAGE_SHAPE}, got {image.dtype} {image.shape}")
        predict = self.target if self.predict is None else self.predict
        return {
            "target": np.array(self.target, dtype=np.int64),
            "predict": np.array(predict, dtype=np.int64),
            "image": image,
            "meta_matrix": self.meta_matrix(),
            "meta_structure": self.meta_structure(),
            "meta_target": self.meta_target(),
            "structure": self.structure(),
        }

    def describe(self) -> str:
        lines = [f"{self.config}: target {self.target}"]
        for group in self.rules:
            lines.append("  rules: " + ", ".join(r.describe() for r in group))
        for i, (panel, mods) in enumerate(zip(self.candidates, self.modified or [[]] * 8)):
            tag = "*" if i == self.target else " "
            lines.append(f" {tag}{i}: {panel.describe()}  changed={mods}")
        return "\n".join(lines)
