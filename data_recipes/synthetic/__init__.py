"""Deterministic synthetic scenes, image and video training samples, and evaluation items.

Scenes are 1-3 flat shapes on a light-grey canvas; clips add events between frames (moves, colour
changes, appearances, disappearances, growth, shrinking). Pixels, captions and answers are all
computed from the same ground-truth timeline, every builder is a pure function of its arguments,
and each scene belongs to exactly one of the train/val/test splits.

Modules: `scenes` (objects, events, timeline), `sampler` (seeding, random scenes, splits),
`render` (PIL drawing), `language` (captions, phrases, templates), `questions` (question/answer and
option sets), `samples` (the builders), `corpus` (the tokenizer's training text).
"""

from .corpus import record_texts, vocabulary_corpus
from .language import format_mc, static_caption, transition_caption
from .questions import QA, image_qa, temporal_qa
from .render import render_frame, render_frames
from .sampler import SPLITS, rng_for, sample_indices, scene_for_split, split_of, stable_hash
from .samples import (
    eval_item, eval_record, image_record, image_sample, item_scene, item_static_caption,
    item_transition_caption, video_record, video_sample,
)
from .scenes import COLOURS, SHAPES, Event, Obj, ObjState, Scene

__all__ = [
    "COLOURS", "QA", "SHAPES", "SPLITS", "Event", "Obj", "ObjState", "Scene", "eval_item", "eval_record",
    "format_mc", "image_qa", "image_record", "image_sample", "item_scene", "item_static_caption",
    "item_transition_caption", "record_texts", "render_frame", "render_frames", "rng_for", "sample_indices",
    "scene_for_split", "split_of", "stable_hash", "static_caption", "temporal_qa", "transition_caption",
    "video_record", "video_sample", "vocabulary_corpus",
]
