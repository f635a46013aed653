"""Questions about scenes and their answers: static ones about an image or a clip, temporal ones about a clip.

Temporal multiple-choice questions are built so that no single frame can settle them: the option set
always contains the answer of the *time-reversed* clip (`Scene.reversed`), which consists of exactly
the same frames in the opposite order. For "what happens to the circle?" with answer "it moves left"
that is "it moves right"; for "it turns from red to green" it is "it turns from green to red"; for
"appears" it is "disappears"; for "what happens first?" it is the reversal of the last event. A model
that ignores frame order (or looks at one frame) cannot tell the two apart; `QA.reversed_index`
records which option that is, so evaluations can report how often a model picks it.

The option *texts* carry no hint either: every temporal option set has the same make-up, two pairs of
mutually reversed options (`language.reversal_partner`) plus one self-reversing option, and each of
the five is the answer for some clip:

* "what happens to X?": {answer, its reversal, a decoy pair, "it does not change"}, or, when X stays
  still, {"it does not change", two decoy pairs};
* "what changes?": {answer, its reversal, a decoy pair, "nothing changes"}, or, for a clip with no
  event, {"nothing changes", two decoy pairs};
* "what happens first/last?": {both events, their reversals, "both happen at once"}, the last being
  the answer when the two events overlap in time.

Decoy pairs are drawn like real events: a category uniformly among those not already in the set (see
`sampler.random_scene`, which draws real events' categories uniformly), then a pair of that category,
so an options-only guesser cannot tell which pair is the real one. How often the self-reversing option
is the answer is the sample builders' choice (`samples`: one item in five).

Static questions about a clip (`static_qa`) ask about an object no event touches, so the answer is the
same in every frame.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .language import (
    ALL_POSITIONS, CATEGORY_VERBS, NOTHING, NUMBER_WORDS, Q_CHANGES, Q_COLOUR, Q_COUNT, Q_DESCRIBE, Q_FIRST,
    Q_HAPPENS, Q_LAST, Q_RELATION, Q_SIZE, Q_WHERE, Q_WHICH, STILL_VERB, TOGETHER, colour_change_verb,
    event_phrase, format_mc, happens_to, it_phrase, number_phrase, position_phrase, reversal_partner,
    shape_phrase, static_caption, transition_caption,
)
from .scenes import CATEGORIES, COLOURS, ObjState, Scene, category_of, overlap

N_OPTIONS = 5

# Static question types of image samples; `_mc` types are the multiple-choice forms.
IMAGE_TYPES = ("colour", "where", "count", "describe", "colour_mc", "relation", "size", "where_mc", "which",
               "count_mc")
# Static questions about a clip: about one object no event touches (count: about the whole clip,
# which then has no appearance or disappearance); the `MC_STATIC_TYPES` also come as multiple choice.
STATIC_TYPES = ("colour", "where", "count", "size", "which")
MC_STATIC_TYPES = frozenset({"colour", "where", "count"})
# The static questions of evaluation items (always multiple choice).
STATIC_EVAL_TYPES = ("colour", "where")
# Temporal question types: what happens to one object, what changes in the clip, event order.
TEMPORAL_TYPES = ("happens", "changes", "first", "last")
TWO_EVENT_TYPES = frozenset({"first", "last"})


@dataclass
class QA:
    """One question with its answer; `options`/`answer_index` only for multiple choice."""

    qtype: str
    question: str
    answer: str
    options: list[str] | None = None
    answer_index: int | None = None
    reversed_index: int | None = None

    @property
    def user_text(self) -> str:
        """The text of the user turn: the question, followed by lettered options if any."""
        return format_mc(self.question, self.options) if self.options else self.question

    def meta(self) -> dict:
        out = {"question_type": self.qtype, "question": self.question}
        if self.options is not None:
            out.update(options=list(self.options), answer=self.answer_index)
            if self.reversed_index is not None:
                out["reversed_answer"] = self.reversed_index
        return out


def choose_options(rng: random.Random, answer: str, must: list[str], pool: list[str],
                   slot: int | None = None) -> tuple[list[str], int]:
    """Five distinct options: the answer at `slot` (random if None), every `must` distractor, and
    random others from `pool`."""
    distractors = list(dict.fromkeys(m for m in must if m != answer))[: N_OPTIONS - 1]
    rest = sorted(set(pool) - {answer} - set(distractors))
    rng.shuffle(rest)
    distractors += rest[: N_OPTIONS - 1 - len(distractors)]
    if len(distractors) != N_OPTIONS - 1:
        raise ValueError("not enough distinct distractors")
    rng.shuffle(distractors)
    slot = rng.randrange(N_OPTIONS) if slot is None else slot
    return distractors[:slot] + [answer] + distractors[slot:], slot


def _mc(qtype: str, question: str, answer: str, pool: list[str], rng: random.Random,
        slot: int | None = None) -> QA:
    """A static multiple-choice question: the answer and four others drawn uniformly from `pool`."""
    options, index = choose_options(rng, answer, [], pool, slot)
    return QA(qtype, question, answer, options, index)


def _about(qtype: str, s: ObjState, n_visible: int, rng: random.Random, slot: int | None = None) -> QA:
    """A question about one object state `s` (count: about the `n_visible` visible objects); a type
    ending in `_mc` is multiple choice with the answer at `slot` (random if None)."""
    if qtype == "colour":
        return QA(qtype, Q_COLOUR.format(shape=s.shape), f"it is {s.colour}.")
    if qtype == "colour_mc":
        return _mc(qtype, Q_COLOUR.format(shape=s.shape), s.colour, list(COLOURS), rng, slot)
    if qtype == "which":
        return QA(qtype, Q_WHICH.format(colour=s.colour), f"the {s.shape}.")
    if qtype == "size":
        return QA(qtype, Q_SIZE.format(shape=s.shape), f"it is {s.size}.")
    if qtype == "count":
        return QA(qtype, Q_COUNT, number_phrase(n_visible))
    if qtype == "count_mc":
        return _mc(qtype, Q_COUNT, NUMBER_WORDS[n_visible], list(NUMBER_WORDS[1:]), rng, slot)
    if qtype == "where":
        return QA(qtype, Q_WHERE.format(shape=s.shape), f"it is {position_phrase(*s.cell)}.")
    if qtype == "where_mc":
        return _mc(qtype, Q_WHERE.format(shape=s.shape), position_phrase(*s.cell), list(ALL_POSITIONS), rng, slot)
    raise ValueError(f"unknown static question type {qtype!r}")


def image_qa(scene: Scene, qtype: str, rng: random.Random) -> QA:
    """A question about frame 0 of `scene` (see IMAGE_TYPES)."""
    states = [s for s in scene.state(0) if s.visible]
    if not states:
        raise ValueError("image questions need at least one visible object")
    s = rng.choice(states)
    if qtype == "relation" and len(states) < 2:
        qtype = "where"  # a relation needs two objects
    if qtype == "describe":
        return QA(qtype, Q_DESCRIBE, static_caption(scene, 0) + ".")
    if qtype == "relation":
        a, b = rng.sample(states, 2)
        (ca, ra), (cb, rb) = a.cell, b.cell
        # Objects sit in distinct cells: ask about the axis on which they differ, so the answer is
        # never borderline; the relation word is drawn at random so "yes" and "no" are balanced.
        relation = rng.choice(("left of", "right of") if ca != cb else ("above", "below"))
        truth = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]
        return QA(qtype, Q_RELATION.format(a=a.shape, relation=relation, b=b.shape), "yes." if truth else "no.")
    if qtype not in IMAGE_TYPES:
        raise ValueError(f"unknown image question type {qtype!r}; expected one of {IMAGE_TYPES}")
    return _about(qtype, s, len(states), rng)


def static_qa(scene: Scene, qtype: str, rng: random.Random, *, target: int | None = None,
              slot: int | None = None, mc: bool = True) -> QA:
    """A question about a clip whose answer is the same in every frame (see STATIC_TYPES).

    `target` is the object asked about ("colour", "where", "size", "which"); no event may touch it.
    "count" needs a clip in which no object appears or disappears. With `mc` (colour, where, count)
    the options are the answer at `slot` (random if None) and four others drawn uniformly: 5 of the 6
    colours, 5 of the 9 positions, or the numbers one to five. The returned QA's `qtype` is `qtype`
    itself, multiple choice or not (the training mix renames it, e.g. "colour_mc").
    """
    if qtype not in STATIC_TYPES:
        raise ValueError(f"static question type must be one of {STATIC_TYPES}, got {qtype!r}")
    if mc and qtype not in MC_STATIC_TYPES:
        raise ValueError(f"static question type {qtype!r} has no multiple-choice form "
                         f"(those are {sorted(MC_STATIC_TYPES)})")
    if qtype == "count":
        if any(e.kind in ("appear", "disappear") for e in scene.events):
            raise ValueError("a count question needs a clip in which no object appears or disappears")
        state, n_visible = None, sum(s.visible for s in scene.state(0))
    else:
        if target is None or not 0 <= target < len(scene.objects):
            raise ValueError(f"target must be an object index 0..{len(scene.objects) - 1}, got {target!r}")
        if scene.events_of(target):
            raise ValueError(f"target {target} changes in the clip: static questions ask about a still object")
        state, n_visible = scene.state(0)[target], 0
    qa = _about(qtype + "_mc" if mc else qtype, state, n_visible, rng, slot)
    qa.qtype = qtype
    return qa


def temporal_answer(scene: Scene, qtype: str, target: int | None = None) -> str:
    """The option text answering a temporal question about `scene`.

    "happens": what happens to `target` ("it does not change" if nothing); "changes": the one event
    of the clip ("nothing changes" if none); "first"/"last": one of the two events, or "both happen
    at once" when they overlap in time.
    """
    if qtype == "happens":
        if target is None or not 0 <= target < len(scene.objects):
            raise ValueError(f"'happens' questions need a target object index, got {target!r}")
        return happens_to(scene, target)
    events = scene.events_in_order()
    if qtype == "changes":
        if len(events) > 1:
            raise ValueError(f"'changes' questions need at most one event, the clip has {len(events)}")
        return event_phrase(scene, events[0]) if events else NOTHING
    if qtype in TWO_EVENT_TYPES:
        if len(events) != 2:
            raise ValueError(f"order questions need exactly two events, the clip has {len(events)}")
        if overlap(*events):
            return TOGETHER
        return event_phrase(scene, events[0] if qtype == "first" else events[-1])
    raise ValueError(f"unknown temporal question type {qtype!r}; expected one of {TEMPORAL_TYPES}")


def decoy_pair(rng: random.Random, category: str, phrase: Callable[[str], str]) -> list[str]:
    """Two options of `category` that are each other's time reversal ("moves up"/"moves down",
    "turns from red to blue"/"turns from blue to red", ...), worded by `phrase` ("it ...", "the
    square ..."). Colour pairs use two colours drawn uniformly."""
    if category == "colour":
        a, b = rng.sample(sorted(COLOURS), 2)
        verbs = (colour_change_verb(a, b), colour_change_verb(b, a))
    elif category in CATEGORY_VERBS:
        verbs = CATEGORY_VERBS[category]
    else:
        raise ValueError(f"event category must be one of {CATEGORIES}, got {category!r}")
    return [phrase(v) for v in verbs]


def temporal_qa(scene: Scene, qtype: str, rng: random.Random, *, target: int | None = None,
                mc: bool = True, slot: int | None = None) -> QA:
    """A question about what happens in the clip (see TEMPORAL_TYPES and the module docstring).

    Multiple choice: the answer at `slot` (random if None) among the option set of the module
    docstring; decoy categories are drawn uniformly among the categories other than the answer's
    (two distinct ones when the answer is the self-reversing option). `reversed_index` is the option
    that answers the time-reversed clip (the answer itself for a self-reversing answer). Free-form:
    the answer as a sentence ("what changes?" is answered by the whole-clip transition caption).
    """
    answer = temporal_answer(scene, qtype, target)
    rev = scene.reversed()
    reversed_answer = temporal_answer(rev, qtype, target)
    if qtype == "happens":
        question = Q_HAPPENS.format(shape=scene.objects[target].shape)
    else:
        question = {"changes": Q_CHANGES, "first": Q_FIRST, "last": Q_LAST}[qtype]
    if not mc:
        free = transition_caption(scene, 0, scene.n_frames - 1) if qtype == "changes" else answer + "."
        return QA(qtype, question, free)

    if qtype in TWO_EVENT_TYPES:
        events = [event_phrase(scene, e) for e in scene.events_in_order()]
        distractors = [o for o in [*events, *map(reversal_partner, events), TOGETHER] if o != answer]
    else:
        if qtype == "happens":
            singleton, events = it_phrase(STILL_VERB), scene.events_of(target)
        else:
            singleton, events = NOTHING, scene.events_in_order()
        if answer == singleton:
            categories = rng.sample(CATEGORIES, 2)
            distractors = []
        else:
            own = category_of(events[0])
            categories = [rng.choice([c for c in CATEGORIES if c != own])]
            distractors = [reversed_answer, singleton]
        for category in categories:
            if qtype == "happens":
                phrase = it_phrase
            else:  # a decoy pair about one of the clip's shapes (drawn), like the real pair
                shape = rng.choice(scene.objects).shape
                phrase = lambda verb, shape=shape: shape_phrase(shape, verb)  # noqa: E731
            distractors += decoy_pair(rng, category, phrase)
    options, index = choose_options(rng, answer, distractors, [], slot)
    qa = QA(qtype, question, answer, options, index)
    qa.reversed_index = options.index(reversed_answer)
    return qa
