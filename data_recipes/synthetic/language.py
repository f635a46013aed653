"""Words for scenes: captions, event phrases, question templates and multiple-choice formatting.

Everything the generator says is built here from a handful of templates over a closed vocabulary
(shapes, colours, sizes, nine grid positions, six event verbs and some glue words), so the tiny
models' ~400-token BPE covers it and a two-minute finetune can learn it. All text is lower case;
the only capitals are the option letters A-E.

Conventions: captions and free-form answers are sentences ending in "."; multiple-choice options
are bare phrases ("it moves left") and the assistant answers a multiple-choice question with the
option text itself.

Options about change come in time-reversal pairs: every event option has a partner, the wording of
the same clip played backwards ("moves left" / "moves right", "appears" / "disappears", "grows" /
"shrinks", "turns from red to green" / "turns from green to red"), and three options are their own
reversal ("it does not change", "nothing changes", "both happen at once"). `reversal_partner` maps
an option text to its partner from the text alone, which is why a colour option names both colours.
Captions keep the shorter "the red circle turns green." (the subject already names the old colour).
"""

from __future__ import annotations

import re

from .scenes import COLOURS, COLUMNS, DIRECTIONS, OPPOSITE, ROWS, SHAPES, Event, ObjState, Scene

OPTION_LETTERS = "ABCDE"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

# Event phrases. Options about one object use the "it ..." form, options about the whole clip the
# "the <shape> ..." form: shape alone identifies an object (shapes are unique within a scene). The
# three self-reversing options: the object stays still, the clip shows no change, two events overlap.
STILL_VERB = "does not change"
NOTHING = "nothing changes"
TOGETHER = "both happen at once"
MOVE_VERBS = tuple(f"moves {d}" for d in DIRECTIONS)
OTHER_VERBS = ("appears", "disappears", "grows", "shrinks")
# Verbs of captions ("the red circle turns green.") and of options ("it turns from red to green").
CAPTION_VERBS = MOVE_VERBS + tuple(f"turns {c}" for c in COLOURS) + OTHER_VERBS
OPTION_VERBS = MOVE_VERBS + tuple(f"turns from {a} to {b}" for a in COLOURS for b in COLOURS if a != b) + OTHER_VERBS
# One time-reversal pair of option verbs per event category (colour pairs are built from two colours).
CATEGORY_VERBS = {"horizontal": ("moves left", "moves right"), "vertical": ("moves up", "moves down"),
                  "presence": ("appears", "disappears"), "size": ("grows", "shrinks")}

# Question templates (the only questions the generator asks).
Q_COLOUR = "what colour is the {shape}?"
Q_WHICH = "which shape is {colour}?"
Q_SIZE = "is the {shape} small or large?"
Q_COUNT = "how many shapes are there?"
Q_WHERE = "where is the {shape}?"
Q_RELATION = "is the {a} {relation} the {b}?"
RELATIONS = ("left of", "right of", "above", "below")
Q_DESCRIBE = "describe the image."
Q_HAPPENS = "what happens to the {shape}?"
Q_CHANGES = "what changes?"
Q_FIRST = "what happens first?"
Q_LAST = "what happens last?"
EMPTY_CAPTION = "an empty picture"


def position_phrase(col: int, row: int) -> str:
    """Where a grid cell is: "on the left", "at the top right", "in the middle", ..."""
    horizontal, vertical = COLUMNS[col], ROWS[row]
    if horizontal == "middle" and vertical == "middle":
        return "in the middle"
    if vertical == "middle":
        return f"on the {horizontal}"
    if horizontal == "middle":
        return f"at the {vertical}"
    return f"at the {vertical} {horizontal}"


ALL_POSITIONS = tuple(position_phrase(c, r) for r in range(len(ROWS)) for c in range(len(COLUMNS)))


def number_phrase(n: int) -> str:
    return "there is one shape." if n == 1 else f"there are {NUMBER_WORDS[n]} shapes."


def describe_object(state: ObjState) -> str:
    """"a large red circle on the left"."""
    return f"a {state.size} {state.colour} {state.shape} {position_phrase(*state.cell)}"


def name(state: ObjState) -> str:
    """"the red circle": colour and shape, both unique within a scene at any one time."""
    return f"the {state.colour} {state.shape}"


def indefinite(phrase: str) -> str:
    """The phrase with its indefinite article: "a red circle", "an orange square"."""
    return ("an " if phrase[:1] in ("a", "e", "i", "o", "u") else "a ") + phrase


def join_and(parts: list[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def static_caption(scene: Scene, t: int) -> str:
    """What frame `t` shows, objects in the scene's (reading) order, e.g.
    "a large red circle on the left and a small blue square at the top"."""
    visible = [s for s in scene.state(t) if s.visible]
    return join_and([describe_object(s) for s in visible]) if visible else EMPTY_CAPTION


def event_verb(event: Event) -> str:
    """The verb phrase of an event: "moves left", "turns green", "appears", ..."""
    if event.kind == "move":
        return f"moves {event.direction}"
    if event.kind == "recolour":
        return f"turns {event.colour}"
    return {"appear": "appears", "disappear": "disappears", "grow": "grows", "shrink": "shrinks"}[event.kind]


def colour_change_verb(old: str, new: str) -> str:
    """The option verb of a recolour: "turns from red to green"."""
    return f"turns from {old} to {new}"


def option_verb(scene: Scene, event: Event) -> str:
    """The verb of an event in an option: `event_verb`, except that a recolour names both colours
    ("turns from red to green") so that its time reversal can be read off the text."""
    if event.kind == "recolour":
        return colour_change_verb(scene.state(event.start)[event.obj].colour, event.colour)
    return event_verb(event)


def it_phrase(verb: str) -> str:
    return f"it {verb}"


def shape_phrase(shape: str, verb: str) -> str:
    return f"the {shape} {verb}"


def transition_caption(scene: Scene, t0: int, t1: int) -> str:
    """What happens between frames t0 <= t1 (not necessarily adjacent), from the ground truth.

    "the red circle moves left." / "the blue square turns green, then a yellow triangle appears." /
    "nothing changes." Objects are named as they look at t0 (an object that appears is named
    with an indefinite article, since it was not there to refer to). Events that overlap in time
    are joined with "and", successive ones with ", then".
    """
    if not 0 <= t0 <= t1 < scene.n_frames:
        raise ValueError(f"need 0 <= t0 <= t1 < {scene.n_frames}, got {t0}, {t1}")
    states = scene.state(t0)
    # An event changes the picture between t0 and t1 exactly when (start, end] meets (t0, t1].
    events = [e for e in scene.events_in_order() if t0 < e.end and t1 > e.start]
    if not events:
        return NOTHING + "."
    text, previous = "", None
    for e in events:
        s = states[e.obj]
        subject = indefinite(f"{s.colour} {s.shape}") if e.kind == "appear" else name(s)
        clause = f"{subject} {event_verb(e)}"
        if previous is None:
            text = clause
        else:
            text += (", then " if e.start >= previous.end else " and ") + clause
        previous = e
    return text + "."


def happens_to(scene: Scene, obj: int) -> str:
    """Option text of what happens to one object over the whole clip: "it moves left", ..."""
    verbs = [option_verb(scene, e) for e in scene.events_of(obj)]
    return it_phrase(", then ".join(verbs) if verbs else STILL_VERB)


def event_phrase(scene: Scene, event: Event) -> str:
    """Option text of one event in a clip: "the circle moves left", "the circle turns from red to green"."""
    return shape_phrase(scene.objects[event.obj].shape, option_verb(scene, event))


SELF_REVERSING = (it_phrase(STILL_VERB), NOTHING, TOGETHER)
_OPTION = re.compile(r"(it|the [a-z]+) (.+)")
_COLOUR_CHANGE = re.compile(r"turns from ([a-z]+) to ([a-z]+)")
_REVERSED_VERB = {**{f"moves {d}": f"moves {OPPOSITE[d]}" for d in DIRECTIONS},
                  "appears": "disappears", "disappears": "appears", "grows": "shrinks", "shrinks": "grows"}


def reversal_partner(option_text: str) -> str | None:
    """The time-reversed wording of an option: what the same clip played backwards shows.

    "it moves left" -> "it moves right", "the circle appears" -> "the circle disappears",
    "it turns from red to green" -> "it turns from green to red"; None for the self-reversing options
    ("it does not change", "nothing changes", "both happen at once"). Reversing twice gives the text
    back. Raises ValueError for a text that is not an option phrase of this generator (e.g. a static
    answer such as "red", or another benchmark's option), so callers can tell "no partner" (None)
    from "not this phrasing".
    """
    text = option_text.strip()
    if text in SELF_REVERSING:
        return None
    match = _OPTION.fullmatch(text)
    if match is None:
        raise ValueError(f"not an option phrase of the synthetic generator: {option_text!r}")
    subject, verb = match.groups()
    if subject != "it" and subject.removeprefix("the ") not in SHAPES:
        raise ValueError(f"option {option_text!r}: subject must be 'it' or 'the <shape>' with a shape in {SHAPES}")
    if verb in _REVERSED_VERB:
        return f"{subject} {_REVERSED_VERB[verb]}"
    colours = _COLOUR_CHANGE.fullmatch(verb)
    if colours and colours[1] in COLOURS and colours[2] in COLOURS and colours[1] != colours[2]:
        return f"{subject} {colour_change_verb(colours[2], colours[1])}"
    raise ValueError(f"option {option_text!r}: no event verb of the synthetic generator")


def format_mc(question: str, options: list[str]) -> str:
    """A question followed by lettered options, one per line: "...?\\nA. it moves left\\nB. ..."."""
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options")
    return "\n".join([question] + [f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options)])


def template_texts() -> list[str]:
    """Every phrase the templates can produce, enumerated (the closed part of the vocabulary)."""
    texts = [NOTHING + ".", EMPTY_CAPTION, Q_COUNT, Q_DESCRIBE, Q_CHANGES, Q_FIRST, Q_LAST,
             "yes.", "no.", STILL_VERB, it_phrase(STILL_VERB), NOTHING, TOGETHER, TOGETHER + "."]
    texts += [number_phrase(n) for n in range(1, 4)] + list(NUMBER_WORDS[1:])
    texts += [f"it is {p}." for p in ALL_POSITIONS] + list(ALL_POSITIONS)
    for shape in SHAPES:
        texts += [Q_COLOUR.format(shape=shape), Q_SIZE.format(shape=shape), Q_WHERE.format(shape=shape),
                  Q_HAPPENS.format(shape=shape), f"the {shape}."]
        texts += [Q_RELATION.format(a=shape, relation=r, b=other) for r in RELATIONS for other in SHAPES
                  if other != shape]
        texts += [shape_phrase(shape, v) for v in OPTION_VERBS]
        for colour in COLOURS:
            texts += [f"the {colour} {shape} {v}." for v in CAPTION_VERBS if v != "appears"]
            texts.append(indefinite(f"{colour} {shape}") + " appears.")
            for size in ("small", "large"):
                texts += [f"a {size} {colour} {shape} {p}" for p in ALL_POSITIONS]
    for colour in COLOURS:
        texts += [Q_WHICH.format(colour=colour), f"it is {colour}.", colour]
    texts += ["it is small.", "it is large.", "small", "large"]
    texts += [it_phrase(v) for v in OPTION_VERBS] + [it_phrase(v) + "." for v in OPTION_VERBS]
    # The connectives of multi-event transition captions.
    texts += ["the red circle moves left, then the blue square turns green.",
              "the green triangle grows and a purple diamond appears."]
    return texts


# The text that follows a frame or an infill in an interleaved user turn (captions after frames, infills
# between frames, the reading items' infills): each closed by a newline so the next frame, text or the
# question starts on a line of its own. The evaluation's prompts import it, so training and evaluation
# share one format.
INTERLEAVED = "{text}\n"
