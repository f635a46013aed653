"""The one resize rule for images and frames: at most `max_pixels` pixels, aspect kept, never upsampled.

Shards are built with it (real sources), the trainer applies it to what it reads from shards, and the
evaluation to the frames it decodes, each with the `max_pixels` it was given (recorded in the
manifest, `run.json` and `metrics.json`). An image already within the budget passes untouched, so
applying the rule again with the same budget changes nothing, and a smaller budget downstream
shrinks further. What the family's processor does next (Qwen's rounding to multiples of 28,
LLaVA's resize to its tower's input) is the model's own and is not this rule's business; the rule
keeps the toolkit from adding a resize of its own on top, and from enlarging small frames.
"""

from __future__ import annotations

import math

from PIL import Image


def fit_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """(width, height) after the rule: unchanged within the budget, else scaled down to fit it."""
    if not max_pixels or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    # A side held at one pixel (extreme aspect ratios) leaves the whole budget to the other.
    return (min(w, max_pixels // h), h) if w >= h else (w, min(h, max_pixels // w))


def fit(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """The image under the rule (bicubic when it shrinks; the same object when it already fits)."""
    size = fit_size(image.width, image.height, max_pixels)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def check_max_pixels(value, where: str) -> int | None:
    """`value` as a pixel budget: None (no limit) or an int >= 64; a clear error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 64:
        raise ValueError(f"{where}: max_pixels must be an integer of at least 64 (e.g. 200704 = 448*448) or null "
                         f"for no limit, got {value!r}")
    return value
