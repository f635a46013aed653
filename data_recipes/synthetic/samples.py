"""Sample builders: image samples, video samples (the WebDataset schema) and evaluation items.

Every builder is a pure function of its arguments: its random stream is `rng_for(seed, split,
index, kind)` and its scene is drawn by `scene_for_split`, so it belongs to `split` by construction.
Each builder first makes its JSON record from the scene (`*_record`, no pixels: the vocabulary corpus
and the statistical tests use these) and then renders the frames.

Pools: `pool` (default "") prefixes both the random stream's kind and the id
(`synthetic-<pool>-eval-...`), so samples of different pools (e.g. the base stage's reading items,
the options-only guessers' fit items) never share a key or a random stream with the recipes' samples.

Evaluation items come in two kinds (`item_kind`): blocks of five consecutive indices share a kind,
two blocks in five are "static" (what colour is / where is an object no event touches: the answer is
the same in every frame, so a single frame suffices) and three are "temporal" (what happens to an
object, what changes, what happens first / last: the answer needs the change or the order between
frames). Each block of five uses every answer slot once (`answer_slot`), so slots are exactly balanced
within each kind for every multiple of 25 items; in each temporal block exactly one item (a seeded
position) has the self-reversing option as its answer: a still target, a clip without events, or two
events at once. Every clip, static or temporal, has the same look (1-2 events on 1-3 objects, or none
for "nothing changes") and survives sampling 5 and 10 frames (`visible_when_sampled`).

Training video samples mix temporal questions (7 in 10; free-form and multiple choice, the
self-reversing answer 1 time in 5 as in the evaluation) with static questions about clips (3 in 10).
`shuffle_frames=True` is the "more frames, no order" control: the same sample with its frames in a
seeded non-identity order (`meta["frame_order"]`).

Sample JSON (the sample schema, `data_recipes.schema.SampleRecord`)::

    {"id": ..., "source": "synthetic", "kind": "image" | "video",
     "messages": [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": q}]},
                  {"role": "assistant", "content": [{"type": "text", "text": a}]}],
     "meta": {"split", "signature", "kind", "question_type", "scene", "events", "captions", ...}}

The user turn has one image marker per image, in order, then the question (with lettered options
for multiple choice, in which case the answer is the option text). `meta["captions"]`,
`meta["transitions"]` and `meta["events"]` describe the clip in its true frame order, also when the
frames are shown shuffled (image i shows clip frame `frame_order[i]`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image

from data_recipes.schema import Message, image_part, text_part

from .language import event_phrase, static_caption, transition_caption
from .questions import IMAGE_TYPES, QA, STATIC_EVAL_TYPES, TWO_EVENT_TYPES, image_qa, static_qa, temporal_qa
from .render import render_frames
from .sampler import (
    eval_windows, random_scene, rng_for, sample_indices, scene_for_split, signature_id, stable_hash,
    video_windows, visible_when_sampled,
)
from .scenes import CATEGORIES, Scene

SOURCE = "synthetic"
EVAL_SAMPLINGS = (5, 10)  # frames per clip the evaluation samples (the events must survive both)
KINDS = ("static", "temporal")
BLOCK = 5  # consecutive evaluation indices that share a kind and a permutation of the answer slots
STATIC_BLOCKS = (1, 3)  # block b is static when b % 5 is one of these: 2 blocks in 5

# Question mix of training video samples, cycled by index. "static" draws one of VIDEO_STATIC_TYPES;
# "order" is a free-form "first" or "last" (drawn). 6 static entries in 20 (3 in 10); the 14 temporal
# ones are 9 multiple choice and 5 free-form.
VIDEO_TYPES = ("happens_mc", "static", "changes_mc", "happens", "first_mc", "static", "changes", "last_mc",
               "static", "happens_mc", "order", "static", "changes_mc", "happens", "first_mc", "static",
               "happens_mc", "last_mc", "static", "changes")
VIDEO_STATIC_TYPES = ("colour", "colour_mc", "where", "where_mc", "count", "count_mc", "size", "which")
# Question mix of temporal evaluation items (drawn, not cycled, so the answer slot stays independent).
EVAL_TYPE_WEIGHTS = {"happens": 4, "changes": 2, "first": 2, "last": 2}
# How often a training clip's temporal question has the self-reversing answer (a still target, no
# event, two events at once): the evaluation's rate, one temporal item in five.
SINGLETON_P = 1 / BLOCK
TWO_EVENT_HAPPENS_P = 0.3  # training "what happens to X?" clips with a second event (frames >= 3)


def _messages(n_images: int, qa: QA) -> list[Message]:
    user = [image_part() for _ in range(n_images)] + [text_part(qa.user_text)]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [text_part(qa.answer)]}]


def _events_meta(scene: Scene) -> list[dict]:
    """Ground truth of each event, in time order, with the frames between which it happens."""
    return [{"kind": e.kind, "object": e.obj, "shape": scene.objects[e.obj].shape, "start": e.start, "end": e.end,
             "text": event_phrase(scene, e)} for e in scene.events_in_order()]


def _pooled(pool: str, name: str) -> str:
    """`name` prefixed by the pool ("base-eval32"), or `name` itself for the default pool ""."""
    if not isinstance(pool, str):
        raise ValueError(f"pool must be a string (a name such as 'base', or ''), got {type(pool).__name__}")
    return f"{pool}-{name}" if pool else name


def _sample_id(kind: str, seed: int, split: str, index: int, pool: str = "") -> str:
    return f"synthetic-{_pooled(pool, kind)}-{split}-s{seed}-{index:07d}"


def _still(scene: Scene) -> list[int]:
    """Objects no event touches."""
    changing = {e.obj for e in scene.events}
    return [i for i in range(len(scene.objects)) if i not in changing]


def _clip(rng: random.Random, split: str, n_frames: int, n_events: int, min_objects: int,
          windows: Callable[[int, int], list[tuple[int, int]]], *, simultaneous: bool = False,
          accept: Callable[[Scene], bool] | None = None, categories: tuple[str, ...] = CATEGORIES) -> Scene:
    """A clip of `split` with `n_events` events and `min_objects`..3 objects.

    The event categories are drawn uniformly from `categories` once, before the scene, so that
    redrawing the scenes a split or `accept` rejects never changes how often each category occurs.
    """
    drawn = [rng.choice(categories) for _ in range(n_events)]

    def draw(r: random.Random) -> Scene | None:
        return random_scene(r, n_frames, r.randint(max(1, min_objects), 3), windows(n_frames, n_events),
                            simultaneous=simultaneous, categories=drawn)

    return scene_for_split(rng, split, draw, accept=accept)


# ---------------------------------------------------------------------------------------------- image

def image_record(seed: int, index: int, split: str, *, pool: str = "") -> tuple[dict, Scene]:
    """The JSON of an image sample and its scene (no pixels)."""
    rng = rng_for(seed, split, index, _pooled(pool, "image"))
    scene = scene_for_split(rng, split, lambda r: random_scene(r, 1, r.randint(1, 3), []))
    qa = image_qa(scene, IMAGE_TYPES[index % len(IMAGE_TYPES)], rng)
    meta = {"split": split, "signature": signature_id(scene.signature()), "kind": "static", **qa.meta(),
            "scene": scene.to_dict(), "events": [], "captions": [static_caption(scene, 0)]}
    record = {"id": _sample_id("image", seed, split, index, pool), "source": SOURCE, "kind": "image",
              "messages": _messages(1, qa), "meta": meta}
    return record, scene


def image_sample(seed: int, index: int, split: str, image_size: int = 64, *,
                 pool: str = "") -> tuple[dict, list[Image.Image]]:
    """A static question about one image (attributes, counting, spatial relations, description)."""
    record, scene = image_record(seed, index, split, pool=pool)
    record["meta"]["image_size"] = image_size
    return record, render_frames(scene, [0], image_size)


# ---------------------------------------------------------------------------------------------- video

def _static_clip(rng: random.Random, split: str, frames: int) -> tuple[Scene, QA, int | None]:
    """A training clip with 1-2 events and a static question (VIDEO_STATIC_TYPES) about it."""
    qtype = rng.choice(VIDEO_STATIC_TYPES)
    base, mc = qtype.removesuffix("_mc"), qtype.endswith("_mc")
    n_events = rng.choice((1, 2)) if frames >= 3 else 1
    if base == "count":  # about the whole clip: the number of shapes must not change
        scene = _clip(rng, split, frames, n_events, n_events, video_windows,
                      categories=tuple(c for c in CATEGORIES if c != "presence"))
        target = None
    else:  # about one object no event touches
        scene = _clip(rng, split, frames, n_events, n_events + 1, video_windows)
        target = rng.choice(_still(scene))
    qa = static_qa(scene, base, rng, target=target, mc=mc)
    qa.qtype = qtype
    return scene, qa, target


def _temporal_clip(rng: random.Random, split: str, frames: int, qtype: str) -> tuple[Scene, QA, int | None]:
    """A training clip and a temporal question about it; the self-reversing option is the answer
    with probability SINGLETON_P (a still target, a clip without events, two events at once)."""
    if qtype == "order":
        qtype = rng.choice(("first", "last"))
    mc = qtype.endswith("_mc")
    base = qtype.removesuffix("_mc")
    if base in TWO_EVENT_TYPES and frames < 3:
        base, qtype = "happens", qtype.replace(base, "happens")  # two events in sequence need a frame between
    singleton = rng.random() < SINGLETON_P
    if base == "changes":
        n_events = 0 if singleton else 1
    elif base in TWO_EVENT_TYPES:
        n_events = 2
    else:
        n_events = 2 if frames >= 3 and rng.random() < TWO_EVENT_HAPPENS_P else 1
    still_target = base == "happens" and singleton
    scene = _clip(rng, split, frames, n_events, n_events + still_target, video_windows,
                  simultaneous=base in TWO_EVENT_TYPES and singleton)
    target = None
    if base == "happens":
        target = rng.choice(_still(scene) if still_target else sorted({e.obj for e in scene.events}))
    qa = temporal_qa(scene, base, rng, target=target, mc=mc)
    qa.qtype = qtype
    return scene, qa, target


def frame_order(seed: int, index: int, split: str, frames: int, *, pool: str = "") -> list[int]:
    """The order in which a shuffled video sample shows its clip's frames: a seeded permutation of
    0..frames-1 that is never the identity. Drawn from its own stream, so shuffling changes nothing
    else of the sample."""
    if frames < 2:
        raise ValueError(f"frames: a shuffled clip needs at least 2 frames, got {frames}")
    r = random.Random(stable_hash("frame_order", pool, seed, split, index, frames))
    order = list(range(frames))
    while order == sorted(order):
        r.shuffle(order)
    return order


def video_record(seed: int, index: int, split: str, frames: int = 5, *, pool: str = "",
                 shuffle_frames: bool = False) -> tuple[dict, Scene]:
    """The JSON of a video sample and its scene (no pixels). See the module docstring for the mix and
    for `shuffle_frames` (the id becomes `synthetic-video-shuffled-...`; everything else but
    `meta["frame_order"]` is the ordered sample's)."""
    if frames < 2:
        raise ValueError(f"frames: a video sample needs at least 2 frames, got {frames}")
    rng = rng_for(seed, split, index, _pooled(pool, f"video{frames}"))
    qtype = VIDEO_TYPES[index % len(VIDEO_TYPES)]
    if qtype == "static":
        kind, (scene, qa, target) = "static", _static_clip(rng, split, frames)
    else:
        kind, (scene, qa, target) = "temporal", _temporal_clip(rng, split, frames, qtype)
    meta = {"split": split, "signature": signature_id(scene.signature()), "kind": kind, **qa.meta(),
            "target": target, "scene": scene.to_dict(), "events": _events_meta(scene),
            "captions": [static_caption(scene, t) for t in range(frames)],
            "transitions": [transition_caption(scene, t, t + 1) for t in range(frames - 1)]}
    name = "video"
    if shuffle_frames:
        name = "video-shuffled"
        meta["frame_order"] = frame_order(seed, index, split, frames, pool=pool)
    record = {"id": _sample_id(name, seed, split, index, pool), "source": SOURCE, "kind": "video",
              "messages": _messages(frames, qa), "meta": meta}
    return record, scene


def video_sample(seed: int, index: int, split: str, frames: int = 5, image_size: int = 64, *, pool: str = "",
                 shuffle_frames: bool = False) -> tuple[dict, list[Image.Image]]:
    """A question about a `frames`-frame clip (temporal, or static about an object that stays still);
    with `shuffle_frames` the frames come in `meta["frame_order"]`."""
    record, scene = video_record(seed, index, split, frames, pool=pool, shuffle_frames=shuffle_frames)
    record["meta"]["image_size"] = image_size
    return record, render_frames(scene, record["meta"].get("frame_order"), image_size)


# ---------------------------------------------------------------------------------------------- eval

def item_kind(index: int) -> str:
    """The kind of evaluation item `index`: blocks of five consecutive indices share it, block b is
    "static" when b % 5 is 1 or 3 and "temporal" otherwise (2 items in 5 static)."""
    return "static" if (index // BLOCK) % 5 in STATIC_BLOCKS else "temporal"


def answer_slot(seed: int, split: str, index: int, pool: str = "") -> int:
    """Where the answer goes among the 5 options: a seeded permutation of 0..4 per block of five
    consecutive indices, so every slot is used exactly equally often (within each kind too, since a
    block has one kind)."""
    perm = list(range(5))
    random.Random(stable_hash("slots", pool, seed, split, index // BLOCK)).shuffle(perm)
    return perm[index % BLOCK]


def singleton_in_block(seed: int, split: str, index: int, pool: str = "") -> int:
    """The position (0..4) within index's block of five of the temporal item whose answer is the
    self-reversing option (seeded, independent of the answer slots)."""
    return random.Random(stable_hash("singleton", pool, seed, split, index // BLOCK)).randrange(BLOCK)


def _static_item(rng: random.Random, split: str, clip_frames: int, slot: int) -> tuple[Scene, QA, int]:
    """A static evaluation item: colour or position of an object no event touches, in a clip where
    1-2 other objects change (so its frames look like a temporal item's)."""
    qtype = rng.choice(STATIC_EVAL_TYPES)
    n_events = rng.choice((1, 2))
    scene = _clip(rng, split, clip_frames, n_events, n_events + 1, eval_windows,
                  accept=lambda s: visible_when_sampled(s, EVAL_SAMPLINGS))
    target = rng.choice(_still(scene))
    return scene, static_qa(scene, qtype, rng, target=target, slot=slot), target


def _temporal_item(rng: random.Random, split: str, clip_frames: int, slot: int,
                   singleton: bool) -> tuple[Scene, QA, int | None]:
    """A temporal evaluation item; `singleton` makes the self-reversing option its answer."""
    qtype = rng.choices(list(EVAL_TYPE_WEIGHTS), list(EVAL_TYPE_WEIGHTS.values()))[0]
    if qtype == "changes":
        n_events = 0 if singleton else 1
    elif qtype in TWO_EVENT_TYPES:
        n_events = 2
    else:
        n_events = rng.choice((1, 2))
    still_target = qtype == "happens" and singleton
    scene = _clip(rng, split, clip_frames, n_events, n_events + still_target, eval_windows,
                  simultaneous=qtype in TWO_EVENT_TYPES and singleton,
                  accept=lambda s: visible_when_sampled(s, EVAL_SAMPLINGS))
    target = None
    if qtype == "happens":
        target = rng.choice(_still(scene) if still_target else sorted({e.obj for e in scene.events}))
    return scene, temporal_qa(scene, qtype, rng, target=target, mc=True, slot=slot), target


def eval_record(seed: int, index: int, split: str = "test", clip_frames: int = 32, *, pool: str = "",
                kind: str | None = None) -> dict:
    """An evaluation item without its frames: {"id", "question", "options", "answer", "meta"}.

    `kind` ("static" | "temporal") overrides `item_kind(index)`. Meta: "kind", "question_type",
    "target", "reversed_answer" (the option answering the time-reversed clip; None for static items),
    "clip_frames", "scene", "events", "sampled_frames", "split", "signature".
    """
    kind = item_kind(index) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    rng = rng_for(seed, split, index, _pooled(pool, f"eval{clip_frames}"))
    slot = answer_slot(seed, split, index, pool)
    if kind == "static":
        scene, qa, target = _static_item(rng, split, clip_frames, slot)
    else:
        singleton = index % BLOCK == singleton_in_block(seed, split, index, pool)
        scene, qa, target = _temporal_item(rng, split, clip_frames, slot, singleton)
    meta = {"split": split, "signature": signature_id(scene.signature()), "kind": kind,
            "question_type": qa.qtype, "target": target, "reversed_answer": qa.reversed_index,
            "clip_frames": clip_frames, "scene": scene.to_dict(), "events": _events_meta(scene),
            "sampled_frames": {str(f): sample_indices(clip_frames, f) for f in EVAL_SAMPLINGS}}
    return {"id": _sample_id("eval", seed, split, index, pool), "question": qa.question, "options": qa.options,
            "answer": qa.answer_index, "meta": meta}


def eval_item(seed: int, index: int, split: str = "test", clip_frames: int = 32, image_size: int = 64, *,
              pool: str = "", kind: str | None = None) -> dict:
    """An EgoSchema-like 5-way question about a `clip_frames`-frame clip (frames under "frames").

    Temporal items need the change or the order between frames, static ones a single frame (see the
    module docstring); `meta["scene"]` reconstructs the clip, so `item_static_caption` /
    `item_transition_caption` describe any frames a caller samples.
    """
    item = eval_record(seed, index, split, clip_frames, pool=pool, kind=kind)
    item["meta"]["image_size"] = image_size
    item["frames"] = render_frames(item_scene(item["meta"]), None, image_size)
    return item


def item_scene(item_meta: dict) -> Scene:
    """The scene of a sample or item, rebuilt from its JSON metadata."""
    return Scene.from_dict(item_meta["scene"])


def item_static_caption(item_meta: dict, t: int) -> str:
    """`static_caption` of frame `t` of an item (or sample), from its JSON metadata."""
    return static_caption(item_scene(item_meta), t)


def item_transition_caption(item_meta: dict, t0: int, t1: int) -> str:
    """`transition_caption` between frames t0 <= t1 of an item (or sample), from its JSON metadata."""
    return transition_caption(item_scene(item_meta), t0, t1)
