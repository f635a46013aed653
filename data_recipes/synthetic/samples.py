"""Sample builders: image samples, video samples (the WebDataset schema) and evaluation items.

Every builder is a pure function of its arguments: its random stream is `rng_for(seed, split,
index, kind)` and its scene is drawn by `scene_for_split`, so it belongs to `split` by construction.
Each builder first makes its JSON record from the scene (`*_record`, no pixels: the vocabulary corpus
and the statistical tests use these) and then renders the frames.

Sample JSON::

    {"id": ..., "source": "synthetic", "kind": "image" | "video",
     "messages": [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": q}]},
                  {"role": "assistant", "content": [{"type": "text", "text": a}]}],
     "meta": {"split", "signature", "question_type", "scene", "events", "captions", ...}}

The user turn has one image marker per image, in order, then the question (with lettered options
for multiple choice, in which case the answer is the option text).
"""

from __future__ import annotations

import random

from PIL import Image

from .language import event_phrase, static_caption, transition_caption
from .questions import IMAGE_TYPES, QA, TWO_EVENT_TYPES, image_qa, temporal_qa
from .render import render_frames
from .sampler import (
    eval_windows, random_scene, rng_for, sample_indices, scene_for_split, signature_id, stable_hash,
    video_windows, visible_when_sampled,
)
from .scenes import Scene

SOURCE = "synthetic"
EVAL_SAMPLINGS = (5, 10)  # frames per clip the evaluation samples (the events must survive both)

# Question mix of training video samples, cycled by index ("order" is a free-form "first" or "last",
# drawn). Order questions need two events in the clip; the others use one main event (plus still
# distractors), as do 70 % of the "happens" clips, so about 40 % of clips have two events.
VIDEO_TYPES = ("happens_mc", "happens", "changes", "changes_mc", "first_mc", "happens_mc", "happens",
               "last_mc", "changes", "order")
# Question mix of evaluation items (drawn, not cycled, so the answer slot stays independent of it).
EVAL_TYPE_WEIGHTS = {"happens": 4, "changes": 2, "first": 2, "last": 2}
STILL_TARGET_P = 0.2  # how often "what happens to X?" asks about an object that stays still


def _messages(n_images: int, qa: QA) -> list[dict]:
    user = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": qa.user_text}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": qa.answer}]}]


def _events_meta(scene: Scene) -> list[dict]:
    """Ground truth of each event, in time order, with the frames between which it happens."""
    return [{"kind": e.kind, "object": e.obj, "shape": scene.objects[e.obj].shape, "start": e.start, "end": e.end,
             "text": event_phrase(scene, e)} for e in scene.events_in_order()]


def _sample_id(kind: str, seed: int, split: str, index: int) -> str:
    return f"synthetic-{kind}-{split}-s{seed}-{index:07d}"


def _target(rng: random.Random, scene: Scene) -> int:
    """The object a "what happens to X?" question asks about: usually one that changes."""
    changing = sorted({e.obj for e in scene.events})
    still = [i for i in range(len(scene.objects)) if i not in changing]
    if still and rng.random() < STILL_TARGET_P:
        return rng.choice(still)
    return rng.choice(changing)


# ---------------------------------------------------------------------------------------------- image

def image_record(seed: int, index: int, split: str) -> tuple[dict, Scene]:
    """The JSON of an image sample and its scene (no pixels)."""
    rng = rng_for(seed, split, index, "image")
    scene = scene_for_split(rng, split, lambda r: random_scene(r, 1, r.randint(1, 3), []))
    qa = image_qa(scene, IMAGE_TYPES[index % len(IMAGE_TYPES)], rng)
    meta = {"split": split, "signature": signature_id(scene.signature()), **qa.meta(),
            "scene": scene.to_dict(), "events": [], "captions": [static_caption(scene, 0)]}
    record = {"id": _sample_id("image", seed, split, index), "source": SOURCE, "kind": "image",
              "messages": _messages(1, qa), "meta": meta}
    return record, scene


def image_sample(seed: int, index: int, split: str, image_size: int = 64) -> tuple[dict, list[Image.Image]]:
    """A static question about one image (attributes, counting, spatial relations, description)."""
    record, scene = image_record(seed, index, split)
    record["meta"]["image_size"] = image_size
    return record, render_frames(scene, [0], image_size)


# ---------------------------------------------------------------------------------------------- video

def video_record(seed: int, index: int, split: str, frames: int = 5) -> tuple[dict, Scene]:
    """The JSON of a video sample and its scene (no pixels)."""
    if frames < 2:
        raise ValueError("a video sample needs at least 2 frames")
    rng = rng_for(seed, split, index, f"video{frames}")
    qtype = VIDEO_TYPES[index % len(VIDEO_TYPES)]
    if qtype == "order":
        qtype = rng.choice(("first", "last"))
    mc = qtype.endswith("_mc")
    base = qtype.removesuffix("_mc")
    if base in TWO_EVENT_TYPES and frames < 3:
        base = "happens"  # two events in sequence need a frame between them
    if base in TWO_EVENT_TYPES or (base == "happens" and frames >= 3 and rng.random() < 0.3):
        n_events = 2
    else:
        n_events = 1

    def draw(r: random.Random) -> Scene | None:
        return random_scene(r, frames, r.randint(n_events, 3), video_windows(frames, n_events))

    scene = scene_for_split(rng, split, draw)
    target = _target(rng, scene) if base == "happens" else None
    qa = temporal_qa(scene, base, rng, target=target, mc=mc)
    qa.qtype = qtype
    meta = {"split": split, "signature": signature_id(scene.signature()), **qa.meta(), "target": target,
            "scene": scene.to_dict(), "events": _events_meta(scene),
            "captions": [static_caption(scene, t) for t in range(frames)],
            "transitions": [transition_caption(scene, t, t + 1) for t in range(frames - 1)]}
    record = {"id": _sample_id("video", seed, split, index), "source": SOURCE, "kind": "video",
              "messages": _messages(frames, qa), "meta": meta}
    return record, scene


def video_sample(seed: int, index: int, split: str, frames: int = 5,
                 image_size: int = 64) -> tuple[dict, list[Image.Image]]:
    """A temporal question about a `frames`-frame clip in which one or two events happen."""
    record, scene = video_record(seed, index, split, frames)
    record["meta"]["image_size"] = image_size
    return record, render_frames(scene, None, image_size)


# ---------------------------------------------------------------------------------------------- eval

def answer_slot(seed: int, split: str, index: int) -> int:
    """Where the answer goes among the 5 options: a seeded permutation of 0..4 per block of five
    consecutive indices, so every slot is used exactly equally often."""
    perm = list(range(5))
    random.Random(stable_hash("slots", seed, split, index // 5)).shuffle(perm)
    return perm[index % 5]


def eval_record(seed: int, index: int, split: str = "test", clip_frames: int = 32) -> dict:
    """An evaluation item without its frames."""
    rng = rng_for(seed, split, index, f"eval{clip_frames}")
    qtype = rng.choices(list(EVAL_TYPE_WEIGHTS), list(EVAL_TYPE_WEIGHTS.values()))[0]
    if qtype == "changes":
        n_events = 1
    elif qtype in TWO_EVENT_TYPES:
        n_events = 2
    else:
        n_events = rng.choice((1, 2))

    def draw(r: random.Random) -> Scene | None:
        return random_scene(r, clip_frames, r.randint(n_events, 3), eval_windows(clip_frames, n_events))

    scene = scene_for_split(rng, split, draw, accept=lambda s: visible_when_sampled(s, EVAL_SAMPLINGS))
    target = _target(rng, scene) if qtype == "happens" else None
    qa = temporal_qa(scene, qtype, rng, target=target, mc=True, slot=answer_slot(seed, split, index))
    meta = {"split": split, "signature": signature_id(scene.signature()), "question_type": qtype,
            "target": target, "reversed_answer": qa.reversed_index, "clip_frames": clip_frames,
            "scene": scene.to_dict(), "events": _events_meta(scene),
            "sampled_frames": {str(f): sample_indices(clip_frames, f) for f in EVAL_SAMPLINGS}}
    return {"id": _sample_id("eval", seed, split, index), "question": qa.question, "options": qa.options,
            "answer": qa.answer_index, "meta": meta}


def eval_item(seed: int, index: int, split: str = "test", clip_frames: int = 32, image_size: int = 64) -> dict:
    """An EgoSchema-like 5-way question about a `clip_frames`-frame clip (frames under "frames").

    The question needs the change or the order between frames; `meta["scene"]` reconstructs the
    clip, so `item_static_caption` / `item_transition_caption` describe any frames a caller samples.
    """
    item = eval_record(seed, index, split, clip_frames)
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
