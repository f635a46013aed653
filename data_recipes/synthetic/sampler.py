"""Random scenes: seeding, event timing, and the split each scene belongs to.

Determinism: every builder draws from a `random.Random` seeded by `rng_for(seed, split, index, kind)`,
a BLAKE2 hash of its arguments (Python's `hash()` is salted per process and would not do).

Split hygiene holds by construction: `split_of(scene.signature())` maps each scene signature to
exactly one of train/val/test (a hash, independent of seed, index and builder), and
`scene_for_split` rejects scenes until one belongs to the requested split. A test item can therefore
never show a scene that some training sample shows, whatever seeds or sample counts are used.

Events: `random_scene` draws each event's category uniformly (scenes.CATEGORIES), the same
distribution the questions' decoy options are drawn from, and redraws the layout rather than the
events when a move has no room, so rejected layouts never skew the categories. Two events either
follow each other (successive windows) or, with `simultaneous=True`, happen at once.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence

from .scenes import (
    CATEGORIES, COLOURS, DIRECTIONS, GRADUAL_KINDS, GRID, JITTER, SHAPES, Event, Obj, Scene, cell_centre, overlap,
)

SPLITS = ("train", "val", "test")
# Fractions of the signature space owned by each split.
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


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


LAYOUT_TRIES = 100  # placements tried before a random scene gives up (practically never reached)


def _event_plan(rng: random.Random, category: str, obj: int) -> dict:
    """What one event of `category` does, drawn uniformly within the category (direction, appear or
    disappear, grow or shrink; a recolour's new colour is drawn once the colours are known)."""
    if category == "horizontal":
        return {"kind": "move", "obj": obj, "direction": rng.choice(("left", "right"))}
    if category == "vertical":
        return {"kind": "move", "obj": obj, "direction": rng.choice(("up", "down"))}
    if category == "colour":
        return {"kind": "recolour", "obj": obj}
    if category == "presence":
        return {"kind": rng.choice(("appear", "disappear")), "obj": obj}
    if category == "size":
        return {"kind": rng.choice(("grow", "shrink")), "obj": obj}
    raise ValueError(f"event category must be one of {CATEGORIES}, got {category!r}")


def _place_moves(rng: random.Random, cells: list[tuple[int, int]], plans: list[dict]) -> list[int] | None:
    """The number of cells each move covers (0 for other events), drawn uniformly among the lengths
    that fit, or None when some move has no room in this layout. Moves only cross cells no other
    object ever uses, so objects never overlap."""
    occupied = set(cells)  # every cell any object touches at any time
    lengths = []
    for plan in plans:
        if plan["kind"] != "move":
            lengths.append(0)
            continue
        fits = []
        for n_cells in (1, 2):
            path = _move_path(*cells[plan["obj"]], plan["direction"], n_cells)
            if path and not occupied.intersection(path):
                fits.append((n_cells, path))
        if not fits:
            return None
        n_cells, path = rng.choice(fits)
        occupied.update(path)
        lengths.append(n_cells)
    return lengths


def random_scene(rng: random.Random, n_frames: int, n_objects: int, windows: Sequence[tuple[int, int]], *,
                 simultaneous: bool = False, categories: Sequence[str] | None = None) -> Scene | None:
    """A scene of `n_objects` objects whose first `len(windows)` objects each get one event.

    What: each event's category is drawn uniformly from CATEGORIES (or given by `categories`, one per
    window), then its direction / appear-or-disappear / grow-or-shrink / new colour uniformly within
    the category. The decoy options of `questions` come from the same uniform categories, so the real
    events and the decoys are drawn alike. Remaining objects stay still (distractors).

    When: `windows[i]` is the frame range [lo, hi] of the i-th event, so events of successive windows
    are ordered in time. With `simultaneous=True` (exactly two windows) both events happen in one of
    the two windows (drawn) and overlap in time: gradual events share one span, discrete events one
    frame inside it, so one event always happens while the other is under way (`scenes.overlap`).

    Where: objects have distinct shapes and distinct colours (also after recolouring) so that "the
    circle" or "the red shape" always names exactly one object; they sit in distinct grid cells and
    moves only cross cells no other object ever uses. The layout is redrawn (not the events) until
    every move has room, so the event categories stay uniform; None only if LAYOUT_TRIES layouts all
    fail (the caller draws again).
    """
    if not 1 <= n_objects <= GRID * GRID or len(windows) > n_objects:
        raise ValueError(f"cannot place {len(windows)} events on {n_objects} objects")
    if simultaneous and len(windows) != 2:
        raise ValueError(f"simultaneous=True needs exactly two windows, got {len(windows)}")
    if categories is None:
        categories = [rng.choice(CATEGORIES) for _ in windows]
    elif len(categories) != len(windows):
        raise ValueError(f"categories: need one per window ({len(windows)}), got {len(categories)}")
    plans = [_event_plan(rng, category, i) for i, category in enumerate(categories)]

    if simultaneous:
        lo, hi = rng.choice(list(windows))
        a, b = _timing(rng, True, lo, hi)
        k = rng.randint(a + 1, b)
        for plan in plans:
            plan["start"], plan["end"] = (a, b) if plan["kind"] in GRADUAL_KINDS else (k - 1, k)
    else:
        for plan, (lo, hi) in zip(plans, windows):
            plan["start"], plan["end"] = _timing(rng, plan["kind"] in GRADUAL_KINDS, lo, hi)

    shapes = rng.sample(SHAPES, n_objects)
    colours = rng.sample(sorted(COLOURS), n_objects)
    sizes = [rng.choice(("small", "large")) for _ in range(n_objects)]
    visible = [True] * n_objects
    free_colours = sorted(set(COLOURS) - set(colours))
    for plan in plans:
        i = plan["obj"]
        if plan["kind"] == "recolour":
            plan["colour"] = rng.choice(free_colours)
            free_colours.remove(plan["colour"])
        elif plan["kind"] == "appear":
            visible[i] = False
        elif plan["kind"] == "grow":
            sizes[i] = "small"
        elif plan["kind"] == "shrink":
            sizes[i] = "large"
    for _ in range(LAYOUT_TRIES):
        cells = [divmod(c, GRID)[::-1] for c in rng.sample(range(GRID * GRID), n_objects)]  # (col, row)
        lengths = _place_moves(rng, cells, plans)
        if lengths is not None:
            break
    else:
        return None
    for plan, n_cells in zip(plans, lengths):
        if n_cells:
            plan["cells"] = n_cells

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
    """Event windows of a training clip: none, the whole clip, or its two halves for two events."""
    last = n_frames - 1
    if n_events not in (0, 1, 2):
        raise ValueError(f"a clip has 0, 1 or 2 events, not {n_events}")
    if n_events == 0:
        return []
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
    if n_events not in (0, 1, 2):
        raise ValueError(f"a clip has 0, 1 or 2 events, not {n_events}")
    if n_events == 0:
        return []
    if n_events == 1:
        return [(s[0], s[4])]
    return [(s[0], s[2]), (s[2], s[4])]


def visible_when_sampled(scene: Scene, samplings: Sequence[int] = (5, 10)) -> bool:
    """Whether every event, and the order of events, survives sampling F frames for each F.

    For each sampling: some sampled frame shows each event's before state and some its after state;
    under the coarsest sampling each gradual event is caught mid-way at least once, so a move is seen
    as motion over several frames, not a jump; and "what happens first?" is decidable: consecutive
    events either are ordered and separated by a sampled frame (the first done, the second not begun)
    or happen at once, one of them entirely while the other is under way (`scenes.overlap` and nested),
    so no sampled frame can show one done and the other not begun.
    """
    events = scene.events_in_order()
    coarsest = min(samplings)
    for e1, e2 in zip(events, events[1:]):
        if overlap(e1, e2) and not (e1.start <= e2.start and e2.end <= e1.end
                                    or e2.start <= e1.start and e1.end <= e2.end):
            return False  # partly overlapping: neither "first" nor "at once" would be clear
    for f in samplings:
        idx = sample_indices(scene.n_frames, f)
        for e in events:
            if not any(t <= e.start for t in idx) or not any(t >= e.end for t in idx):
                return False
            if f == coarsest and e.gradual and not any(e.start < t < e.end for t in idx):
                return False
        for e1, e2 in zip(events, events[1:]):
            if not overlap(e1, e2) and not any(e1.end <= t <= e2.start for t in idx):
                return False
    return True
