"""I-RAVEN: a faithful generator, a symbolic checker and a loader for the official files.

I-RAVEN (Hu et al., "Stratified Rule-Aware Network for Abstract Visual Reasoning",
AAAI 2021) is RAVEN with an unbiased answer set: the eight candidates come from a
balanced tree of attribute changes, so no candidate stands out without the context.

Typical use::

    import numpy as np
    from evalsuite.benchmarks.iraven import CONFIG_NAMES, load_split, generate_item, check_item

    for rec in load_split("data/I-RAVEN", "test", limit=100):   # official layout
        panels, target = rec.image, rec.target                  # (16,160,160) uint8, 0..7

    item = generate_item("distribute_four", np.random.default_rng(0))
    check_item(item).ok                                          # True

Command line: ``python -m evalsuite.benchmarks.iraven generate --out DIR --per-config N --seed S``.
"""

from .attributes import Entity, ComponentState, Panel
from .checker import CheckResult, check_item
from .generate import generate_dataset, generate_item, item_rng, save_npz
from .item import Item, split_of
from .layouts import CONFIG_NAMES, CONFIGS, UnknownConfigError, get_config
from .loader import IRavenFormatError, RavenRecord, load_split, read_npz, validate_arrays
from .reference import item_from_reference, load_reference
from .render import render_panel, render_panels
from .rules import Rule

__all__ = [
    "CONFIG_NAMES", "CONFIGS", "CheckResult", "ComponentState", "Entity", "IRavenFormatError",
    "Item", "Panel", "RavenRecord", "Rule", "UnknownConfigError", "check_item",
    "generate_dataset", "generate_item", "get_config", "item_from_reference", "item_rng",
    "load_reference", "load_split", "read_npz", "render_panel", "render_panels", "save_npz",
    "split_of", "validate_arrays",
]
