"""Pieces of the base stage: what a pretrained VLM brings before any image-vs-video finetune.

A real pretrained VLM can read a text about a clip and answer a question from it, and has seen
several images in one conversation, some with text between them. The tiny models have not, so the
base stage (shared by the image and the video run) teaches both here:

* `reading_record`: a text-only sample (no image). Its user turn is exactly the evaluation's
  `text_only` condition: the oracle infills (`narration.oracle_transition`) between the F frames an
  evaluator samples from a 32-frame clip, each as `INTERLEAVED` text, then the lettered question; the
  answer is the option text. A model that learned to read can then answer from infills alone, so the
  vCoT condition tests whether a finetuned model still *uses* what sits between its frames, not
  whether it ever learned to read. The item is an eval-like temporal item of the requested split
  (train for the base stage), so it never shares a scene with the test items.
* `still_record` / `still_sample`: a clip of 2+ frames in which nothing happens (same objects at the
  same places in every frame) with a static question about it; every other one has each frame's
  caption after it, so images in a row, and text between images, are familiar before finetuning but
  teach nothing about change.

Keys: ids are `synthetic-<pool>-reading-...` / `synthetic-<pool>-still-...` and the random streams'
kinds are prefixed by the pool, so these samples are disjoint by key from the recipes' image and video
samples (pool "").
"""

from __future__ import annotations

from PIL import Image

from .language import INTERLEAVED, format_mc, static_caption
from .narration import oracle_transition
from .questions import IMAGE_TYPES, image_qa
from .render import render_frames
from .sampler import random_scene, rng_for, sample_indices, scene_for_split, signature_id
from .samples import SOURCE, eval_record
from .scenes import Scene

READING_CLIP_FRAMES = 32  # the evaluation's clip length
READING_FRAMES = (5, 10)  # frames sampled per reading item, alternating by index (the evaluation's F)


def _prefix(pool: str) -> str:
    if not isinstance(pool, str):
        raise ValueError(f"pool must be a string (a name such as 'base'), got {type(pool).__name__}")
    return f"{pool}-" if pool else ""


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def reading_record(seed: int, index: int, split: str = "train", *, pool: str = "base") -> dict:
    """A text-only reading sample: oracle infills between sampled frames, then a temporal question.

    User turn: one text part `INTERLEAVED.format(text=infill)` per consecutive pair of the F = 5 (even
    index) or 10 (odd index) frames `sample_indices(32, F)`, then one text part `format_mc(question,
    options)`; no image. Assistant turn: the answer option's text. Meta as in `samples.py` plus the
    sampled `frames`, the infills (`transitions`) and the eval item it was built from (`item`).
    """
    prefix = _prefix(pool)
    item = eval_record(seed, index, split, READING_CLIP_FRAMES, pool=f"{prefix}reading", kind="temporal")
    meta = item["meta"]
    scene = Scene.from_dict(meta["scene"])
    frames = sample_indices(READING_CLIP_FRAMES, READING_FRAMES[index % len(READING_FRAMES)])
    infills = [oracle_transition(scene, a, b) for a, b in zip(frames, frames[1:])]
    options = list(item["options"])
    user = [_text(INTERLEAVED.format(text=t)) for t in infills] + [_text(format_mc(item["question"], options))]
    assistant = [_text(options[item["answer"]])]
    record_meta = {"split": split, "signature": meta["signature"], "question_type": meta["question_type"],
                   "question": item["question"], "options": options, "answer": item["answer"],
                   "reversed_answer": meta.get("reversed_answer"), "scene": meta["scene"],
                   "events": meta["events"], "frames": frames, "transitions": infills, "item": item["id"]}
    return {"id": f"synthetic-{prefix}reading-{split}-s{seed}-{index:07d}", "source": SOURCE, "kind": "text",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "meta": record_meta}


def still_record(seed: int, index: int, split: str = "train", frames: int = 5, *, pool: str = "base",
                 interleaved: bool | None = None) -> tuple[dict, Scene]:
    """The JSON of a still clip (no pixels) and its scene.

    A scene of 1-3 objects with no event, shown `frames` times (every frame identical), and a static
    question from `questions.image_qa`. The question type cycles through all IMAGE_TYPES every two
    indices and `interleaved` defaults to odd indices, so each type comes both with and without
    captions (cycling the ten types by index alone would tie each type to one layout, and "describe the
    image." would always be answered by copying a caption). With `interleaved`, each frame is followed
    by its caption (`INTERLEAVED`).
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2 (a still clip has several frames), got {frames!r}")
    prefix = _prefix(pool)
    rng = rng_for(seed, split, index, f"{prefix}still{frames}")
    scene = scene_for_split(rng, split, lambda r: random_scene(r, frames, r.randint(1, 3), []))
    qa = image_qa(scene, IMAGE_TYPES[(index // 2) % len(IMAGE_TYPES)], rng)
    if interleaved is None:
        interleaved = index % 2 == 1
    captions = [static_caption(scene, t) for t in range(frames)]
    user: list[dict] = []
    for caption in captions:
        user.append({"type": "image"})
        if interleaved:
            user.append(_text(INTERLEAVED.format(text=caption)))
    user.append(_text(qa.user_text))
    meta = {"split": split, "signature": signature_id(scene.signature()), **qa.meta(), "scene": scene.to_dict(),
            "events": [], "captions": captions, "interleaved": bool(interleaved), "still": True}
    record = {"id": f"synthetic-{prefix}still-{split}-s{seed}-f{frames}-{index:07d}", "source": SOURCE, "kind": "video",
              "messages": [{"role": "user", "content": user},
                           {"role": "assistant", "content": [_text(qa.answer)]}],
              "meta": meta}
    return record, scene


def still_sample(seed: int, index: int, split: str = "train", frames: int = 5, *, pool: str = "base",
                 interleaved: bool | None = None, image_size: int = 64) -> tuple[dict, list[Image.Image]]:
    """A still clip with its rendered frames (see `still_record`)."""
    record, scene = still_record(seed, index, split, frames, pool=pool, interleaved=interleaved)
    record["meta"]["image_size"] = image_size
    return record, render_frames(scene, None, image_size)
