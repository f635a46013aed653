"""Generate I-RAVEN puzzles and write them in the official file layout.

:func:`generate_item` makes one puzzle: sample admissible rules per component, build each
component's 3x3 matrix (:mod:`.rows`), take row 3 column 3 as the answer, grow the answer
set by attribute bisection (:mod:`.candidates`), shuffle it, and render the 16 panels.

:func:`generate_dataset` writes ``<out>/<config>/RAVEN_<k>_<split>.npz`` for k = 0..N-1
per configuration. Every puzzle has its own random stream derived from ``(seed,
configuration, k)``, so a puzzle does not depend on how many puzzles or which other
configurations are generated, and the same seed gives byte-identical arrays.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from data_recipes.files import atomic_path

from .attributes import Panel
from .candidates import build_candidates
from .checker import solver_choice
from .item import Item, npz_name, split_of
from .layouts import CONFIG_NAMES, get_config
from .render import render_panels
from .rows import build_component_rows
from .rules import sample_admissible_rules


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def generate_item(config: str, rng: np.random.Generator | int | None = None, *,
                  render: bool = True) -> Item:
    """Generate one puzzle of configuration ``config``.

    ``rng`` is a numpy Generator (or a seed for one). With ``render=False`` the symbolic
    puzzle is made without drawing the images (much faster; same puzzle, as drawing
    consumes no randomness).
    """
    spec = get_config(config)
    rng = _as_rng(rng)
    rules, grids = [], []
    for k, layout in enumerate(spec.layouts):
        group, ranges = sample_admissible_rules(layout, k, rng)
        rules.append(group)
        grids.append(build_component_rows(layout, ranges, group, rng))
    # Assemble panels: panel (r, c) gathers every component's state at (r, c).
    matrix = [[Panel(spec.structure, [g[r][c] for g in grids]) for c in range(3)]
              for r in range(3)]
    context = matrix[0] + matrix[1] + matrix[2][:2]
    answer = matrix[2][2]
    candidates, modified, target, selected = build_candidates(spec, rules, answer, rng)
    item = Item(config=config, rules=rules, context=context, candidates=candidates,
                target=target, modified=modified,
                selected=[(m.component, m.attr) for m in selected])
    item.predict = solver_choice(item, rng)
    if render:
        item.image = render_panels(item.panels)
    return item


def item_rng(seed: int, config: str, k: int) -> np.random.Generator:
    """The random stream of puzzle ``k`` of ``config`` in a dataset made with ``seed``."""
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(CONFIG_NAMES.index(config), k))
    return np.random.default_rng(ss)


def save_npz(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write ``arrays`` to ``path`` through ``data_recipes.files.atomic_path``, so readers never see a
    half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


def resolve_configs(configs: Iterable[str] | None) -> list[str]:
    """Validate configuration names (unknown ones raise with a "did you mean")."""
    if configs is None:
        return list(CONFIG_NAMES)
    names = list(configs)
    for name in names:
        get_config(name)
    return names


def generate_dataset(out_dir: str | Path, per_config: int, seed: int = 1234,
                     configs: Iterable[str] | None = None, *, compress: bool = True,
                     val: int = 2, test: int = 2,
                     on_item: Callable[[str, int, Item], None] | None = None) -> dict:
    """Write ``per_config`` puzzles of each configuration under ``out_dir``.

    Files are ``<out_dir>/<config>/RAVEN_<k>_<split>.npz`` with the split from
    :func:`~.item.split_of`. ``on_item`` is called after each puzzle (progress bars).
    Returns a summary: files per configuration and split, candidate-check failures
    (always 0 unless something is broken) and the elapsed time.
    """
    names = resolve_configs(configs)
    out = Path(out_dir)
    started = time.perf_counter()
    counts: dict[str, Counter] = {}
    solver_misses = 0
    for config in names:
        counts[config] = Counter()
        for k in range(per_config):
            item = generate_item(config, item_rng(seed, config, k))
            item.k, item.split = k, split_of(k, val, test)
            save_npz(out / config / npz_name(k, item.split), item.to_arrays(), compress)
            counts[config][item.split] += 1
            solver_misses += int(item.predict != item.target)
            if on_item is not None:
                on_item(config, k, item)
    return {
        "out_dir": str(out),
        "seed": seed,
        "per_config": per_config,
        "files": {c: dict(v) for c, v in counts.items()},
        "total": sum(sum(v.values()) for v in counts.values()),
        "solver_misses": solver_misses,
        "seconds": time.perf_counter() - started,
    }
