"""How an I-RAVEN puzzle is shown to a VLM: the images, the prompt text, and reading the answer back.

Three layouts (`--iraven-layout`):

    composite   one image: the 8 context panels as a 3x3 grid whose last cell shows "?", and below
                it the 8 candidates in two rows of four, each under its letter A-H. The image is
                square and resized to the evaluated model's own input size, so the processor does
                not squash or crop it.
    separate    16 images: the 8 context panels in reading order, then "A:" image ... "H:" image.
    candidates  eight prompts, one per candidate: the full 3x3 matrix with that candidate as the
                ninth panel, as 9 images in reading order (each panel one image at the model's own
                input size), then a yes/no question: `CANDIDATE_QUESTION`.

composite and separate are answered with the letter alone: loglik scores the assistant turns "A".."H",
generate reads the letter out of the reply (a reply without one is a recorded failure). They suit
models with a real input size; a small model (the tiny test models read 64 px) cannot resolve eleven-pixel
panels in the composite, and no text it was trained on ever answered with a letter A-H, so its answers
pile up on one letter. `candidates` asks instead a question in the form the base stage teaches (lower
case, answered "yes." or "no.", `JUDGEMENTS`) about panels the model sees at full size; each candidate
is judged on its own and the task compares the eight judgements (`evalsuite.tasks.iraven`).

`RAVEN_HASH` changes with any template here and is part of the task's settings.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evalsuite.config import IRAVEN_LAYOUTS

LETTERS = "ABCDEFGH"
LAYOUTS = IRAVEN_LAYOUTS  # declared once, where `--iraven-layout` is checked
COMPOSITE = ("The image shows a 3x3 matrix of panels that follow hidden rules along the rows; its last panel is "
             "missing and marked with '?'. Below the matrix are eight candidate panels labelled A to H. "
             "Which candidate completes the matrix? Answer with the letter only.")
SEPARATE_CONTEXT = "These are the first eight panels of a 3x3 matrix, row by row; the ninth panel is missing:\n"
SEPARATE_CANDIDATES = "\nThese are the eight candidates for the missing panel:\n"
SEPARATE_QUESTION = "\nWhich candidate completes the matrix? Answer with the letter only."
CANDIDATE_QUESTION = "do these nine panels, row by row, follow the same rules? answer yes or no."
JUDGEMENTS = ("yes.", "no.")
"""The assistant answers of the candidates layout, as the base stage's yes/no questions are answered."""
RAVEN_HASH = hashlib.sha256("\x00".join([COMPOSITE, SEPARATE_CONTEXT, SEPARATE_CANDIDATES, SEPARATE_QUESTION,
                                         CANDIDATE_QUESTION, *JUDGEMENTS, "layout-v2"]).encode()).hexdigest()[:12]

PANEL, GAP, LABEL = 160, 10, 44  # native I-RAVEN panel size; spacing and letter band in the same pixels
DYNAMIC_SIZE = 448  # for processors without a fixed input size (Qwen2-VL's min/max pixels)

Box = tuple[int, int, int, int]  # left, top, right, bottom


def composite_layout() -> dict:
    """Boxes of the square composite at native resolution: `cells` (9), `candidates` (8), `labels` (8)."""
    width = 4 * PANEL + 3 * GAP
    grid_w = 3 * PANEL + 2 * GAP
    cand_top = GAP + grid_w + 2 * GAP  # below the grid and a separating rule
    height = cand_top + 2 * (LABEL + PANEL + GAP)
    side = max(width + 2 * GAP, height)
    x0 = (side - width) // 2  # centre the content on the square canvas
    gx = x0 + (width - grid_w) // 2
    cells = [(gx + c * (PANEL + GAP), GAP + r * (PANEL + GAP)) for r in range(3) for c in range(3)]
    cands = [(x0 + c * (PANEL + GAP), cand_top + r * (LABEL + PANEL + GAP)) for r in range(2) for c in range(4)]
    return {"side": side, "rule_y": GAP + grid_w + GAP,
            "cells": [(x, y, x + PANEL, y + PANEL) for x, y in cells],
            "labels": [(x, y, x + PANEL, y + LABEL) for x, y in cands],
            "candidates": [(x, y + LABEL, x + PANEL, y + LABEL + PANEL) for x, y in cands]}


def _centered(draw: ImageDraw.ImageDraw, box: Box, text: str, size: int) -> None:
    font = ImageFont.load_default(size=size)
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=0, font=font, anchor="mm")


def render_composite(image: np.ndarray, size: int | None = None) -> Image.Image:
    """The composite RGB image of one puzzle's (16, 160, 160) panels, `size` x `size` (None: native)."""
    lay = composite_layout()
    canvas = Image.new("L", (lay["side"], lay["side"]), 255)
    draw = ImageDraw.Draw(canvas)
    for box, panel in zip(lay["cells"] + lay["candidates"], list(image[:8]) + [None] + list(image[8:])):
        if panel is not None:  # None: the missing ninth cell, left blank for the "?"
            canvas.paste(Image.fromarray(panel), box[:2])
    # Frames make the cells readable as a grid after the downscale (the panels have no border).
    for box in lay["cells"] + lay["candidates"]:
        draw.rectangle(box, outline=0, width=3)
    _centered(draw, lay["cells"][8], "?", PANEL * 2 // 3)
    draw.line([(GAP, lay["rule_y"]), (lay["side"] - GAP, lay["rule_y"])], fill=0, width=3)
    for box, letter in zip(lay["labels"], LETTERS):
        _centered(draw, box, letter, LABEL - 6)
    if size is not None and size != lay["side"]:
        canvas = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return canvas.convert("RGB")


def separate_images(image: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(p).convert("RGB") for p in image]


def candidate_images(image: np.ndarray, candidate: int, size: int | None = None) -> list[Image.Image]:
    """The 9 RGB panels of the matrix completed by `candidate` (0..7), in reading order, candidate last.

    `image` is one puzzle's (16, H, W) panels (8 context, then 8 candidates); each panel becomes one
    `size` x `size` image (None: native), so the processor neither squashes nor crops it.
    """
    if not 0 <= candidate < len(LETTERS):
        raise ValueError(f"candidate must be 0..{len(LETTERS) - 1}, got {candidate}")
    panels = [Image.fromarray(p) for p in list(image[:8]) + [image[8 + candidate]]]
    if size is not None:
        panels = [p if p.size == (size, size) else p.resize((size, size), Image.Resampling.LANCZOS) for p in panels]
    return [p.convert("RGB") for p in panels]


def user_content(layout: str) -> list[dict]:
    """The user turn (image markers and text) of one puzzle in `layout` (of one candidate's prompt for
    `candidates`: every candidate's prompt has the same text, only its ninth image differs)."""
    if layout == "composite":
        return [{"type": "image"}, {"type": "text", "text": COMPOSITE}]
    if layout == "candidates":
        return [{"type": "image"} for _ in range(9)] + [{"type": "text", "text": CANDIDATE_QUESTION}]
    if layout != "separate":
        raise ValueError(f"unknown I-RAVEN layout {layout!r}; known: {', '.join(LAYOUTS)}")
    content = [{"type": "text", "text": SEPARATE_CONTEXT}] + [{"type": "image"} for _ in range(8)]
    content.append({"type": "text", "text": SEPARATE_CANDIDATES})
    for letter in LETTERS:
        content += [{"type": "text", "text": f"{letter}: "}, {"type": "image"}]
    return content + [{"type": "text", "text": SEPARATE_QUESTION}]


def model_image_size(processor) -> int:
    """The square input size of the model's image processor (crop, fixed height, shortest edge).

    Processors with a pixel budget instead of a size (Qwen2-VL: `size` holds min/max *pixels*)
    get DYNAMIC_SIZE clamped into their budget.
    """
    ip = getattr(processor, "image_processor", processor)

    def field(d, key):
        return (d.get(key) if isinstance(d, dict) else getattr(d, key, None)) if d is not None else None

    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    if getattr(ip, "merge_size", None) is not None:  # a pixel budget, not an edge
        low, high = field(size, "shortest_edge") or 0, field(size, "longest_edge") or DYNAMIC_SIZE ** 2
        return int(min(max(DYNAMIC_SIZE, math.isqrt(low)), math.isqrt(high)))
    if getattr(ip, "do_center_crop", False) and field(crop, "height"):
        return int(field(crop, "height"))
    return int(field(size, "height") or field(size, "shortest_edge") or DYNAMIC_SIZE)


# "C", "(C)", "C.", "C:" at the start, or "answer is C" / "option: (C)" anywhere; not "A red square".
_LEADING = re.compile(r"^\s*[\(\[]?([A-H])(?:[\)\]]|[.:,](?!\w)|\s*$)")
_ANSWER_IS = re.compile(r"\b(?i:answer|option|candidate|choice)\s*(?:is|:|=|-)?\s*[\(\[]?([A-H])\b(?![a-z'])")


def letter_choice(answer: str) -> int | None:
    """Index 0..7 of the letter the reply chose, or None (a recorded failure, never a guess)."""
    m = _LEADING.search(answer) or _ANSWER_IS.search(answer)
    return LETTERS.index(m.group(1)) if m else None


_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def judgement(answer: str) -> bool | None:
    """The yes/no a candidate's reply starts with: True (yes), False (no), None (neither: unreadable)."""
    m = _YES_NO.match(answer)
    return None if m is None else m.group(1).lower() == "yes"


def best_margin(margins: list[float]) -> int:
    """The candidate judged most likely to fit: the largest log P(yes.) - log P(no.), ties to the lowest index."""
    if len(margins) != len(LETTERS):
        raise ValueError(f"need one margin per candidate ({len(LETTERS)}), got {len(margins)}")
    return max(range(len(margins)), key=lambda i: (margins[i], -i))


def single_yes(judgements: list[bool | None]) -> int | None:
    """The candidate whose reply said yes when exactly one did; else None (a recorded failure).

    Generated replies carry no degree of belief, so none, several, or unreadable-only yeses cannot be
    ranked: the puzzle is counted as failed rather than guessed.
    """
    yes = [i for i, j in enumerate(judgements) if j is True]
    return yes[0] if len(yes) == 1 else None
