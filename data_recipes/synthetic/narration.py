"""Oracle infills: what happens between two frames, told in words of their own.

The vCoT condition puts a text between consecutive frames saying what happened in between. When that
text comes from the ground truth (an *oracle* infill) it must not be the answer in disguise: were it
worded like the options ("the circle moves left"), a model could match strings instead of reading what
happened. So the narration has its own templates and verbs, and none of the option wording ever occurs
in it:

    option (language.py)            narration (here)
    "it moves left"                 "the red circle slides toward the left side."
    "it turns green"                "the blue square changes colour to green."
    "it appears"                    "a yellow triangle shows up."
    "it disappears"                 "the red circle vanishes."
    "it grows" / "it shrinks"       "the green diamond gets bigger." / "... gets smaller."
    "nothing changes"               "the picture stays the same."

Like `language.transition_caption`, a narration covers the events that overlap (t0, t1], names objects
as they look at t0 ("a ..." for one that was not there yet) and joins successive events with ", then "
and overlapping ones with " while ". Captions of single frames stay `language.static_caption`.

`noisy_transition` corrupts a seeded share of the infills, for evaluations that ask how much a model
relies on them: a change is told as its time reversal (what the clip played backwards shows between
the same two frames), and a pair in which nothing changes gets a made-up change of one of the scene's
objects. Which pairs are corrupted is a pure function of (key, t0, t1), so it is reproducible and the
same for every model.
"""

from __future__ import annotations

import random

from .language import indefinite
from .sampler import stable_hash
from .scenes import COLOURS, SHAPES, Event, Scene

# Where a move goes: the side of the picture the object slides toward.
SIDES = {"left": "the left side", "right": "the right side", "up": "the top", "down": "the bottom"}
STAYS = "the picture stays the same"
THEN, WHILE = ", then ", " while "

# The option wording (language.py) that narration never uses; tests check every narration against it.
OPTION_WORDING = ("moves", "turns", "appears", "disappears", "grows", "shrinks", "does not change",
                  "nothing changes", "both happen at once", "it ")


def _clause(subject: str, kind: str, *, direction: str | None = None, colour: str | None = None) -> str:
    """One change in narration words, without the final full stop: "the red circle vanishes"."""
    if kind == "move":
        return f"{subject} slides toward {SIDES[direction]}"
    if kind == "recolour":
        return f"{subject} changes colour to {colour}"
    predicate = {"appear": "shows up", "disappear": "vanishes", "grow": "gets bigger", "shrink": "gets smaller"}
    if kind not in predicate:
        raise ValueError(f"unknown event kind {kind!r}")
    return f"{subject} {predicate[kind]}"


def _subject(colour: str, shape: str, kind: str) -> str:
    """"the red circle", or "a red circle" for an object that shows up (there was none to refer to)."""
    return indefinite(f"{colour} {shape}") if kind == "appear" else f"the {colour} {shape}"


def event_clause(scene: Scene, event: Event, t0: int) -> str:
    """The narration of one event, its object named as it looks at frame `t0`."""
    state = scene.state(t0)[event.obj]
    return _clause(_subject(state.colour, state.shape, event.kind), event.kind,
                   direction=event.direction, colour=event.colour)


def events_between(scene: Scene, t0: int, t1: int) -> list[Event]:
    """The events that change the picture between frames t0 <= t1: (start, end] meets (t0, t1]."""
    if not 0 <= t0 <= t1 < scene.n_frames:
        raise ValueError(f"frames must satisfy 0 <= t0 <= t1 < {scene.n_frames}, got t0={t0}, t1={t1}")
    return [e for e in scene.events_in_order() if t0 < e.end and t1 > e.start]


def oracle_transition(scene: Scene, t0: int, t1: int) -> str:
    """What happens between frames t0 <= t1 of `scene`, from the ground truth, in narration words.

    "the red circle slides toward the left side." / "the blue square changes colour to green, then a
    yellow triangle shows up." / "the picture stays the same." (also for t0 == t1). The events told are
    exactly those `language.transition_caption` tells: the ones whose (start, end] meets (t0, t1].
    """
    events = events_between(scene, t0, t1)
    if not events:
        return STAYS + "."
    text, previous = "", None
    for e in events:
        clause = event_clause(scene, e, t0)
        if previous is None:
            text = clause
        else:
            text += (THEN if e.start >= previous.end else WHILE) + clause
        previous = e
    return text + "."


def _scene_of(item_meta: dict) -> Scene:
    if not isinstance(item_meta, dict) or "scene" not in item_meta:
        raise ValueError("item_meta must be a synthetic item's meta dict with a 'scene' field "
                         "(Scene.to_dict); EgoSchema items have no ground truth to narrate")
    return Scene.from_dict(item_meta["scene"])


def item_oracle_transition(item_meta: dict, t0: int, t1: int) -> str:
    """`oracle_transition` between frames t0 <= t1 of a synthetic item (or sample), from its JSON meta."""
    return oracle_transition(_scene_of(item_meta), t0, t1)


def is_corrupted(key: str, t0: int, t1: int, p: float) -> bool:
    """Whether the infill of pair (t0, t1) under `key` is corrupted at rate `p`.

    A uniform number in [0, 1) drawn from stable_hash(key, t0, t1) is compared with `p`: p = 0 never
    corrupts, p = 1 always does, and raising p only adds pairs (the corrupted set grows monotonically).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return stable_hash("noisy-infill", str(key), int(t0), int(t1)) / 2**64 < float(p)


def reversed_transition(scene: Scene, t0: int, t1: int) -> str:
    """What the time-reversed clip shows between the same two frames: "slides toward the right side"
    for a move to the left, "vanishes" for "shows up", the old colour for a colour change."""
    last = scene.n_frames - 1
    return oracle_transition(scene.reversed(), last - t1, last - t0)


def made_up_transition(scene: Scene, t0: int, rng: random.Random) -> str:
    """A change that does not happen: one of the scene's objects, a category drawn uniformly
    (horizontal or vertical move, colour, presence, size), told as it would look from frame `t0`."""
    states = scene.state(t0)
    s = states[rng.randrange(len(states))]
    category = rng.choice(("horizontal", "vertical", "colour", "presence", "size"))
    if not s.visible or category == "presence":
        kind = "disappear" if s.visible else "appear"
        return _clause(_subject(s.colour, s.shape, kind), kind) + "."
    subject = _subject(s.colour, s.shape, "move")
    if category in ("horizontal", "vertical"):
        direction = rng.choice(("left", "right") if category == "horizontal" else ("up", "down"))
        return _clause(subject, "move", direction=direction) + "."
    if category == "colour":
        taken = {o.colour for o in states}
        return _clause(subject, "recolour", colour=rng.choice(sorted(set(COLOURS) - taken))) + "."
    return _clause(subject, "grow" if s.size == "small" else "shrink") + "."


def noisy_transition(item_meta: dict, t0: int, t1: int, p: float, key: str) -> str:
    """The oracle infill of pair (t0, t1), or with probability `p` a wrong one (see `is_corrupted`).

    A corrupted pair in which something changes is told as its time reversal (`reversed_transition`),
    so the text contradicts the frames' order but not their content; a corrupted pair in which nothing
    changes gets a made-up change (`made_up_transition`, seeded by key and pair). `key` identifies the
    clip (e.g. the item id) so two items never share their corruption pattern by accident.
    """
    scene = _scene_of(item_meta)
    if not is_corrupted(key, t0, t1, p):
        return oracle_transition(scene, t0, t1)
    if events_between(scene, t0, t1):
        return reversed_transition(scene, t0, t1)
    return made_up_transition(scene, t0, random.Random(stable_hash("noisy-made-up", str(key), int(t0), int(t1))))


def narration_texts() -> list[str]:
    """Every sentence the narration templates can produce for one change, plus the connectives."""
    texts = [STAYS + "."]
    for shape in SHAPES:
        for colour in COLOURS:
            the = _subject(colour, shape, "move")
            texts += [_clause(the, "move", direction=d) + "." for d in SIDES]
            texts += [_clause(the, "recolour", colour=c) + "." for c in COLOURS if c != colour]
            texts += [_clause(the, k) + "." for k in ("disappear", "grow", "shrink")]
            texts.append(_clause(_subject(colour, shape, "appear"), "appear") + ".")
    texts += ["the red circle slides toward the left side, then the blue square vanishes.",
              "the green triangle gets bigger while a purple diamond shows up."]
    return texts
