"""Chat templates for the tiny models, one per prompt style of the real families.

Real checkpoints ship their own template in `chat_template.jinja` and the toolkit always renders
through `processor.apply_chat_template`, so these are only used when `train.toy.tiny` writes a
random-init model. Each mimics the *shape* of its family's published prompt format (role markers,
where image placeholders go, the end-of-turn token) so that code paths exercised by the tiny models
are the same as those hit by the 7B checkpoints: in particular, label masking must find the assistant
span in every style.

Every template renders message content that is either a string or a list of
`{"type": "image"}` / `{"type": "video"}` / `{"type": "text", "text": ...}` parts, in order, which is
how the toolkit interleaves frames with infills (or passes a clip whole, `video_input: native`).
Qwen2-VL's and InternVL's published templates do the same; LLaVA's print a turn's images before its
texts, which `data_recipes.chat_template` detects and undoes (tests/test_chat_template.py renders
through a template of that layout).
"""

from __future__ import annotations

# One Jinja macro body per placeholder style; `{IMAGE}` is substituted with the family's token.
_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{IMAGE}"
    "{%- elif part['type'] == 'video' -%}{VIDEO}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

# "USER: ... ASSISTANT: ...</s>" (LLaVA-1.5 / vicuna style)
_VICUNA = (
    _CONTENT
    + "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ render(m['content']) }} "
    "{%- elif m['role'] == 'user' -%}USER: {{ render(m['content']) }} "
    "{%- elif m['role'] == 'assistant' -%}ASSISTANT: {{ render(m['content']) }}</s>"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)

# "[INST] ... [/INST] ...</s>" (mistral style, used by llava-v1.6-mistral)
_MISTRAL = (
    _CONTENT
    + "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}[INST] {{ render(m['content']) }} [/INST]"
    "{%- elif m['role'] == 'assistant' -%} {{ render(m['content']) }}</s>"
    "{%- endif -%}{%- endfor -%}"
)

# "<|im_start|>role\n...<|im_end|>\n" (ChatML, used by Qwen2-VL, LLaVA-OneVision, InternVL)
_CHATML = (
    _CONTENT
    + "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}{{ render(m['content']) }}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chat_template(style: str, image_placeholder: str, video_placeholder: str | None = None) -> str:
    """The Jinja chat template of a prompt style with the family's image (and video) placeholder."""
    body = {"vicuna": _VICUNA, "mistral": _MISTRAL, "chatml": _CHATML}[style]
    return body.replace("{IMAGE}", image_placeholder).replace("{VIDEO}", video_placeholder or "")


# Tokens that each style needs in the vocabulary as single, never-split tokens.
STYLE_SPECIAL_TOKENS = {
    "vicuna": ["USER:", "ASSISTANT:"],
    "mistral": ["[INST]", "[/INST]"],
    "chatml": ["<|im_start|>", "<|im_end|>"],
}
