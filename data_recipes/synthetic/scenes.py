"""Scene model: a few flat shapes on a plain canvas, events between frames, the ground-truth timeline.

A `Scene` is fully described by its objects' *initial* attributes, a list of `Event`s and a frame
count; the state of every object at every frame is a pure function of those (`Scene.state`). Nothing
here draws or talks: `render.py` turns states into pixels and `language.py` turns them into words, so
captions, answers and pixels can never disagree.

Geometry is in canvas fractions (0..1, y pointing down) so the same scene renders at any image size.
Objects live on a 3x3 grid of cells (jittered around the cell centre): the grid is also the spatial
vocabulary ("on the left", "at the top right") and the quantisation of the split signature.

Event timing: an event occupies frames `start < end`. At t <= start an object is in its "before"
state, at t >= end in its "after" state. Gradual events (move, grow, shrink) interpolate linearly in
between; discrete events (recolour, appear, disappear) always have `end == start + 1`, i.e. the change
happens between frames `start` and `end`. Under that convention the change is visible between frames
t0 < t1 exactly when `t0 < end and t1 > start`, whatever the event kind. Two events whose changes
share some time (`overlap`) happen "at once"; otherwise one completes before the other begins.

Every event has one of five `CATEGORIES` (`category_of`): horizontal or vertical move, colour,
presence (appear/disappear), size (grow/shrink). An event and its time reversal share a category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

SHAPES = ("circle", "square", "triangle", "diamond")

# Six colours that stay far apart in RGB (and from the grey background) so that even a 16-token
# vision encoder can tell them apart, and whose names are single everyday words.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 225),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
BACKGROUND = (215, 215, 215)

# Radius in canvas fractions. Large objects still fit inside one jittered cell (half-width 1/6 minus
# the jitter), so objects in different cells never overlap.
SIZES: dict[str, float] = {"small": 0.08, "large": 0.13}
GRID = 3
JITTER = 0.025
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "middle", "bottom")

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}

EVENT_KINDS = ("move", "recolour", "appear", "disappear", "grow", "shrink")
# What kind of change an event is, as a viewer (and an option) would put it. Random scenes draw the
# category of each event uniformly, and the decoy options of a question are drawn from the same five
# categories, so an option's category says nothing about whether it is the answer.
CATEGORIES = ("horizontal", "vertical", "colour", "presence", "size")
_KIND_CATEGORY = {"recolour": "colour", "appear": "presence", "disappear": "presence", "grow": "size",
                  "shrink": "size"}
GRADUAL_KINDS = frozenset({"move", "grow", "shrink"})
# What each event looks like when the clip is played backwards (used by `Scene.reversed`).
REVERSE_KIND = {"move": "move", "recolour": "recolour", "appear": "disappear", "disappear": "appear",
                "grow": "shrink", "shrink": "grow"}


def cell_of(x: float, y: float) -> tuple[int, int]:
    """The (column, row) grid cell containing a point (edges clamp into the grid)."""
    return min(GRID - 1, max(0, int(x * GRID))), min(GRID - 1, max(0, int(y * GRID)))


def cell_centre(col: int, row: int) -> tuple[float, float]:
    return (col + 0.5) / GRID, (row + 0.5) / GRID


@dataclass(frozen=True)
class Obj:
    """An object's attributes at frame 0 (`visible=False` for objects that appear later)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    visible: bool = True


@dataclass(frozen=True)
class Event:
    """A change of one object between frames `start` and `end` (see the module docstring).

    `direction`/`cells` parametrise moves (a move covers `cells` grid cells, each 1/GRID of the
    canvas); `colour` is the new colour of a recolour.
    """

    kind: str
    obj: int
    start: int
    end: int
    direction: str | None = None
    cells: int = 0
    colour: str | None = None

    @property
    def gradual(self) -> bool:
        return self.kind in GRADUAL_KINDS

    def progress(self, t: float) -> float:
        """0 before the event, 1 after it, linear in between (discrete events jump at `end`)."""
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return 1.0
        return (t - self.start) / (self.end - self.start) if self.gradual else 0.0


def category_of(event: Event) -> str:
    """The category of an event (one of CATEGORIES): a move is "horizontal" or "vertical" by its
    direction, a recolour "colour", an appearance or disappearance "presence", growing or shrinking
    "size". An event and its time reversal always share a category."""
    if event.kind == "move":
        if event.direction not in DIRECTIONS:
            raise ValueError(f"a move needs a direction in {tuple(DIRECTIONS)}, got {event.direction!r}")
        return "horizontal" if event.direction in ("left", "right") else "vertical"
    if event.kind not in _KIND_CATEGORY:
        raise ValueError(f"unknown event kind {event.kind!r}")
    return _KIND_CATEGORY[event.kind]


def overlap(a: Event, b: Event) -> bool:
    """Whether two events happen at once: their changes, (start, end] in frames, share some time.

    Events that overlap are "simultaneous" (the answer to "what happens first?" is then that both
    happen at once); events that do not are ordered, one completes before the other begins.
    """
    return a.start < b.end and b.start < a.end


@dataclass(frozen=True)
class ObjState:
    """An object as seen in one frame."""

    shape: str
    colour: str
    radius: float
    x: float
    y: float
    visible: bool

    @property
    def size(self) -> str:
        """The size word; mid-growth states take the nearer one."""
        return "large" if self.radius > (SIZES["small"] + SIZES["large"]) / 2 else "small"

    @property
    def cell(self) -> tuple[int, int]:
        return cell_of(self.x, self.y)


def _apply(state: ObjState, event: Event, t: float) -> ObjState:
    u = event.progress(t)
    if event.kind == "move":
        dx, dy = DIRECTIONS[event.direction]
        dist = event.cells / GRID * u
        return replace(state, x=state.x + dx * dist, y=state.y + dy * dist)
    if event.kind == "recolour":
        return replace(state, colour=event.colour) if u >= 1 else state
    if event.kind == "appear":
        return replace(state, visible=u >= 1)
    if event.kind == "disappear":
        return replace(state, visible=u < 1)
    small, large = SIZES["small"], SIZES["large"]
    if event.kind == "grow":
        return replace(state, radius=small + (large - small) * u)
    if event.kind == "shrink":
        return replace(state, radius=large - (large - small) * u)
    raise ValueError(f"unknown event kind {event.kind!r}")


@dataclass(frozen=True)
class Scene:
    """Objects, the events that change them and the number of frames of the clip."""

    objects: tuple[Obj, ...]
    events: tuple[Event, ...] = ()
    n_frames: int = 1

    def __post_init__(self):
        if self.n_frames < 1:
            raise ValueError("a scene needs at least one frame")
        for e in self.events:
            if e.kind not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {e.kind!r}")
            if not 0 <= e.obj < len(self.objects):
                raise ValueError(f"event on object {e.obj} of a {len(self.objects)}-object scene")
            # Every event completes inside the clip, so the last frame shows the final state.
            if not 0 <= e.start < e.end <= self.n_frames - 1:
                raise ValueError(f"event frames {e.start}..{e.end} outside 0..{self.n_frames - 1}")
            if not e.gradual and e.end != e.start + 1:
                raise ValueError(f"discrete event {e.kind} must have end == start + 1")

    def state(self, t: int) -> tuple[ObjState, ...]:
        """Every object's state at frame `t`."""
        if not 0 <= t < self.n_frames:
            raise IndexError(f"frame {t} outside 0..{self.n_frames - 1}")
        out = []
        for i, o in enumerate(self.objects):
            s = ObjState(o.shape, o.colour, SIZES[o.size], o.x, o.y, o.visible)
            for e in sorted((e for e in self.events if e.obj == i), key=lambda e: e.start):
                s = _apply(s, e, t)
            out.append(s)
        return tuple(out)

    def events_in_order(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.start, e.end, e.obj))

    def events_of(self, obj: int) -> list[Event]:
        return [e for e in self.events_in_order() if e.obj == obj]

    def reversed(self) -> Scene:
        """The same clip played backwards: `reversed().state(t) == state(n_frames - 1 - t)`.

        Used to build the time-reversed distractor of every temporal question: the reversed clip
        has exactly the same *set* of frames, so any answer a single frame (or an unordered bag of
        frames) could support is equally supported for both clips.
        """
        last = self.n_frames - 1
        final = self.state(last)
        objects = tuple(Obj(s.shape, s.colour, s.size, s.x, s.y, s.visible) for s in final)
        events = []
        for e in self.events:
            before = self.state(e.start)[e.obj]
            events.append(Event(
                kind=REVERSE_KIND[e.kind], obj=e.obj, start=last - e.end, end=last - e.start,
                direction=OPPOSITE[e.direction] if e.direction else None, cells=e.cells,
                colour=before.colour if e.kind == "recolour" else None,
            ))
        return Scene(objects, tuple(sorted(events, key=lambda e: (e.start, e.obj))), self.n_frames)

    def signature(self) -> tuple:
        """Canonical, order-independent identity of the scene used for split assignment.

        Objects are reduced to (shape, colour, size, grid cell, visible at start) and events to
        (kind, target shape, direction, cells, new colour) in time order: exact jitter and timing are
        left out on purpose, so two scenes a viewer would call "the same" get the same signature and
        therefore the same split.
        """
        objs = tuple(sorted((o.shape, o.colour, o.size, *cell_of(o.x, o.y), o.visible) for o in self.objects))
        evs = tuple((e.kind, self.objects[e.obj].shape, e.direction or "", e.cells, e.colour or "")
                    for e in self.events_in_order())
        return objs, evs

    def to_dict(self) -> dict:
        """JSON-serialisable form; `Scene.from_dict(s.to_dict()) == s`."""
        events = []
        for e in self.events:
            d = asdict(e)
            events.append({k: v for k, v in d.items() if v is not None and not (k == "cells" and v == 0)})
        return {"n_frames": self.n_frames, "objects": [asdict(o) for o in self.objects], "events": events}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(tuple(Obj(**o) for o in d["objects"]), tuple(Event(**e) for e in d.get("events", ())),
                   int(d["n_frames"]))
