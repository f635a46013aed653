"""Count visual and text tokens of samples the way a model's processor sees them.

Visual tokens per image differ by family (16 for a tiny LLaVA frame, hundreds to thousands for a
7B LLaVA-NeXT image), so a token match is only meaningful for a named model: the count is exactly
what the trainer's collator will feed, i.e. the processor run on the rendered chat template.
"""

from __future__ import annotations

from data_recipes.processors import load_processor


class TokenCounter:
    def __init__(self, model_dir: str):
        self.model_dir = str(model_dir)
        self.processor = load_processor(model_dir)

    def count(self, messages: list[dict], images: list) -> dict:
        text = self.processor.apply_chat_template(messages, tokenize=False)
        enc = self.processor(text=[text], images=[images] if images else None, return_tensors="np")
        ids = enc["input_ids"][0]
        visual = int((ids == self.processor.image_token_id).sum())
        return {"visual_tokens": visual, "text_tokens": int(enc["attention_mask"][0].sum()) - visual}
