"""Frames and text keep their order through any chat template (`data_recipes.chat_template`).

The templates published with the LLaVA checkpoints print a user turn's images first and its texts after
them. `IMAGES_FIRST` below is written in that layout (vicuna roles, `<image>\\n` per image, then each text
followed by a space); the checkpoint directory gets it as `chat_template.jinja`, as a hub checkpoint
ships it, and is loaded by the toolkit's own loader.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from PIL import Image

from data_recipes import chat_template as CT
from data_recipes.processors import load_processor
from data_recipes.tokens import TokenCounter
from evalsuite import prompts
from evalsuite.generation import ChatModel
from helpers import tiny_model
from train.chat import encode, render
from train.families import FAMILIES

IMAGES_FIRST = (
    "{%- for m in messages -%}"
    "{{ m['role'] | upper ~ ': ' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for part in m['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in m['content'] if part['type'] == 'text' -%}{{ part['text'] ~ ' ' }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if m['role'] == 'assistant' -%}</s>{%- else -%} {% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)
INFILLS = ["the red circle goes one cell left", "the blue square turns green"]


@pytest.fixture(scope="module")
def images_first(tmp_path_factory):
    """A tiny llava checkpoint whose chat_template.jinja prints images first, loaded as a checkpoint is."""
    out = tmp_path_factory.mktemp("images_first") / "llava"
    shutil.copytree(tiny_model("llava", tmp_path_factory), out)
    (out / "chat_template.jinja").write_text(IMAGES_FIRST)
    for stale in ("chat_template.json",):
        (out / stale).unlink(missing_ok=True)
    processor = load_processor(out)
    assert processor.chat_template == IMAGES_FIRST
    return out, processor


def _vcot_turn() -> list[dict]:
    return [{"role": "user", "content": prompts.user_content("vcot", 3, "what happens?", ["a", "b", "c", "d", "e"],
                                                             INFILLS)}]


def _frames_and_infills_alternate(text: str) -> bool:
    first, second, third = (i for i in range(len(text)) if text.startswith("<image>", i))
    return first < text.index(INFILLS[0]) < second < text.index(INFILLS[1]) < third < text.index("what happens?")


def _frames(n: int) -> list:
    return [Image.new("RGB", (64, 64), (40 * i, 0, 0)) for i in range(n)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_tiny_templates_keep_the_order_and_render_unchanged(family, tmp_path_factory):
    processor = load_processor(tiny_model(family, tmp_path_factory))
    assert CT.keeps_part_order(processor)
    turn = _vcot_turn()
    assert CT.in_order(processor, turn) == turn
    assert render(processor, turn) == processor.apply_chat_template(turn, tokenize=False)


def test_an_images_first_template_is_found_and_its_interleaved_turns_keep_their_order(images_first):
    _, processor = images_first
    assert not CT.keeps_part_order(processor)
    # as published, the template alone would put the three frames before both infills
    plain = processor.apply_chat_template(_vcot_turn(), tokenize=False)
    assert plain.index(INFILLS[0]) > plain.rindex("<image>")
    text = render(processor, _vcot_turn(), add_generation_prompt=True)
    assert text.count("<image>") == 3 and _frames_and_infills_alternate(text)
    assert text.startswith("USER: <image>\n") and text.endswith("ASSISTANT:")


def test_turns_with_their_images_first_still_render_as_published(images_first):
    _, processor = images_first
    turn = [{"role": "user", "content": prompts.user_content("base", 3, "what happens?", ["a", "b", "c", "d", "e"])},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    assert render(processor, turn) == processor.apply_chat_template(turn, tokenize=False)


def test_encoded_tokens_interleave_frames_and_infills_and_the_answer_is_labelled(images_first):
    """Through the trainer's and the scorer's encoding: the first infill's tokens sit between the first and
    the second frame's image tokens; the labels cover the answer and nothing of the user turn."""
    _, processor = images_first
    conv = _vcot_turn() + [{"role": "assistant", "content": [{"type": "text", "text": "it moves left"}]}]
    enc = encode(processor, [conv], [_frames(3)])
    ids = enc.inputs["input_ids"][0]
    image = (ids == processor.image_token_id).nonzero().flatten().tolist()
    runs = [i for i in range(len(image)) if i == 0 or image[i] != image[i - 1] + 1]
    assert len(runs) == 3, "three frames, three runs of image tokens"
    starts = [image[r] for r in runs]
    infill = processor.tokenizer(INFILLS[0], add_special_tokens=False)["input_ids"]
    where = next(i for i in range(len(ids)) if ids[i: i + len(infill)].tolist() == infill)
    assert starts[0] < where < starts[1]
    labels = enc.inputs["labels"][0]
    answer = processor.tokenizer.decode(ids[labels != -100])
    assert "it moves left" in answer and INFILLS[0] not in answer and "<image>" not in answer


def test_generation_prompt_and_token_counts_take_the_same_order(images_first):
    path, processor = images_first
    chat = ChatModel(torch.nn.Module(), processor=processor)
    assert _frames_and_infills_alternate(chat.render(_vcot_turn()[0]["content"]))
    counter = TokenCounter(str(path))
    counts = counter.count(_vcot_turn(), _frames(3))
    per_image = counter.count([{"role": "user", "content": [{"type": "image"}]}], _frames(1))["visual_tokens"]
    assert counts["visual_tokens"] == 3 * per_image > 0


def test_clips_are_written_with_the_video_placeholder():
    turn = [{"role": "user", "content": [{"type": "text", "text": "watch"}, {"type": "video"},
                                         {"type": "text", "text": "then"}, {"type": "image"}]}]
    assert CT.inline_parts(turn, "<image>", "<video>")[0]["content"] == [
        {"type": "text", "text": "watch\n<video>\nthen\n<image>\n"}]
    # a family without a video placeholder feeds a clip's frames as images
    assert CT.inline_parts(turn, "<image>", None)[0]["content"][0]["text"] == "watch\n<image>\nthen\n<image>\n"


def test_iraven_candidate_labels_stay_beside_their_panels(images_first):
    """The `separate` layout labels each candidate panel "A: ", "B: ", ...: each label must be followed by
    its own panel, not by the question, whatever the template."""
    _, processor = images_first
    text = render(processor, [{"role": "user", "content": prompts.iraven_user_content("separate")}])
    assert text.count("<image>") == 16
    for letter in prompts.IRAVEN_LETTERS:
        assert f"\n{letter}: \n<image>\n" in text, letter


def test_a_template_that_refuses_the_probe_renders_as_given(images_first):
    """A template may insist on a system turn first: the probe's lone user turn then fails, and the
    conversation is rendered as given (the template's own error, if any, comes from the real call)."""
    _, processor = images_first
    strict = ("{%- if messages[0]['role'] != 'system' -%}{{ raise_exception('a system turn first') }}{%- endif -%}"
              + IMAGES_FIRST)
    proc = copy.copy(processor)
    proc.chat_template = strict
    assert CT.keeps_part_order(proc)
    conv = [{"role": "system", "content": [{"type": "text", "text": "be brief"}]}] + _vcot_turn()
    assert render(proc, conv) == proc.apply_chat_template(conv, tokenize=False)
