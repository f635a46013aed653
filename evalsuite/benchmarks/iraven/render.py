"""Draw symbolic panels as 160x160 grayscale images the way I-RAVEN looks.

Geometry and pipeline follow the original generator (which used OpenCV; this uses PIL,
so a few edge pixels differ):

* an entity sits at the centre of its slot box (truncated to whole pixels); with
  ``unit`` = half the shorter side of the box in pixels, its circumradius is
  ``unit * size`` (for the circle, the radius);
* triangle, pentagon and hexagon are regular polygons with a vertex on top, the square
  has axis-aligned sides; vertex offsets are truncated to whole pixels;
* each entity is drawn upright on its own layer, filled with the Color grey (level 0,
  white, means "not filled": only the outline, and what lies below shows through) and
  outlined in black, 3 px wide (OpenCV's thickness 2); the layer is then rotated about
  the entity's centre by its angle, counter-clockwise as displayed, with bilinear
  interpolation (which softens the edges of 45-degree rotations, as in the original);
* layers are stacked in component order, later ones on top (the outer shape of the
  in/out configurations first), then the Left_Right / Up_Down divider line is drawn.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .attributes import ANGLE_VALUES, COLOR_VALUES, SIZE_VALUES, TYPE_VALUES, Entity, Panel
from .layouts import slot_box

IMAGE_SIZE = 160
# OpenCV's "thickness 2" lines come out 3 px wide (1 px each side of the path).
LINE_WIDTH = 3
# Polygon vertex count and the direction (degrees, counter-clockwise from +x, as
# displayed) of the first vertex.
_POLYGONS = {"triangle": (3, 90.0), "square": (4, 45.0), "pentagon": (5, 90.0),
             "hexagon": (6, 90.0)}


def _vertices(cx: int, cy: int, radius: float, n: int, start_deg: float) -> list[tuple[int, int]]:
    """Upright regular n-gon around (cx, cy) with offsets truncated to whole pixels.

    Image y grows downwards, hence the minus sign on the vertical offset.
    """
    pts = []
    for i in range(n):
        a = math.radians(start_deg + 360.0 * i / n)
        pts.append((cx + int(radius * math.cos(a)), cy - int(radius * math.sin(a))))
    return pts


def entity_layer(entity: Entity, layout: str) -> np.ndarray:
    """One entity as an "ink" layer: 0 = nothing, 255 = black outline, else 255 - grey."""
    layer = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    kind = TYPE_VALUES[entity.type]
    if kind == "none":
        return np.asarray(layer)
    draw = ImageDraw.Draw(layer)
    y, x, h, w = slot_box(layout, entity.slot)
    cx, cy = int(x * IMAGE_SIZE), int(y * IMAGE_SIZE)
    unit = min(h, w) * IMAGE_SIZE / 2
    ink_fill = 255 - COLOR_VALUES[entity.color]
    fill = ink_fill if ink_fill > 0 else None  # white: outline only, transparent inside
    if kind == "circle":
        r = int(unit * SIZE_VALUES[entity.size])
        if fill is not None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        half = LINE_WIDTH // 2  # the ring straddles the radius
        draw.ellipse([cx - r - half, cy - r - half, cx + r + half, cy + r + half],
                     outline=255, width=LINE_WIDTH)
    else:
        n, start = _POLYGONS[kind]
        # The original sizes the square from the untruncated radius (half side
        # int(unit * size / sqrt 2)), the other polygons from the truncated one.
        radius = unit * SIZE_VALUES[entity.size]
        pts = _vertices(cx, cy, radius if kind == "square" else int(radius), n, start)
        if fill is not None:
            draw.polygon(pts, fill=fill)
        draw.line(pts + [pts[0]], fill=255, width=LINE_WIDTH, joint="curve")
    angle = ANGLE_VALUES[entity.angle]
    if angle % 360:
        # PIL puts pixel centres at +0.5; OpenCV's rotation centre is a pixel centre.
        layer = layer.rotate(angle, resample=Image.BILINEAR, center=(cx + 0.5, cy + 0.5))
    return np.asarray(layer)


def render_panel(panel: Panel) -> np.ndarray:
    """Render a panel to a (160, 160) uint8 image: white background, black outlines."""
    ink = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for comp in panel.components:
        for entity in comp.entities:
            layer = entity_layer(entity, comp.layout)
            # A later layer replaces what is below wherever it has any ink.
            ink = np.where(layer > 0, layer, ink)
    mid = int(0.5 * IMAGE_SIZE)
    if panel.structure == "Left_Right":
        ink[:, mid] = 255
    elif panel.structure == "Up_Down":
        ink[mid, :] = 255
    return (255 - ink).astype(np.uint8)


def render_panels(panels: list[Panel]) -> np.ndarray:
    """Render a list of panels to an (N, 160, 160) uint8 stack."""
    return np.stack([render_panel(p) for p in panels]).astype(np.uint8)


def contact_sheet(image: np.ndarray, columns: int = 4, gap: int = 4) -> np.ndarray:
    """Tile a (N, 160, 160) stack into one image (for looking at puzzles)."""
    n = image.shape[0]
    rows = math.ceil(n / columns)
    size = image.shape[1]
    sheet = np.full((rows * (size + gap) - gap, columns * (size + gap) - gap), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = image[i]
    return sheet
