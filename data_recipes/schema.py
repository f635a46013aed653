"""The sample schema: one sample of a build, as `data_recipes` writes it and `train` and `evalsuite` read it.

A sample is one WebDataset entry of a shard (`data_recipes.shards.sample_members`): a `json` member
holding a `SampleRecord`, and one JPEG member per `{"type": "image"}` marker of its messages, in order
(`KEY.jpg` for the single image of an image sample, else `KEY.000.jpg`, `KEY.001.jpg`, ...). A video
is stored as its sampled frames, one image marker each; `clips` says which frames make one clip.

Written by `data_recipes`: `sources` (published records, `turns_to_messages` and `LlavaSource.make`)
and `synthetic` (generated samples, `samples.image_sample` / `video_sample` and the base stage's
`reading`), stored byte-reproducibly by `build`.
Read by `train`: its loader checks every sample with `validate_record` before decoding it
(`train.data.ShardStream`), `train.data.encode_samples` turns samples into model inputs and
`train.chat.encode` checks each batch with `validate_messages`. `data_recipes.tokens` counts them for
the manifest and `data_recipes.clips.as_video` gives the native video path's view (`{"type": "video"}`
parts, one per clip: a view made when encoding, never stored). `evalsuite` writes its prompts in the
same message format and encodes them through `train.chat`.
"""

# No `from __future__ import annotations` here: TypedDict must see `NotRequired` itself.
from typing import Literal, NotRequired, Sequence, TypedDict

ROLES = ("system", "user", "assistant")
KINDS = ("image", "video", "text")
"""A sample's `kind`: `image` (also an image recipe's text-only records), `video`, `text` (the base stage's
reading samples)."""


class ImagePart(TypedDict):
    type: Literal["image"]


class VideoPart(TypedDict):
    """One clip (the native video path's view, `data_recipes.clips.as_video`; not stored in shards)."""
    type: Literal["video"]


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


Part = ImagePart | VideoPart | TextPart


class Message(TypedDict):
    """A chat turn; media parts only in user (and system) turns, never in assistant turns."""
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class SampleRecord(TypedDict):
    """The `json` member of a sample."""
    id: str
    source: str
    """`synthetic`, or the name of the annotation file the record came from."""
    kind: Literal["image", "video", "text"]
    messages: list[Message]
    meta: dict
    """Provenance, free-form per source: synthetic samples keep their scene and ground truth (split,
    signature, question type, events, captions, image_size, frame_order...), published records
    `file` / `files` and `data_source`. The trainer does not read it."""
    clips: NotRequired[list[int]]
    """Frames per clip, in order (published videos); without it every run of consecutive image markers
    is one clip."""
    clip_fps: NotRequired[list[float | None]]
    """Per clip, how many of its sampled frames fall in one second of the video (None: unknown)."""


def image_part() -> ImagePart:
    return {"type": "image"}


def text_part(text: str) -> TextPart:
    return {"type": "text", "text": text}


class ConversationError(ValueError):
    """A conversation that does not fit the sample schema (wrong roles, marker/image count...)."""


def validate_messages(messages: Sequence[dict], num_images: int | None = None, where: str = "sample",
                      num_videos: int | None = None) -> int:
    """Check the schema of a conversation; return the number of image markers it holds.

    `{"type": "video"}` parts (one per clip, `video_input: native`) are counted apart and checked
    against `num_videos` when given."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConversationError(f"{where}: field 'messages' must be a non-empty list of turns")
    markers = videos = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ConversationError(f"{where}: messages[{i}] must be a dict with role system|user|assistant")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ConversationError(f"{where}: messages[{i}].content must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "video"):
                if m["role"] == "assistant":
                    what = "an image" if kind == "image" else "a video"
                    raise ConversationError(f"{where}: messages[{i}] is an assistant turn with {what}")
                markers += kind == "image"
                videos += kind == "video"
            elif kind != "text" or not isinstance(part.get("text"), str):
                raise ConversationError(
                    f"{where}: messages[{i}].content[{j}] must be {{'type': 'image'}} or {{'type': 'text', 'text': str}}")
    if num_images is not None and markers != num_images:
        raise ConversationError(f"{where}: {markers} image markers in 'messages' but {num_images} images")
    if num_videos is not None and videos != num_videos:
        raise ConversationError(f"{where}: {videos} video markers in 'messages' but {num_videos} clips")
    return markers


def validate_record(record, num_images: int | None = None, where: str = "sample") -> int:
    """Check a sample's `json` member (an object whose `messages` fit `validate_messages`, with one
    marker per image member); return its image markers. What the trainer's loader checks of every sample."""
    if not isinstance(record, dict):
        raise ConversationError(f"{where}: json member must be an object, got {type(record).__name__}")
    return validate_messages(record.get("messages"), num_images, where=where)
