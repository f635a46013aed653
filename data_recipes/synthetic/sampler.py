"""Random scenes: seeding, event timing, and the split each scene belongs to.

Determinism: every builder draws from a `random.Random` seeded by `rng_for(seed, split, index, kind)`,
a BLAKE2 hash of its arguments (Python's `hash()` is salted per process and would not do).

Split hygiene holds by construction: `split_of(scene.signature())` maps each scene signature to
exactly one of train/val/test (a hash, independent of seed, index and builder), and
`scene_for_split` rejects scenes until one belongs to the requested split. A test item can therefore
never show a scene that some training sample shows, whatever seeds or sample counts are used.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence

from .scenes import (
    COLOURS, DIRECTIONS, GRADUAL_KINDS, GRID, JITTER, SHAPES, Event, Obj, Scene, cell_centre,
)

SPLITS = ("train", "val", "test")
# Fractions of the signature space owned by each split.
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}

# Relative frequency of event kinds; moves come in four directions and carry most of the
# "between frames" signal (a single frame never shows motion), so they are drawn most often.
KIND_WEIGHTS = {"move": 4, "recolour": 2, "appear": 1, "disappear": 1, "grow": 1, "shrink": 1}


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of `parts` that is the same in every process and on every machine."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def rng_for(seed: int, split: str, index: int, kind: str) -> random.Random:
    """The random stream of one sample: a pure function of the builder's arguments."""
    return random.Random(stable_hash("rng", kind, split, int(seed), int(index)))


def split_of(signature: tuple) -> str:
    """The split that owns a scene signature (a pure function of the signature)."""
    u = stable_hash("split", signature) / 2**64
    acc = 0.0
    for split in SPLITS:
        acc += SPLIT_FRACTIONS[split]
        if u < acc:
            return split
    return SPLITS[-1]


def signature_id(signature: tuple) -> str:
    """A short printable id of a signature, stored in sample metadata for audits."""
    return f"{stable_hash('sig', signature):016x}"


def sample_indices(n_frames: int, n_samples: int) -> list[int]:
    """The frames an evaluator samples from an `n_frames` clip: `int(i * n / (F + 1))`, i = 1..F."""
    return [int(i * n_frames / (n_samples + 1)) for i in range(1, n_samples + 1)]


def _timing(rng: random.Random, gradual: bool, lo: int, hi: int) -> tuple[int, int]:
    """Frames (start, end) of one event inside the window [lo, hi].

    Gradual events last at least half the window, so motion is spread over several frames rather
    than being a jump; discrete events happen between two consecutive frames of the window.
    """
    if gradual:
        span = max(1, math.ceil((hi - lo) / 2))
        a = rng.randint(lo, hi - span)
        return a, rng.randint(a + span, hi)
    k = rng.randint(lo + 1, hi)
    return k - 1, k


def _move_path(col: int, row: int, direction: str, cells: int) -> list[tuple[int, int]] | None:
    """Cells crossed by a move (excluding the start), or None if it would leave the grid."""
    dx, dy = DIRECTIONS[direction]
    path = [(col + dx * k, row + dy * k) for k in range(1, cells + 1)]
    if all(0 <= c < GRID and 0 <= r < GRID for c, r in path):
        return path
    return None


def random_scene(rng: random.Random, n_frames: int, n_objects: int,
                 windows: Sequence[tuple[int, int]]) -> Scene | None:
    """A scene of `n_objects` objects whose first `len(windows)` objects each get one event.

    `windows[i]` is the frame range [lo, hi] in which the i-th event happens; events of successive
    windows are therefore ordered in time. Remaining objects stay still (distractors). Objects have
    distinct shapes and distinct colours (also after recolouring) so that "the circle" or "the red
    shape" always names exactly one object; they sit in distinct grid cells and moves only cross
    cells no other object ever uses, so objects never overlap. Returns None when the drawn layout
    leaves no room for the drawn events (the caller simply draws again).
    """
    if not 1 <= n_objects <= GRID * GRID or len(windows) > n_objects:
        raise ValueError(f"cannot place {len(windows)} events on {n_objects} objects")
    shapes = rng.sample(SHAPES, n_objects)
    colours = rng.sample(sorted(COLOURS), n_objects)
    sizes = [rng.choice(("small", "large")) for _ in range(n_objects)]
    visible = [True] * n_objects
    cells = [divmod(c, GRID)[::-1] for c in rng.sample(range(GRID * GRID), n_objects)]  # (col, row)
    occupied = set(cells)  # every cell any object touches at any time
    used_colours = set(colours)
    plans: list[dict] = []
    for i, (lo, hi) in enumerate(windows):
        kinds, weights = zip(*KIND_WEIGHTS.items())
        kind = rng.choices(kinds, weights)[0]
        plan = {"kind": kind, "obj": i}
        if kind == "move":
            options = []
            for direction in sorted(DIRECTIONS):
                for n_cells in (1, 2):
                    path = _move_path(*cells[i], direction, n_cells)
                    if path and not occupied.intersection(path):
                        options.append((direction, n_cells, path))
            if not options:
                return None
            direction, n_cells, path = rng.choice(options)
            occupied.update(path)
            plan.update(direction=direction, cells=n_cells)
        elif kind == "recolour":
            free = sorted(set(COLOURS) - used_colours)
            plan["colour"] = rng.choice(free)
            used_colours.add(plan["colour"])
        elif kind == "appear":
            visible[i] = False
        elif kind == "grow":
            sizes[i] = "small"
        elif kind == "shrink":
            sizes[i] = "large"
        plan["start"], plan["end"] = _timing(rng, kind in GRADUAL_KINDS, lo, hi)
        plans.append(plan)

    objects = []
    for i in range(n_objects):
        cx, cy = cell_centre(*cells[i])
        x = round(cx + rng.uniform(-JITTER, JITTER), 3)
        y = round(cy + rng.uniform(-JITTER, JITTER), 3)
        objects.append(Obj(shapes[i], colours[i], sizes[i], x, y, visible[i]))
    # List objects in reading order of their starting cell so captions read top-left to bottom-right,
    # and so the event targets are not always the first objects named.
    order = sorted(range(n_objects), key=lambda i: (cells[i][1], cells[i][0]))
    new_index = {old: new for new, old in enumerate(order)}
    events = tuple(Event(**{**p, "obj": new_index[p["obj"]]}) for p in plans)
    return Scene(tuple(objects[i] for i in order), events, n_frames)


def scene_for_split(rng: random.Random, split: str, draw: Callable[[random.Random], Scene | None],
                    accept: Callable[[Scene], bool] | None = None, max_tries: int = 5000) -> Scene:
    """Draw scenes with `draw(rng)` until one is acceptable and belongs to `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    for _ in range(max_tries):
        scene = draw(rng)
        if scene is None or (accept is not None and not accept(scene)):
            continue
        if split_of(scene.signature()) == split:
            return scene
    raise RuntimeError(f"no acceptable {split} scene in {max_tries} draws (clip too short for the events?)")


def video_windows(n_frames: int, n_events: int) -> list[tuple[int, int]]:
    """Event windows of a training clip: the whole clip, or its two halves for two events."""
    last = n_frames - 1
    if n_events == 1:
        return [(0, last)]
    mid = last // 2
    return [(0, mid), (mid, last)]


def eval_windows(n_frames: int, n_events: int) -> list[tuple[int, int]]:
    """Event windows of an evaluation clip, aligned with the coarsest (F = 5) sampling.

    With samples s1..s5, one event happens within [s1, s5]; two events within [s1, s3] and
    [s3, s5], so the middle sample separates them. `visible_when_sampled` checks the result.
    """
    s = sample_indices(n_frames, 5)
    if n_events == 1:
        return [(s[0], s[4])]
    return [(s[0], s[2]), (s[2], s[4])]


def visible_when_sampled(scene: Scene, samplings: Sequence[int] = (5, 10)) -> bool:
    """Whether every event, and the order of events, survives sampling F frames for each F.

    For each sampling: some sampled frame shows each event's before state and some its after state;
    consecutive events are separated by a sampled frame (so "what happens first?" is decidable); and
    under the coarsest sampling each gradual event is caught mid-way at least once, so a move is seen
    as motion over several frames, not a jump.
    """
    events = scene.events_in_order()
    coarsest = min(samplings)
    for f in samplings:
        idx = sample_indices(scene.n_frames, f)
        for e in events:
            if not any(t <= e.start for t in idx) or not any(t >= e.end for t in idx):
                return False
            if f == coarsest and e.gradual and not any(e.start < t < e.end for t in idx):
                return False
        for e1, e2 in zip(events, events[1:]):
            if not any(e1.end <= t <= e2.start for t in idx):
                return False
    return True
