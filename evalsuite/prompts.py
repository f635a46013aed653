"""Every prompt the evaluation suite writes, in one place.

The question block is exactly the training format (`data_recipes.synthetic.format_mc`: the question,
then "A. ..." to "E. ..." one per line) after the frames, and the expected assistant answer is the
option *text*, so a finetuned model is asked the way it was taught. The conditions differ in what
sits before the question:

    base       [img, img, ..., img, question]
    caption    [img, caption 1, img, caption 2, ..., img, caption F, question]
    vcot       [img, infill 1-2, img, infill 2-3, ..., img, question]
    blind      [question]                                  (no frames, no infills: the options alone)
    text_only  [infill 1-2, infill 2-3, ..., question]     (the infills without their frames)
    reversed   [img, img, ..., img, question]              (base's layout; the task feeds the frames last to first)

`blind` and `text_only` separate what the words alone give from what the frames add: a model that answers
from option wording scores above chance under `blind`, one that reads the infills as a story scores well
under `text_only` without ever seeing a frame. `text_only` is laid out as the base stage's reading items
(each text a part of its own, `INTERLEAVED`, then the question block), so the finetuned models have seen
that shape. `reversed` asks whether the model uses the frames' order at all: on a temporal item it should
then pick the option the time-reversed clip would have.

Infills come from two questions about each pair of consecutive frames (what they have in common,
then what happened in between given that answer), optionally shortened by a text model.
`PROMPTS_HASH` changes whenever any template here changes; it is part of the infill cache key and of
the settings a finished evaluation is matched against.

The paper's protocol (`--protocol paper`) generates the answer: the question block then gets one more
line, `ANSWER_LETTER`, asking for the option's letter. An answer that the rules of
`evalsuite.extraction` cannot map to an option goes to a local chat judge with `JUDGE`, which follows
the logic of VLMEvalKit's multiple-choice matching prompt: the judge sees the question, the options and
the model's answer, two worked examples (one answer that matches an option, one that matches none), and
replies with one letter, or Z when the answer fits no option (a recorded failure, never a guess).
`ANSWER_HASH` and `JUDGE_HASH` follow these two texts into the settings.

I-RAVEN's prompts (`evalsuite.tasks.iraven`: the puzzle's images in three layouts, the prompt text, and
reading the answer back) are the last section, every name there prefixed `IRAVEN_` / `iraven_`;
`IRAVEN_HASH` follows its templates into that task's settings.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_recipes.synthetic import format_mc
from data_recipes.synthetic.language import INTERLEAVED
from evalsuite.config import IRAVEN_LAYOUTS

COMMON = "What do these two frames have in common? Answer in one sentence."
BETWEEN = ("The two frames have this in common: {common}\n"
           "What happened between the first frame and the second frame? Answer in one sentence.")
DESCRIBE = "Describe the image in one sentence."
REPHRASE = ("Shorten this description of what happens between two video frames to one short sentence. "
            "Reply with the sentence only.\n{text}")
ANSWER_LETTER = "Answer with the option's letter from the given choices directly."
"""Appended to the question block under `--protocol paper` (generate scoring): the usual instruction of
multiple-choice video benchmarks, so a model answers with a letter that extraction can read."""
JUDGE = ("Your job is to decide which option of a single-choice question a given answer stands for. "
         "You will see the question, its options and the answer someone gave. Pick the option whose meaning "
         "is closest to the answer. If the answer means something clearly different from every option, or "
         "picks no option at all, reply Z. Reply with one capital letter only: {letters} or Z.\n\n"
         "Example 1:\n"
         "Question: What is the person holding?\n"
         "Options:\nA. a cup\nB. a phone\nC. a knife\nD. a book\nE. nothing\n"
         "Answer: She has a mobile phone in her hand.\n"
         "Your reply: B\n\n"
         "Example 2:\n"
         "Question: What is the person holding?\n"
         "Options:\nA. a cup\nB. a phone\nC. a knife\nD. a book\nE. nothing\n"
         "Answer: The weather is sunny.\n"
         "Your reply: Z\n\n"
         "Now you:\n"
         "Question: {question}\n"
         "Options:\n{options}\n"
         "Answer: {answer}\n"
         "Your reply:")
# INTERLEAVED (imported above, the training data's own): what goes after a frame, an infill or a caption,
# closed by a newline so that the next frame (or the question) starts on a line of its own.

CONDITIONS = ("base", "caption", "vcot", "blind", "text_only", "reversed")
"""Every condition `user_content` lays out, in the order a vCoT evaluation asks them."""
FRAMELESS = ("blind", "text_only")
"""Conditions whose prompt shows no frame."""

PROMPTS_HASH = hashlib.sha256("\x00".join([COMMON, BETWEEN, DESCRIBE, REPHRASE, INTERLEAVED]).encode()).hexdigest()[:12]
JUDGE_HASH = hashlib.sha256(JUDGE.encode()).hexdigest()[:12]
ANSWER_HASH = hashlib.sha256(ANSWER_LETTER.encode()).hexdigest()[:12]


def _image() -> dict:
    return {"type": "image"}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def question_block(question: str, options: list[str]) -> str:
    return format_mc(question, options)


def user_content(condition: str, n_frames: int, question: str, options: list[str],
                 texts: list[str] | None = None, instruction: str | None = None) -> list[dict]:
    """The user turn of one condition; `texts` are the F captions (caption) or the F-1 infills (vcot,
    text_only), None otherwise; `instruction` (e.g. `ANSWER_LETTER`) is one more line after the options.

    `reversed` has base's layout: which frame fills which marker (last first) is the caller's business."""
    content: list[dict] = []
    if condition in ("base", "reversed"):
        content = [_image() for _ in range(n_frames)]
    elif condition == "blind":
        content = []
    elif condition == "caption":
        if texts is None or len(texts) != n_frames:
            raise ValueError(f"caption condition needs {n_frames} captions, got {None if texts is None else len(texts)}")
        for caption in texts:
            content += [_image(), _text(INTERLEAVED.format(text=caption.strip()))]
    elif condition == "vcot":
        if texts is None or len(texts) != n_frames - 1:
            raise ValueError(f"vcot condition needs {n_frames - 1} infills, got {None if texts is None else len(texts)}")
        for infill in texts:
            content += [_image(), _text(INTERLEAVED.format(text=infill.strip()))]
        content.append(_image())
    elif condition == "text_only":
        if texts is None or len(texts) != n_frames - 1:
            got = None if texts is None else len(texts)
            raise ValueError(f"text_only condition needs {n_frames - 1} infills, got {got}")
        content = [_text(INTERLEAVED.format(text=infill.strip())) for infill in texts]
    else:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    block = question_block(question, options)
    return content + [_text(f"{block}\n{instruction}" if instruction else block)]


def conversation(content: list[dict]) -> list[dict]:
    return [{"role": "user", "content": content}]


def answer_turn(option_text: str) -> dict:
    """The assistant turn scored by loglik: the option text, as in training."""
    return {"role": "assistant", "content": [_text(option_text)]}


def common_prompt() -> list[dict]:
    return [_image(), _image(), _text(COMMON)]


def between_prompt(common: str) -> list[dict]:
    return [_image(), _image(), _text(BETWEEN.format(common=common.strip()))]


def describe_prompt() -> list[dict]:
    return [_image(), _text(DESCRIBE)]


def rephrase_prompt(text: str) -> list[dict]:
    return [_text(REPHRASE.format(text=text.strip()))]


def judge_prompt(question: str, options: list[str], answer: str) -> list[dict]:
    """The judge's user turn for one answer (`JUDGE`: letters A.. for the options, Z for none of them)."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    listed = "\n".join(f"{letter}. {option.strip()}" for letter, option in zip(letters, options))
    return [_text(JUDGE.format(letters=", ".join(letters), question=question.strip(), options=listed,
                               answer=answer.strip()))]


# --- I-RAVEN ----------------------------------------------------------------------------------------------
# How an I-RAVEN puzzle is shown to a VLM (`evalsuite.tasks.iraven`): the images, the prompt text, and
# reading the answer back. Three layouts (`--iraven-layout`, `IRAVEN_LAYOUTS`):
#
#     composite   one image: the 8 context panels as a 3x3 grid whose last cell shows "?", and below
#                 it the 8 candidates in two rows of four, each under its letter A-H. The image is
#                 square and resized to the evaluated model's own input size, so the processor does
#                 not squash or crop it.
#     separate    16 images: the 8 context panels in reading order, then "A:" image ... "H:" image.
#     candidates  eight prompts, one per candidate: the full 3x3 matrix with that candidate as the
#                 ninth panel, as 9 images in reading order (each panel one image at the model's own
#                 input size), then a yes/no question: `IRAVEN_CANDIDATE_QUESTION`.
#
# composite and separate are answered with the letter alone: loglik scores the assistant turns "A".."H",
# generate reads the letter out of the reply (a reply without one is a recorded failure). They suit
# models with a real input size; a small model (the tiny test models read 64 px) cannot resolve eleven-pixel
# panels in the composite, and no text it was trained on ever answered with a letter A-H, so its answers
# pile up on one letter. `candidates` asks instead a question in the form the base stage teaches (lower
# case, answered "yes." or "no.", `IRAVEN_JUDGEMENTS`) about panels the model sees at full size; each
# candidate is judged on its own and the task compares the eight judgements (`evalsuite.tasks.iraven`).
#
# `IRAVEN_HASH` changes with any template here and is part of the task's settings. Every name of this
# section starts with IRAVEN_ / iraven_: the vCoT prompts above have their own letters, layouts and answers.

IRAVEN_LETTERS = "ABCDEFGH"
IRAVEN_COMPOSITE = ("The image shows a 3x3 matrix of panels that follow hidden rules along the rows; its last panel "
                    "is missing and marked with '?'. Below the matrix are eight candidate panels labelled A to H. "
                    "Which candidate completes the matrix? Answer with the letter only.")
IRAVEN_SEPARATE_CONTEXT = "These are the first eight panels of a 3x3 matrix, row by row; the ninth panel is missing:\n"
IRAVEN_SEPARATE_CANDIDATES = "\nThese are the eight candidates for the missing panel:\n"
IRAVEN_SEPARATE_QUESTION = "\nWhich candidate completes the matrix? Answer with the letter only."
IRAVEN_CANDIDATE_QUESTION = "do these nine panels, row by row, follow the same rules? answer yes or no."
IRAVEN_JUDGEMENTS = ("yes.", "no.")
"""The assistant answers of the candidates layout, as the base stage's yes/no questions are answered."""
IRAVEN_HASH = hashlib.sha256("\x00".join([IRAVEN_COMPOSITE, IRAVEN_SEPARATE_CONTEXT, IRAVEN_SEPARATE_CANDIDATES,
                                          IRAVEN_SEPARATE_QUESTION, IRAVEN_CANDIDATE_QUESTION, *IRAVEN_JUDGEMENTS,
                                          "layout-v2"]).encode()).hexdigest()[:12]

_PANEL, _GAP, _LABEL = 160, 10, 44  # native I-RAVEN panel size; spacing and letter band in the same pixels
IRAVEN_DYNAMIC_SIZE = 448  # for processors without a fixed input size (Qwen2-VL's min/max pixels)

_Box = tuple[int, int, int, int]  # left, top, right, bottom


def iraven_composite_layout() -> dict:
    """Boxes of the square composite at native resolution: `cells` (9), `candidates` (8), `labels` (8)."""
    width = 4 * _PANEL + 3 * _GAP
    grid_w = 3 * _PANEL + 2 * _GAP
    cand_top = _GAP + grid_w + 2 * _GAP  # below the grid and a separating rule
    height = cand_top + 2 * (_LABEL + _PANEL + _GAP)
    side = max(width + 2 * _GAP, height)
    x0 = (side - width) // 2  # centre the content on the square canvas
    gx = x0 + (width - grid_w) // 2
    cells = [(gx + c * (_PANEL + _GAP), _GAP + r * (_PANEL + _GAP)) for r in range(3) for c in range(3)]
    cands = [(x0 + c * (_PANEL + _GAP), cand_top + r * (_LABEL + _PANEL + _GAP)) for r in range(2) for c in range(4)]
    return {"side": side, "rule_y": _GAP + grid_w + _GAP,
            "cells": [(x, y, x + _PANEL, y + _PANEL) for x, y in cells],
            "labels": [(x, y, x + _PANEL, y + _LABEL) for x, y in cands],
            "candidates": [(x, y + _LABEL, x + _PANEL, y + _LABEL + _PANEL) for x, y in cands]}


def _draw_centered(draw: ImageDraw.ImageDraw, box: _Box, text: str, size: int) -> None:
    font = ImageFont.load_default(size=size)
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=0, font=font, anchor="mm")


def iraven_composite_image(image: np.ndarray, size: int | None = None) -> Image.Image:
    """The composite RGB image of one puzzle's (16, 160, 160) panels, `size` x `size` (None: native)."""
    lay = iraven_composite_layout()
    canvas = Image.new("L", (lay["side"], lay["side"]), 255)
    draw = ImageDraw.Draw(canvas)
    for box, panel in zip(lay["cells"] + lay["candidates"], list(image[:8]) + [None] + list(image[8:])):
        if panel is not None:  # None: the missing ninth cell, left blank for the "?"
            canvas.paste(Image.fromarray(panel), box[:2])
    # Frames make the cells readable as a grid after the downscale (the panels have no border).
    for box in lay["cells"] + lay["candidates"]:
        draw.rectangle(box, outline=0, width=3)
    _draw_centered(draw, lay["cells"][8], "?", _PANEL * 2 // 3)
    draw.line([(_GAP, lay["rule_y"]), (lay["side"] - _GAP, lay["rule_y"])], fill=0, width=3)
    for box, letter in zip(lay["labels"], IRAVEN_LETTERS):
        _draw_centered(draw, box, letter, _LABEL - 6)
    if size is not None and size != lay["side"]:
        canvas = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return canvas.convert("RGB")


def iraven_separate_images(image: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(p).convert("RGB") for p in image]


def iraven_candidate_images(image: np.ndarray, candidate: int, size: int | None = None) -> list[Image.Image]:
    """The 9 RGB panels of the matrix completed by `candidate` (0..7), in reading order, candidate last.

    `image` is one puzzle's (16, H, W) panels (8 context, then 8 candidates); each panel becomes one
    `size` x `size` image (None: native), so the processor neither squashes nor crops it.
    """
    if not 0 <= candidate < len(IRAVEN_LETTERS):
        raise ValueError(f"candidate must be 0..{len(IRAVEN_LETTERS) - 1}, got {candidate}")
    panels = [Image.fromarray(p) for p in list(image[:8]) + [image[8 + candidate]]]
    if size is not None:
        panels = [p if p.size == (size, size) else p.resize((size, size), Image.Resampling.LANCZOS) for p in panels]
    return [p.convert("RGB") for p in panels]


def iraven_user_content(layout: str) -> list[dict]:
    """The user turn (image markers and text) of one puzzle in `layout` (of one candidate's prompt for
    `candidates`: every candidate's prompt has the same text, only its ninth image differs)."""
    if layout == "composite":
        return [{"type": "image"}, {"type": "text", "text": IRAVEN_COMPOSITE}]
    if layout == "candidates":
        return [{"type": "image"} for _ in range(9)] + [{"type": "text", "text": IRAVEN_CANDIDATE_QUESTION}]
    if layout != "separate":
        raise ValueError(f"unknown I-RAVEN layout {layout!r}; known: {', '.join(IRAVEN_LAYOUTS)}")
    content = [{"type": "text", "text": IRAVEN_SEPARATE_CONTEXT}] + [{"type": "image"} for _ in range(8)]
    content.append({"type": "text", "text": IRAVEN_SEPARATE_CANDIDATES})
    for letter in IRAVEN_LETTERS:
        content += [{"type": "text", "text": f"{letter}: "}, {"type": "image"}]
    return content + [{"type": "text", "text": IRAVEN_SEPARATE_QUESTION}]


def iraven_image_size(processor) -> int:
    """The square input size of the model's image processor (crop, fixed height, shortest edge).

    Processors with a pixel budget instead of a size (Qwen2-VL: `size` holds min/max *pixels*)
    get IRAVEN_DYNAMIC_SIZE clamped into their budget.
    """
    ip = getattr(processor, "image_processor", processor)

    def field(d, key):
        return (d.get(key) if isinstance(d, dict) else getattr(d, key, None)) if d is not None else None

    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    if getattr(ip, "merge_size", None) is not None:  # a pixel budget, not an edge
        low, high = field(size, "shortest_edge") or 0, field(size, "longest_edge") or IRAVEN_DYNAMIC_SIZE ** 2
        return int(min(max(IRAVEN_DYNAMIC_SIZE, math.isqrt(low)), math.isqrt(high)))
    if getattr(ip, "do_center_crop", False) and field(crop, "height"):
        return int(field(crop, "height"))
    return int(field(size, "height") or field(size, "shortest_edge") or IRAVEN_DYNAMIC_SIZE)


# "C", "(C)", "C.", "C:", or "C" then a line break ("C\nThe third row ...") at the start, or "answer is C",
# "The answer is: C", "option: (C)" anywhere; not "A red square". A lone lower-case letter ("c.", "(c)") is
# the whole reply or nothing: "a" starts sentences.
_IRAVEN_EMPHASIS = re.compile(r"[*_`]")
_IRAVEN_LEADING = re.compile(r"^\s*[\(\[]?([A-H])(?:[\)\]]|[.:,](?!\w)|[ \t]*(?:$|\n))")
_IRAVEN_LONE_LOWER = re.compile(r"^\s*[\(\[]?([a-h])[\)\]]?[.:]?\s*$")
_IRAVEN_ANSWER_IS = re.compile(
    r"\b(?i:answer|option|candidate|choice)\s*(?:is\s*:?|:|=|-)?\s*[\(\[]?([A-H])\b(?![a-z'])")


def iraven_letter_choice(answer: str) -> int | None:
    """Index 0..7 of the letter the reply chose, or None (a recorded failure, never a guess).

    Not `evalsuite.extraction.letter_choice`, which reads the vCoT answers' letters A-E."""
    text = _IRAVEN_EMPHASIS.sub("", answer)  # markdown: "**C**"
    m = _IRAVEN_LEADING.search(text) or _IRAVEN_LONE_LOWER.search(text) or _IRAVEN_ANSWER_IS.search(text)
    return IRAVEN_LETTERS.index(m.group(1).upper()) if m else None


_IRAVEN_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def iraven_judgement(answer: str) -> bool | None:
    """The yes/no a candidate's reply starts with: True (yes), False (no), None (neither: unreadable)."""
    m = _IRAVEN_YES_NO.match(answer)
    return None if m is None else m.group(1).lower() == "yes"


def iraven_best_margin(margins: list[float]) -> int:
    """The candidate judged most likely to fit: the largest log P(yes.) - log P(no.), ties to the lowest index."""
    if len(margins) != len(IRAVEN_LETTERS):
        raise ValueError(f"need one margin per candidate ({len(IRAVEN_LETTERS)}), got {len(margins)}")
    return max(range(len(margins)), key=lambda i: (margins[i], -i))


def iraven_single_yes(judgements: list[bool | None]) -> int | None:
    """The candidate whose reply said yes when exactly one did; else None (a recorded failure).

    Generated replies carry no degree of belief, so none, several, or unreadable-only yeses cannot be
    ranked: the puzzle is counted as failed rather than guessed.
    """
    yes = [i for i, j in enumerate(judgements) if j is True]
    return yes[0] if len(yes) == 1 else None
