"""Interleaved conversations -> model inputs, with labels on the assistant's tokens only.

A conversation is a list of chat turns whose user content interleaves `{"type": "image"}` markers and
`{"type": "text", "text": ...}` parts (the sample schema, `data_recipes.schema`); the frames are PIL images, one
per marker, in order. Rendering always goes through the processor's own chat template, so a real
checkpoint gets exactly its published prompt format.

Label masking works for any template without `{% generation %}` markers: the character span of each
assistant turn is found by rendering the conversation up to that turn (with and without it), then
moved through the processor's image-placeholder expansion (`text_replacement_offsets`) and matched to
tokens by their offsets. A template that is not prefix-consistent falls back to finding the assistant
text itself.

Speed (this runs in every loader worker, for every sample): a batch's renderings are planned first and
made in two `apply_chat_template` calls (one without and one with the generation prompt: each call
renders every conversation on its own, with the same template and variables, so the strings are the
ones one call per rendering gives); the rendering through a final assistant turn is the whole
conversation, rendered once; labels are picked with tensor operations on the offsets.

A template that prints a turn's images before its texts (LLaVA's published ones) would lose the order of
interleaved frames and text: `data_recipes.chat_template` renders such turns with inline placeholders.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers.feature_extraction_utils import BatchFeature

from data_recipes.chat_template import apply_chat_template
from data_recipes.clips import clip_metadata
from data_recipes.schema import ConversationError, validate_messages  # noqa: F401 (the schema's home; re-exported)
from data_recipes.tokens import image_token_id, split_tokens, video_token_id  # noqa: F401 (the count's home)

IGNORE_INDEX = -100


def render(processor, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return apply_chat_template(processor, list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def render_many(processor, conversations: Sequence[Sequence[dict]], add_generation_prompt: bool = False) -> list[str]:
    """`render` of every conversation, in one call of the chat template machinery."""
    if len(conversations) <= 1:
        return [render(processor, c, add_generation_prompt) for c in conversations]
    return list(apply_chat_template(processor, [list(c) for c in conversations], tokenize=False,
                                    add_generation_prompt=add_generation_prompt))


def assistant_char_spans(processor, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn (end token included)."""
    return assistant_char_spans_many(processor, [messages])[0]


def assistant_char_spans_many(processor, conversations: Sequence[Sequence[dict]]
                              ) -> list[tuple[str, list[tuple[int, int]]]]:
    """`assistant_char_spans` of every conversation of a batch, rendering each text once."""
    # The plan: for every assistant turn i, the conversation before it with the generation prompt
    # (nothing for i = 0) and through it (the whole conversation, already planned, when i is last).
    plain, prompted, plans = [], [], []
    for msgs in conversations:
        msgs = list(msgs)
        whole = len(plain)
        plain.append(msgs)
        turns = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = None
            if i:
                before = len(prompted)
                prompted.append(msgs[:i])
            through = whole
            if i + 1 < len(msgs):
                through = len(plain)
                plain.append(msgs[: i + 1])
            turns.append((i, before, through))
        plans.append((msgs, whole, turns))
    plain_text = render_many(processor, plain)
    prompted_text = render_many(processor, prompted, add_generation_prompt=True)

    out = []
    for msgs, whole, turns in plans:
        text = plain_text[whole]
        spans, cursor = [], 0
        for i, b, t in turns:
            before = "" if b is None else prompted_text[b]
            through = plain_text[t]
            if text.startswith(before) and text.startswith(through) and len(before) >= cursor:
                start, end = len(before), len(through)
            else:  # not prefix-consistent: locate the turn's own text after the previous span
                m = msgs[i]
                answer = m["content"] if isinstance(m["content"], str) else "".join(
                    p["text"] for p in m["content"] if p["type"] == "text")
                start = text.find(answer, cursor)
                if start < 0:
                    raise ConversationError(f"cannot find assistant turn {i} in the rendered conversation")
                end = start + len(answer)
            spans.append((start, end))
            cursor = end
        out.append((text, spans))
    return out


def _shift(char: int, ends: list[int], gained: list[int]) -> int:
    """Where a character of the template's text lands after image placeholders were expanded."""
    return char + gained[bisect.bisect_right(ends, char)]


def _moved_spans(spans, replacements) -> list[tuple[int, int]]:
    """Assistant spans moved from the template's text into the placeholder-expanded one."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return [(_shift(s, ends, gained), _shift(e, ends, gained)) for s, e in spans]


def label_tokens(offsets, spans, replacements) -> list[bool]:
    """True for every token overlapping an assistant span (spans in pre-expansion coordinates)."""
    moved = _moved_spans(spans, replacements)
    keep = []
    for tok_start, tok_end in offsets:
        keep.append(tok_end > tok_start and any(tok_start < e and tok_end > s for s, e in moved))
    return keep


def label_mask(offsets: torch.Tensor, spans, replacements) -> torch.Tensor:
    """`label_tokens` of a whole batch at once: offsets (batch, tokens, 2) -> (batch, tokens) bool."""
    starts, ends = offsets[..., 0], offsets[..., 1]
    inside = torch.zeros(starts.shape, dtype=torch.bool)
    for b, (sp, rep) in enumerate(zip(spans, replacements)):
        for s, e in _moved_spans(sp, rep):
            inside[b] |= (starts[b] < e) & (ends[b] > s)
    return inside & (ends > starts)


@dataclass
class Encoded:
    """A collated batch plus the per-sample counts that training accounting needs."""
    inputs: dict
    visual_tokens: list[int]
    """Image and video placeholder tokens per sample (what the vision tower fed the language model),
    counted by `data_recipes.tokens.split_tokens` as the build's manifest counts them."""
    text_tokens: list[int]
    supervised_tokens: list[int]
    video_tokens: list[int] | None = None
    """The video placeholder tokens among them (None: no sample had a clip)."""


def processor_inputs(processor, texts: list[str], images: Sequence[Sequence], videos: Sequence[Sequence] | None,
                     video_fps: Sequence[Sequence] | None = None, **kwargs):
    """`processor(...)` with each of images / videos passed only when a sample has some.

    `videos[i]` are prompt i's clips; `video_fps[i]` (optional) their sampled frame rates, None where
    unknown (`data_recipes.clips.clip_metadata`)."""
    has_images = any(len(x) for x in images)
    has_videos = videos is not None and any(len(v) for v in videos)
    if has_videos and getattr(processor, "video_processor", None) is None:
        raise ConversationError(f"{type(processor).__name__} has no video processor: this family has no native "
                                f"video path (use video_input: images)")
    if has_videos:
        clips = [list(c) for v in videos for c in v]
        rates = [r for i, v in enumerate(videos) for r in (video_fps[i] if video_fps and video_fps[i] else
                                                            [None] * len(v))]
        metadata = clip_metadata(clips, rates)
        if metadata is not None:
            kwargs["video_metadata"] = metadata
    call = dict(text=texts, images=[list(x) for x in images] if has_images else None,
                videos=clips if has_videos else None, **kwargs)
    try:
        return processor(**call)
    except ValueError as e:
        # InternVL's processor converts its outputs to tensors itself, without the keys that are not
        # tensors: a batch whose first sample has no image fails on the placeholder offsets (an empty
        # list, then lists of dicts). The same call without conversion, converted here, gives the same
        # tensors (tests/test_text_only_batches.py).
        if kwargs.get("return_tensors") is None or "text_replacement_offsets" not in str(e):
            raise
        out = processor(**{**call, "return_tensors": None})
        return BatchFeature(dict(out), tensor_type=kwargs["return_tensors"], skip_tensor_conversion=_NOT_TENSORS)


_NOT_TENSORS = ("text_replacement_offsets", "video_metadata")
"""Processor outputs that stay Python objects when the rest is converted to tensors."""


def encode(processor, conversations: Sequence[Sequence[dict]], images: Sequence[Sequence], *,
           with_labels: bool = True, videos: Sequence[Sequence] | None = None,
           video_fps: Sequence[Sequence] | None = None, image_options: dict | None = None) -> Encoded:
    """Tokenize a batch of interleaved conversations with their frames (right-padded).

    `videos` (native video path, see `data_recipes.clips.as_video`): per conversation, its clips (each
    a list of frames), one per `{"type": "video"}` part. `image_options` go to the image processor
    (`train.families.frame_options` when the images are a clip's frames)."""
    if len(conversations) != len(images):
        raise ConversationError(f"{len(conversations)} conversations but {len(images)} image lists")
    if videos is not None and len(videos) != len(conversations):
        raise ConversationError(f"{len(conversations)} conversations but {len(videos)} clip lists")
    for i, (msgs, imgs) in enumerate(zip(conversations, images)):
        validate_messages(msgs, len(imgs), where=f"batch item {i}", num_videos=len(videos[i]) if videos else 0)
    if with_labels:
        rendered = assistant_char_spans_many(processor, conversations)
        texts, spans = [t for t, _ in rendered], [s for _, s in rendered]
    else:
        texts, spans = render_many(processor, conversations, add_generation_prompt=True), [[] for _ in conversations]
    out = processor_inputs(processor, texts, images, videos, video_fps=video_fps, padding=True, return_tensors="pt",
                           return_offsets_mapping=with_labels, return_text_replacement_offsets=with_labels,
                           **(image_options or {}))
    out = dict(out)
    ids, mask = out["input_ids"], out["attention_mask"]
    visual, text_tokens, video = split_tokens(ids, mask, processor, clips=videos is not None and any(videos))
    if with_labels:
        offsets = torch.as_tensor(out.pop("offset_mapping"))
        replacements = out.pop("text_replacement_offsets", None)
        if replacements is None or isinstance(replacements, torch.Tensor):
            # No placeholder was expanded (InternVL returns an empty tensor rather than nothing).
            replacements = [[] for _ in texts]
        keep = label_mask(offsets, spans, replacements) & mask.bool()
        labels = torch.where(keep, ids, torch.full_like(ids, IGNORE_INDEX))
        out["labels"] = labels
        supervised = (labels != IGNORE_INDEX).sum(1).tolist()
    else:
        supervised = [0] * len(texts)
    return Encoded(out, visual.tolist(), text_tokens.tolist(), supervised,
                   video.tolist() if video is not None else None)
