"""Count visual and text tokens of samples the way a model's processor sees them.

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
and Qwen2(.5)-VL agree and switch; InternVL's arithmetic counts `<img>`/`</img>` as image tokens and
OneVision's differs on non-square images, so those two keep the processor.)
"""

from __future__ import annotations

import sys

from data_recipes.processors import load_processor

CHECKED_SAMPLES = 8


class TokenCounter:
    def __init__(self, model_dir: str):
        self.model_dir = str(model_dir)
        self.processor = load_processor(model_dir)
        self.mode = "check" if hasattr(self.processor, "_get_num_multimodal_tokens") else "processor"
        self.checked = 0
        self.extra_per_image: int | None = None  # text tokens a processor adds around each image

    def count(self, messages: list[dict], images: list) -> dict:
        text = self.processor.apply_chat_template(messages, tokenize=False)
        if self.mode == "processor" or not images:
            return self._by_processor(text, images)
        fast = self._by_arithmetic(text, images)
        if self.mode == "arithmetic":
            return fast
        slow = self._by_processor(text, images)
        if self.extra_per_image is None:
            self.extra_per_image = (slow["text_tokens"] - fast["text_tokens"]) // len(images)
            fast = self._by_arithmetic(text, images)
        if fast != slow:
            print(f"[tokens] {self.model_dir}: the processor's token arithmetic gives {fast}, the processor "
                  f"{slow}; counting with the processor from now on", file=sys.stderr)
            self.mode = "processor"
            return slow
        self.checked += 1
        if self.checked >= CHECKED_SAMPLES:
            self.mode = "arithmetic"
        return slow

    def _by_processor(self, text: str, images: list) -> dict:
        enc = self.processor(text=[text], images=[images] if images else None, return_tensors="np")
        ids = enc["input_ids"][0]
        visual = int((ids == self.processor.image_token_id).sum())
        return {"visual_tokens": visual, "text_tokens": int(enc["attention_mask"][0].sum()) - visual}

    def _by_arithmetic(self, text: str, images: list) -> dict:
        sizes = [[im.height, im.width] for im in images]
        visual = int(sum(self.processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]))
        ids = self.processor.tokenizer(text)["input_ids"]  # special tokens as the processor adds them
        placeholders = sum(1 for i in ids if i == self.processor.image_token_id)
        text_tokens = len(ids) - placeholders + (self.extra_per_image or 0) * len(images)
        return {"visual_tokens": visual, "text_tokens": text_tokens}
