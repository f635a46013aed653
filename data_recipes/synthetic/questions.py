"""Questions about scenes and their answers: static ones about a single image, temporal ones about a clip.

Temporal multiple-choice questions are built so that no single frame can settle them: the option set
always contains the answer of the *time-reversed* clip (`Scene.reversed`), which consists of exactly
the same frames in the opposite order. For "what happens to the circle?" with answer "it moves left"
that is "it moves right"; for "turns green" (from red) it is "turns red"; for "appears" it is
"disappears"; for "what happens first?" it is the reversal of the last event. A model that ignores
frame order (or looks at one frame) cannot tell the two apart; `QA.reversed_index` records which
option that is, so evaluations can report how often a model picks it. The other distractors are
chosen so that the option *texts* carry no hint either (see `temporal_qa`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .language import (
    ALL_POSITIONS, NOTHING, NUMBER_WORDS, Q_CHANGES, Q_COLOUR, Q_COUNT, Q_DESCRIBE, Q_FIRST, Q_HAPPENS,
    Q_LAST, Q_RELATION, Q_SIZE, Q_WHERE, Q_WHICH, STILL_VERB, event_phrase, format_mc, happens_to,
    it_phrase, number_phrase, position_phrase, shape_candidates, shape_phrase, static_caption,
    transition_caption,
)
from .scenes import COLOURS, Scene

N_OPTIONS = 5

# Static question types of image samples; `_mc` types are the multiple-choice forms.
IMAGE_TYPES = ("colour", "where", "count", "describe", "colour_mc", "relation", "size", "where_mc", "which",
               "count_mc")
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


def _mc(qtype: str, question: str, answer: str, pool: list[str], rng: random.Random) -> QA:
    """A static multiple-choice question whose distractors are drawn from `pool`."""
    options, index = choose_options(rng, answer, [], pool)
    return QA(qtype, question, answer, options, index)


def image_qa(scene: Scene, qtype: str, rng: random.Random) -> QA:
    """A question about frame 0 of `scene` (see IMAGE_TYPES)."""
    states = [s for s in scene.state(0) if s.visible]
    if not states:
        raise ValueError("image questions need at least one visible object")
    s = rng.choice(states)
    if qtype == "relation" and len(states) < 2:
        qtype = "where"  # a relation needs two objects
    if qtype == "colour":
        return QA(qtype, Q_COLOUR.format(shape=s.shape), f"it is {s.colour}.")
    if qtype == "colour_mc":
        return _mc(qtype, Q_COLOUR.format(shape=s.shape), s.colour, list(COLOURS), rng)
    if qtype == "which":
        return QA(qtype, Q_WHICH.format(colour=s.colour), f"the {s.shape}.")
    if qtype == "size":
        return QA(qtype, Q_SIZE.format(shape=s.shape), f"it is {s.size}.")
    if qtype == "count":
        return QA(qtype, Q_COUNT, number_phrase(len(states)))
    if qtype == "count_mc":
        return _mc(qtype, Q_COUNT, NUMBER_WORDS[len(states)], list(NUMBER_WORDS[1:]), rng)
    if qtype == "where":
        return QA(qtype, Q_WHERE.format(shape=s.shape), f"it is {position_phrase(*s.cell)}.")
    if qtype == "where_mc":
        return _mc(qtype, Q_WHERE.format(shape=s.shape), position_phrase(*s.cell), list(ALL_POSITIONS), rng)
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
    raise ValueError(f"unknown image question type {qtype!r}")


def temporal_answer(scene: Scene, qtype: str, target: int | None = None) -> str:
    """The option text answering a temporal question about `scene`."""
    if qtype == "happens":
        if target is None:
            raise ValueError("'happens' questions need a target object")
        return happens_to(scene, target)
    events = scene.events_in_order()
    if qtype == "changes":
        if len(events) != 1:
            raise ValueError("'changes' questions need exactly one event")
        return event_phrase(scene, events[0])
    if qtype in TWO_EVENT_TYPES:
        if len(events) < 2:
            raise ValueError("order questions need two events")
        return event_phrase(scene, events[0] if qtype == "first" else events[-1])
    raise ValueError(f"unknown temporal question type {qtype!r}")


def _decoy_pair(rng: random.Random, phrase: Callable[[str], str], exclude: set[str]) -> list[str]:
    """Two options that are each other's time reversal ("moves up"/"moves down", "turns red"/"turns
    blue", ...), neither in `exclude`. The category is drawn first so colour pairs (15 of them) do
    not crowd out the others."""
    while True:
        category = rng.choice(("horizontal", "vertical", "presence", "size", "colour"))
        if category == "colour":
            a, b = rng.sample(sorted(COLOURS), 2)
            verbs = (f"turns {a}", f"turns {b}")
        else:
            verbs = {"horizontal": ("moves left", "moves right"), "vertical": ("moves up", "moves down"),
                     "presence": ("appears", "disappears"), "size": ("grows", "shrinks")}[category]
        pair = [phrase(v) for v in verbs]
        if not exclude.intersection(pair):
            return pair


def temporal_qa(scene: Scene, qtype: str, rng: random.Random, *, target: int | None = None,
                mc: bool = True, slot: int | None = None) -> QA:
    """A question about what happens in the clip (see TEMPORAL_TYPES and the module docstring).

    Every option set has the same make-up, whatever the answer, so the options alone give nothing
    away: two pairs of mutually reversed options plus one option that is its own reversal. For
    "what happens to X?" that is {answer, its reversal, a decoy pair, "it does not change"} (or, when
    X stays still, {"it does not change", two decoy pairs}); for "what changes?" {answer, its
    reversal, a decoy pair, "nothing changes"}; for "what happens first/last?" {both events, their
    reversals, one other event}.
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

    if qtype == "happens":
        still = it_phrase(STILL_VERB)
        if answer == still:
            first = _decoy_pair(rng, it_phrase, {answer})
            distractors = first + _decoy_pair(rng, it_phrase, {answer, *first})
        else:
            distractors = [reversed_answer, *_decoy_pair(rng, it_phrase, {answer, reversed_answer}), still]
    elif qtype == "changes":
        shape = rng.choice(scene.objects).shape
        distractors = [reversed_answer,
                       *_decoy_pair(rng, lambda v: shape_phrase(shape, v), {answer, reversed_answer}), NOTHING]
    else:
        pairs = [event_phrase(scene, e) for e in scene.events_in_order()] + \
                [event_phrase(rev, e) for e in rev.events_in_order()]
        distractors = list(dict.fromkeys(p for p in pairs if p != answer))
        others = sorted(set(shape_candidates(scene)) - set(pairs) - {NOTHING})
        distractors += rng.sample(others, N_OPTIONS - 1 - len(distractors))
    options, index = choose_options(rng, answer, distractors, [], slot)
    qa = QA(qtype, question, answer, options, index)
    qa.reversed_index = options.index(reversed_answer)
    return qa
