"""Pixels for scenes: flat shapes on a light-grey canvas, drawn with PIL.ImageDraw only.

Rendering is a pure function of (scene, frame, image size): no randomness, no anti-aliasing, so the
same arguments always give byte-identical images. Shapes are drawn with their centre at the object
position and their extent set by the radius, which keeps each object inside its grid cell at any
image size (64 px for the tiny models, 336 px and up for real ones).
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image, ImageDraw

from .scenes import BACKGROUND, COLOURS, ObjState, Scene


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of the polygonal shapes (None for the circle)."""
    if shape == "square":
        h = r * 0.85  # a square of half-side r would look much bigger than a circle of radius r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, state: ObjState, image_size: int) -> None:
    """Draw one visible object state onto a canvas of `image_size` pixels."""
    cx, cy, r = state.x * image_size, state.y * image_size, state.radius * image_size
    fill = COLOURS[state.colour]
    points = _polygon(state.shape, cx, cy, r)
    if points is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(points, fill=fill)


def render_frame(scene: Scene, t: int, image_size: int = 64) -> Image.Image:
    """Frame `t` of `scene` as an `image_size` x `image_size` RGB image."""
    if image_size < 8:
        raise ValueError("image_size must be at least 8 pixels")
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for state in scene.state(t):
        if state.visible:
            draw_object(draw, state, image_size)
    return img


def render_frames(scene: Scene, frames: Iterable[int] | None = None, image_size: int = 64) -> list[Image.Image]:
    """Several frames (all of them by default), in the order given."""
    indices = range(scene.n_frames) if frames is None else frames
    return [render_frame(scene, t, image_size) for t in indices]
