"""A video sample's frames as clips: the native video path's view of the sample schema.

A sample stores a video as its sampled frames, one `{"type": "image"}` marker each (the schema every
reader understands). On `video_input: native` the family's video processor wants each clip whole:
`as_video` turns the markers of each clip into one `{"type": "video"}` part and groups the frames.
Both the trainer's loader and the token counter of the recipe builder use it, so the visual tokens
a build counts are the ones training feeds.
"""

from __future__ import annotations

from typing import Sequence

VIDEO_INPUTS = ("images", "native")
"""How a video sample's frames reach a model: each as an image, or each clip through the video path."""
VIDEO_INPUT_SETTINGS = ("auto", *VIDEO_INPUTS)
"""What the trainer and the evaluation accept: `auto` takes the build's (manifest) or the run's (run.json)."""


class ClipError(ValueError):
    """Markers and frames (or the sample's `clips` field) that do not agree."""


def as_video(messages: Sequence[dict], images: Sequence, clips: Sequence[int] | None = None,
             where: str = "sample") -> tuple[list[dict], list[list]]:
    """A clip's frames as one `{"type": "video"}` part each: (messages, clips of frames).

    The image markers of a video sample are its frames, in order. `clips` gives the frames per clip
    when a sample holds several clips (real sources record it); otherwise every run of consecutive
    image markers (text between them ends a run) is one clip. Used on the native video path, where
    the family's video processor turns each clip into its own video inputs."""
    out, groups, k = [], [], 0
    sizes = list(clips) if clips else None
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append(dict(m))
            continue
        parts = []
        for part in content:
            if part.get("type") != "image":
                parts.append(part)
                continue
            starts_clip = not parts or parts[-1].get("type") != "video" or (
                sizes is not None and len(groups[-1]) == sizes[len(groups) - 1])
            if starts_clip:
                parts.append({"type": "video"})
                groups.append([])
            if k >= len(images):
                raise ClipError(f"{where}: more image markers than the {len(images)} frames")
            groups[-1].append(images[k])
            k += 1
        out.append({**m, "content": parts})
    if k != len(images):
        raise ClipError(f"{where}: {k} image markers in 'messages' but {len(images)} frames")
    if sizes is not None and [len(g) for g in groups] != sizes:
        raise ClipError(f"{where}: field 'clips' gives {sizes} frames per clip, the markers give "
                                f"{[len(g) for g in groups]}")
    return out, groups


def clip_metadata(groups: Sequence[Sequence], clip_fps: Sequence[float | None] | None) -> list[dict] | None:
    """transformers' `video_metadata` for clips whose sampled frame rate is known (None when none is).

    A clip's frames were sampled from a longer video; `clip_fps` gives, per clip, how many of them fall
    in a second of it (`data_recipes.video.sampled_fps`). Qwen2.5-VL spaces its temporal position ids
    by that time; without it, transformers assumes 24 frames a second."""
    if not clip_fps or not any(clip_fps):
        return None
    if len(clip_fps) != len(groups):
        raise ClipError(f"field 'clip_fps' gives {len(clip_fps)} rates for {len(groups)} clips")
    return [{"total_num_frames": len(g), "fps": fps, "frames_indices": list(range(len(g)))}
            for g, fps in zip(groups, clip_fps)]

