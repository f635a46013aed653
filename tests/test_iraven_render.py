"""Rendering, checked on pixels: placement, fill, outline, layering, and the reference images."""


import numpy as np

from evalsuite.benchmarks.iraven import load_reference, render_panel
from evalsuite.benchmarks.iraven.attributes import ComponentState, Entity, Panel

CIRCLE, SQUARE, TRIANGLE = 5, 2, 1
BLACK, WHITE = 9, 0  # color levels


def panel(layout, entities, structure="Singleton", name="Grid", uniform=False):
    return Panel(structure, [ComponentState(name, layout, uniform, entities)])


def dark(img, thr=128):
    return img < thr


def test_filled_dark_circle_in_the_centre():
    img = render_panel(panel("Center_Single", [Entity(0, CIRCLE, 3, BLACK, 3)]))
    assert img.shape == (160, 160) and img.dtype == np.uint8
    assert img[75:86, 75:86].max() < 20           # filled black at the centre
    for y, x in [(0, 0), (0, 159), (159, 0), (159, 159), (5, 80)]:
        assert img[y, x] == 255                   # white background
    ys, xs = np.nonzero(dark(img))
    # Radius int(80 * 0.7) = 56, plus the 1 px outline.
    assert abs((xs.max() - xs.min()) / 2 - 57) <= 1 and abs((ys.max() - ys.min()) / 2 - 57) <= 1
    assert abs(xs.mean() - 80) < 1 and abs(ys.mean() - 80) < 1


def test_fill_grey_and_white_shapes_are_outlines_only():
    grey = render_panel(panel("Center_Single", [Entity(0, SQUARE, 4, 3, 3)]))
    assert grey[80, 80] == 168                     # color level 3 -> grey 168
    white = render_panel(panel("Center_Single", [Entity(0, SQUARE, 4, WHITE, 3)]))
    assert white[80, 80] == 255                    # not filled
    # Square half side int(80 * 0.8 / sqrt 2) = 45: outline at 80 +/- 45.
    assert white[80, 35] == 0 and white[80, 125] == 0 and white[35, 80] == 0
    assert white[80, 30] == 255 and white[80, 130] == 255


def test_distribute_four_has_one_shape_per_quadrant():
    ents = [Entity(s, TRIANGLE + s, 2, 5, 3) for s in range(4)]
    img = render_panel(panel("Distribute_Four", ents))
    quads = [img[:80, :80], img[:80, 80:], img[80:, :80], img[80:, 80:]]
    for q in quads:
        assert dark(q, 250).sum() > 100
    # Nothing strays onto the dividing lines between the slots.
    assert img[79:81, :].min() == 255 and img[:, 79:81].min() == 255
    # Removing one entity empties exactly its quadrant.
    img3 = render_panel(panel("Distribute_Four", ents[:3]))
    assert img3[80:, 80:].min() == 255 and dark(img3[80:, :80], 250).sum() > 100


def test_rotation_turns_the_shape():
    up = render_panel(panel("Center_Single", [Entity(0, TRIANGLE, 4, BLACK, 3)]))      # 0 deg
    down = render_panel(panel("Center_Single", [Entity(0, TRIANGLE, 4, BLACK, 7)]))    # 180 deg
    # Upright triangle: apex on top, so more ink in the lower half; rotated: the reverse.
    assert dark(up[80:]).sum() > dark(up[:80]).sum()
    assert dark(down[:80]).sum() > dark(down[80:]).sum()
    # A half turn about the centre pixel (row 80) maps row y to row 160 - y and, for this
    # left-right symmetric shape, is exactly a vertical flip.
    assert np.array_equal(down[1:], up[::-1][:-1])


def test_in_out_draws_outer_first_and_divider_lines():
    out_in = Panel("Out_In", [
        ComponentState("Out", "Out_Center_Single", False, [Entity(0, SQUARE, 5, WHITE, 3)]),
        ComponentState("In", "In_Center_Single", False, [Entity(0, CIRCLE, 5, BLACK, 3)]),
    ])
    img = render_panel(out_in)
    assert img[80, 80] < 20                        # inner black circle on top
    assert img[80, 115] == 255 and img[80, 29] < 50  # white outer square: only its outline
    lr = Panel("Left_Right", [
        ComponentState("Left", "Left_Center_Single", False, [Entity(0, CIRCLE, 2, BLACK, 3)]),
        ComponentState("Right", "Right_Center_Single", False, [Entity(0, CIRCLE, 2, WHITE, 3)]),
    ])
    img = render_panel(lr)
    assert (img[:, 80] == 0).all()                 # the Left_Right divider
    assert img[80, 40] < 20 and img[80, 120] == 255
    ud = render_panel(Panel("Up_Down", [
        ComponentState("Up", "Up_Center_Single", False, [Entity(0, CIRCLE, 2, BLACK, 3)]),
        ComponentState("Down", "Down_Center_Single", False, [Entity(0, CIRCLE, 2, BLACK, 3)]),
    ]))
    assert (ud[80, :] == 0).all() and ud[40, 80] < 20 and ud[120, 80] < 20


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_matches_the_original_renderer_on_reference_panels(iraven_reference):
    """The original drew with OpenCV, so pixels differ at edges; shapes must coincide."""
    items = load_reference(iraven_reference / "answers.json", with_images=True)
    all_ious = []
    for key, item in items.items():
        for i, p in enumerate(item.panels):
            mine, ref = render_panel(p), item.image[i]
            value = iou(mine < 255, ref < 255)
            all_ious.append(value)
            if i == 8 + item.target:
                assert value > 0.6, (key, value)
    assert np.mean(all_ious) > 0.9
    # Grey levels agree too: our rendering of each reference answer is closer (mean
    # absolute difference) to the original's answer image than any other candidate is.
    for key, item in items.items():
        ref_answer = item.image[8 + item.target].astype(int)
        dist = [np.abs(render_panel(c).astype(int) - ref_answer).mean() for c in item.candidates]
        assert int(np.argmin(dist)) == item.target, (key, dist)
