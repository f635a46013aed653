"""Count visual and text tokens of samples the way a model's processor sees them.

The contract, one definition: a sample's visual tokens are the placeholder tokens its encoded
`input_ids` hold, image ones plus, on the native video path, video ones; its text tokens are the rest
of its attention mask (`split_tokens`). Two counters apply it, and agree (tests/test_token_counter.py,
tests/test_tokens_contract.py, for every tiny family):
- `TokenCounter` (this module) counts each sample of a build without the trainer's batching;
  `data_recipes.build` writes the sums to the manifest's `counts` (`visual_tokens`, `text_tokens`, with
  `tokens_model` and `video_input`), read by a recipe's `size_from` (build time), the trainer's budget and
  schedule (`train.budget.per_sample_from_manifest`) and its dry-run plan (`train.plan.plan_budget`);
- `train.chat.encode` counts every encoded batch (`Encoded.visual_tokens`) through `split_tokens`;
  read, via `train.data.encode_samples`, by the trainer's accounting (run.json's `consumed`, then
  `--match_to`, the report's audit, studies), its budget prescan when a manifest has no count for the
  model (`train.budget.prescan_per_sample`), and the plan's sequence statistics (`train.plan.sequence_stats`,
  whose mean visual tokens size the vision tower's activations in `train.memory`).

Visual tokens per image differ by family (16 for a tiny LLaVA frame, hundreds to thousands for a
7B LLaVA-NeXT image), so a token match is only meaningful for a named model: the count is exactly
what the trainer's collator will feed, i.e. the processor run on the rendered chat template.

Running the image processor on every image of a 100k-sample build only to count (LLaVA-NeXT's AnyRes
tiling costs tens of milliseconds an image) is the slow way. Every supported processor also knows
its token arithmetic (`_get_num_multimodal_tokens(image_sizes=...)`), so the counter uses that and
the tokenizer alone, after checking it against the full processor on the first samples it sees: the
arithmetic must give the same visual tokens, and the text around the placeholders the same count
(a family that adds tokens of its own around each image, like InternVL's `<img>`...`</img>`, is
learnt from the first sample and then checked). Any disagreement switches the counter to the full
processor for good: a count is never a guess. (Seen with the tiny models: LLaVA, LLaVA-NeXT(-Video)
and Qwen2(.5)-VL agree and switch; OneVision's differs on non-square images and keeps the processor;
InternVL's counts `<img>`/`</img>` as image tokens up to transformers 5.24, which then keeps the
processor, and agrees from 5.25.)

The video path (`video_input`, as the recipe says) decides what a video sample costs. On `images`
every frame is an image, as above. On `native` the sample's frames become clips (`as_video`, the
same grouping the trainer's loader uses) and go through the family's video processor: visual tokens
are then the image placeholder tokens plus the video placeholder tokens, as `train.chat.encode`
counts them. The clip arithmetic is the family's own (`video_processors.video_tokens`, per clip),
checked against the processor on the first video samples the same way, with its own state (the
text a processor writes around each clip, like InternVL's `FrameK:` labels, learnt and checked).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data_recipes.chat_template import apply_chat_template
from data_recipes.clips import VIDEO_INPUTS, as_video
from data_recipes.processors import _model_config, frame_options, load_processor
from data_recipes.video_processors import FAMILY_VIDEO_PROCESSOR, video_tokens

CHECKED_SAMPLES = 8


def image_token_id(processor) -> int:
    """The token an image placeholder expands into."""
    return processor.image_token_id


def video_token_id(processor) -> int | None:
    """The token a clip's placeholder expands into (None where clips become image tokens, as InternVL's)."""
    return getattr(processor, "video_token_id", None)


class TokenSplit(NamedTuple):
    visual: Any
    text: Any
    video: Any
    """The video placeholder tokens among the visual ones; None unless clips were counted."""


def split_tokens(input_ids, attention_mask, processor, clips: bool = False) -> TokenSplit:
    """Visual and text tokens of encoded samples, along the last axis (numpy or torch, one row or a batch).

    Visual: the image placeholder tokens, plus the video placeholder tokens when the samples were encoded
    with clips (`clips`, the native video path) and the family has a video token. Text: the attention
    mask's other tokens. The one definition of both counts (see the module docstring)."""
    visual = (input_ids == image_token_id(processor)).sum(-1)
    video = None
    if clips and video_token_id(processor) is not None:
        video = (input_ids == video_token_id(processor)).sum(-1)
        visual = visual + video
    return TokenSplit(visual, attention_mask.sum(-1) - visual, video)


class TokenCountError(ValueError):
    """A model and video path that cannot be counted together (e.g. `native` without a video processor)."""


@dataclass
class _Check:
    """Where the arithmetic of one path stands: check (against the processor) | arithmetic | processor."""
    mode: str
    checked: int = 0
    extra: int | None = None
    """Text tokens the processor adds around each image (each clip) beyond its placeholder, learnt."""


class TokenCounter:
    def __init__(self, model_dir: str, video_input: str = "images"):
        if video_input not in VIDEO_INPUTS:
            raise TokenCountError(f"video_input must be one of {', '.join(VIDEO_INPUTS)}, got {video_input!r}")
        self.model_dir, self.video_input = str(model_dir), video_input
        self.processor = load_processor(model_dir)
        self.family = _model_config(Path(model_dir)).get("model_type")
        self._images = _Check("check" if hasattr(self.processor, "_get_num_multimodal_tokens") else "processor")
        self._clips = _Check("check" if self.family in FAMILY_VIDEO_PROCESSOR else "processor")
        self.video_token_id = video_token_id(self.processor)
        if video_input == "native":
            if getattr(self.processor, "video_processor", None) is None:
                raise TokenCountError(
                    f"{self.model_dir}: video_input native, but this model ({self.family or 'unknown family'}) has "
                    f"no video processor; families with a video path: {', '.join(sorted(FAMILY_VIDEO_PROCESSOR))}. "
                    "Use video_input: images")
            token = getattr(self.processor, "video_token", None)
            # The clip's placeholder before expansion (InternVL's `<video>` has no video_token_id).
            self._clip_placeholder = (self.video_token_id if self.video_token_id is not None else
                                      self.processor.tokenizer.convert_tokens_to_ids(token) if token else None)

    # The images path's state under its historical names.
    @property
    def mode(self) -> str:
        return self._images.mode

    @mode.setter
    def mode(self, value: str):
        self._images.mode = value

    @property
    def video_mode(self) -> str:
        """The native video path's mode (check | arithmetic | processor)."""
        return self._clips.mode

    @video_mode.setter
    def video_mode(self, value: str):
        self._clips.mode = value

    def count(self, messages: list[dict], images: list, kind: str = "image", clips: list[int] | None = None) -> dict:
        """{"visual_tokens", "text_tokens"} of one sample on the counter's video path.

        `kind` is the sample's (a `video` sample goes through the video processor on `native`);
        `clips` its frames per clip when it records them (see `as_video`)."""
        if self.video_input == "native" and kind == "video" and images:
            messages, groups = as_video(messages, images, clips)
            text = apply_chat_template(self.processor, messages, tokenize=False)
            if any(len({im.size for im in g}) != 1 for g in groups):  # the arithmetic takes same-size frames
                return self._clips_by_processor(text, groups)
            return self._checked(self._clips, lambda: self._clips_by_arithmetic(text, groups),
                                 lambda: self._clips_by_processor(text, groups), len(groups))
        text = apply_chat_template(self.processor, messages, tokenize=False)
        options = frame_options(self.processor) if kind == "video" else {}
        if not images or options:  # frames under the family's frame options: counted as the trainer feeds them
            return self._by_processor(text, images, options)
        return self._checked(self._images, lambda: self._by_arithmetic(text, images),
                             lambda: self._by_processor(text, images), len(images))

    def _checked(self, path: _Check, fast, slow, items: int) -> dict:
        """The arithmetic's count once trusted, the processor's until then (and for good on a mismatch)."""
        if path.mode == "processor":
            return slow()
        if path.mode == "arithmetic":
            return fast()
        reference = slow()
        try:
            if path.extra is None:
                path.extra = 0
                path.extra = (reference["text_tokens"] - fast()["text_tokens"]) // items
            got = fast()
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # a processor without the arithmetic's settings
            got = f"an error ({type(e).__name__}: {e})"
        if got != reference:
            print(f"[tokens] {self.model_dir}: the processor's token arithmetic gives {got}, the processor "
                  f"{reference}; counting with the processor from now on", file=sys.stderr)
            path.mode = "processor"
            return reference
        path.checked += 1
        if path.checked >= CHECKED_SAMPLES:
            path.mode = "arithmetic"
        return reference

    def _by_processor(self, text: str, images: list, options: dict | None = None) -> dict:
        enc = self.processor(text=[text], images=[images] if images else None, return_tensors="np", **(options or {}))
        split = split_tokens(enc["input_ids"][0], enc["attention_mask"][0], self.processor)
        return {"visual_tokens": int(split.visual), "text_tokens": int(split.text)}

    def _by_arithmetic(self, text: str, images: list) -> dict:
        sizes = [[im.height, im.width] for im in images]
        visual = int(sum(self.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]))
        ids = self.processor.tokenizer(text)["input_ids"]  # special tokens as the processor adds them
        placeholders = sum(1 for i in ids if i == image_token_id(self.processor))
        text_tokens = len(ids) - placeholders + (self._images.extra or 0) * len(images)
        return {"visual_tokens": visual, "text_tokens": text_tokens}

    def _clips_by_processor(self, text: str, groups: list[list]) -> dict:
        # "pt": InternVL's processor flattens its clips with torch's signature.
        enc = self.processor(text=[text], videos=[list(g) for g in groups], return_tensors="pt")
        split = split_tokens(np.asarray(enc["input_ids"][0]), np.asarray(enc["attention_mask"][0]), self.processor,
                             clips=True)  # no video token: the family writes clips as image tokens (InternVL)
        return {"visual_tokens": int(split.visual), "text_tokens": int(split.text)}

    def _clips_by_arithmetic(self, text: str, groups: list[list]) -> dict:
        visual = sum(video_tokens(self.family, self.processor, len(g), g[0].height, g[0].width) for g in groups)
        ids = self.processor.tokenizer(text)["input_ids"]
        placeholders = sum(1 for i in ids if i == self._clip_placeholder) if self._clip_placeholder is not None else 0
        text_tokens = len(ids) - placeholders + (self._clips.extra or 0) * len(groups)
        return {"visual_tokens": int(visual), "text_tokens": text_tokens}
