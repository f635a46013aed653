"""Deterministic synthetic scenes, image and video training samples, and evaluation items.

Scenes are 1-3 flat shapes on a light-grey canvas; clips add events between frames (moves, colour
changes, appearances, disappearances, growth, shrinking), each of one of five categories drawn
uniformly. Pixels, captions and answers are all computed from the same ground-truth timeline, every
builder is a pure function of its arguments, and each scene belongs to exactly one of the
train/val/test splits.

Evaluation items are "static" (the answer is in any single frame) or "temporal" (it needs the change
or the order between frames); temporal option sets are two time-reversal pairs plus one
self-reversing option, so the options alone give nothing away.

Modules: `scenes` (objects, events, timeline), `sampler` (seeding, random scenes, splits),
`render` (PIL drawing), `language` (captions, phrases, templates), `questions` (question/answer and
option sets), `samples` (the builders), `corpus` (the tokenizer's training text).
"""

GENERATOR_VERSION = 2
"""Bumped whenever what the generator makes for a given (seed, index) changes: it is part of every
synthetic recipe's content hash, so stale shards are rebuilt. 1: temporal items only; 2: static and
temporal items with symmetric option sets, narrated infills, reading items and still clips."""


from .corpus import record_texts, vocabulary_corpus
from .language import TOGETHER, format_mc, reversal_partner, static_caption, transition_caption
from .questions import QA, image_qa, static_qa, temporal_qa
from .render import render_frame, render_frames
from .sampler import SPLITS, rng_for, sample_indices, scene_for_split, split_of, stable_hash
from .samples import (
    eval_item, eval_record, image_record, image_sample, item_kind, item_scene, item_static_caption,
    item_transition_caption, video_record, video_sample,
)
from .scenes import CATEGORIES, COLOURS, SHAPES, Event, Obj, ObjState, Scene, category_of

__all__ = [
    "CATEGORIES", "COLOURS", "QA", "SHAPES", "SPLITS", "TOGETHER", "Event", "Obj", "ObjState", "Scene",
    "category_of", "eval_item", "eval_record", "format_mc", "image_qa", "image_record", "image_sample",
    "item_kind", "item_scene", "item_static_caption", "item_transition_caption", "record_texts",
    "render_frame", "render_frames", "reversal_partner", "rng_for", "sample_indices", "scene_for_split",
    "split_of", "stable_hash", "static_caption", "static_qa", "temporal_qa", "transition_caption",
    "video_record", "video_sample", "vocabulary_corpus",
]
