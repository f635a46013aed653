"""Rendering through a checkpoint's chat template without losing the order of frames and text.

The toolkit interleaves parts of a user turn: frames with the infills between them (vCoT, the caption
condition, the shuffle task's conditions), I-RAVEN panels with their labels. The tiny models' templates
render the parts in order, and so do Qwen2-VL's and InternVL's. The templates published with the LLaVA
checkpoints (llava-1.5, LLaVA-NeXT, LLaVA-NeXT-Video, LLaVA-OneVision) do not: they print every image of
a turn first and then its texts, so a vCoT prompt would reach the model as all its frames followed by a
paragraph of infills, with no error anywhere.

So each template is probed once, with a user turn of text, image, text, image, text. A template that
keeps that order renders every conversation as given. For one that does not, a turn with text before one
of its images is written as one text part in which each image (or clip) is the processor's own
placeholder on its line (`inline_parts`); the processor expands those placeholders in place, as it
expands the ones a template writes. Turns whose images all come first (a question after its frames, the
usual training sample) still render exactly as the published template renders them.
"""

from __future__ import annotations

import re
from typing import Sequence

_MARKS = ("\u27e6part one\u27e7", "\u27e6part two\u27e7", "\u27e6part three\u27e7")
_ORDER: dict[tuple, bool] = {}  # (template, image placeholder) -> keeps the order


def placeholders(processor) -> tuple[str | None, str | None]:
    """The processor's image and video placeholders (the strings it expands into visual tokens)."""
    return getattr(processor, "image_token", None), getattr(processor, "video_token", None)


def keeps_part_order(processor) -> bool:
    """Whether the processor's chat template renders a user turn's images and texts in the order given.

    A template that renders no image placeholder where the probe's images are (nothing to check, nothing to
    move), or that refuses the probe's lone user turn, counts as keeping it."""
    image, _ = placeholders(processor)
    template = getattr(processor, "chat_template", None)
    if not image or not isinstance(template, str):
        return True
    key = (template, image)
    if key not in _ORDER:
        probe = [{"type": "text", "text": _MARKS[0]}, {"type": "image"}, {"type": "text", "text": _MARKS[1]},
                 {"type": "image"}, {"type": "text", "text": _MARKS[2]}]
        try:
            text = processor.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that refuses a lone user turn: render as given, as before
            _ORDER[key] = True
            return True
        found = [m.group(0) for m in re.finditer("|".join(map(re.escape, (*_MARKS, image))), text)]
        _ORDER[key] = found.count(image) != 2 or found == [_MARKS[0], image, _MARKS[1], image, _MARKS[2]]
    return _ORDER[key]


def _interleaved(content) -> bool:
    """A turn's content with a text part before one of its images or clips."""
    if isinstance(content, str):
        return False
    kinds = [part.get("type") for part in content]
    return any(k == "text" for k in kinds[: max((i for i, k in enumerate(kinds) if k in ("image", "video")),
                                                default=-1)])


def inline_parts(messages: Sequence[dict], image: str, video: str | None) -> list[dict]:
    """`messages` with every interleaved turn written as one text part: its parts in order, each image as
    `image` and each clip as `video` on a line of its own (`image` where there is no `video`)."""
    out = []
    for m in messages:
        if not _interleaved(m.get("content")):
            out.append(m)
            continue
        text = ""
        for part in m["content"]:
            kind = part.get("type")
            piece = (part["text"] if kind == "text" else
                     f"{video}\n" if kind == "video" and video is not None else
                     f"{image}\n" if kind in ("image", "video") else "")
            if text and piece and not text.endswith("\n"):
                text += "\n"
            text += piece
        out.append({**m, "content": [{"type": "text", "text": text}]})
    return out


def in_order(processor, conversation: Sequence[dict]) -> list[dict]:
    """`conversation` as the processor's template must receive it to keep its parts in order."""
    if keeps_part_order(processor):
        return list(conversation)
    image, video = placeholders(processor)
    return inline_parts(conversation, image, video)


def apply_chat_template(processor, conversations, **kwargs):
    """`processor.apply_chat_template` of one conversation (a list of turns) or of a batch of them, each
    rendered with its parts in order (`in_order`)."""
    batch = bool(conversations) and not isinstance(conversations[0], dict)
    if batch:
        return processor.apply_chat_template([in_order(processor, c) for c in conversations], **kwargs)
    return processor.apply_chat_template(in_order(processor, conversations), **kwargs)
