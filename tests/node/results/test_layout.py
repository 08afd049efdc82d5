"""Label layout: no label covers another label or any box, on the cases that broke it before.

Every case goes through :func:`node.results.overlay.label_layout`, the call that the burned-in
Secondary Capture and the GSPS share, with the font they draw.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from node.results.layout import font_px, layout_labels
from node.results.overlay import label_layout


def touches(a, b) -> bool:
    """Closed rectangles meet (touching edges count): stricter than the layout needs."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def assert_clear(layout, width, height, boxes, labels) -> None:
    """What a reader needs: labels apart, off every box, on the canvas, each finding named."""
    canvas_width, canvas_height = layout.canvas
    assert canvas_width >= width and canvas_height >= height
    rects = [tag.rect for tag in layout.tags]
    for tag in layout.tags:
        x1, y1, x2, y2 = tag.rect
        assert 0 <= x1 < x2 <= canvas_width and 0 <= y1 < y2 <= canvas_height, tag
        hits = [i for i, box in enumerate(boxes) if touches(tag.rect, box)]
        assert not hits, f"{tag.text!r} at {tag.rect} covers box(es) {hits}"
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not touches(a, b), f"labels at {a} and {b} overlap"
    legend = [tag.text for tag in layout.tags if tag.finding is None]
    for index, label in enumerate(labels):
        mine = [tag.text for tag in layout.tags if tag.finding == index]
        assert len(mine) <= 1
        if mine and mine[0] == label:
            continue
        named = f"{mine[0]} {label}" if mine else label
        assert named in legend, f"{label!r} is neither beside its box nor in the legend {legend}"
    if canvas_width > width:  # a strip only when the image had no room
        assert all(tag.rect[0] >= width for tag in layout.tags if tag.finding is None)


def full_labels(layout) -> dict[int, str]:
    return {tag.finding: tag.text for tag in layout.tags if tag.finding is not None}


def test_reported_case_mass_with_atelectasis_below_and_a_small_nodule():
    """The real CR's size; before, Atelectasis's label lay on the Mass box and the Nodule's
    label covered the nodule."""
    width, height = 1841, 1955
    boxes = [(1000, 500, 1300, 800), (950, 820, 1350, 1000), (1310, 560, 1350, 600),
             (300, 400, 900, 1200), (320, 1150, 880, 1400)]
    labels = ["Mass 72%", "Atelectasis 55%", "Nodule 41%", "Infiltration 66%",
              "Atelectasis 38%"]

    layout = label_layout(width, height, boxes, labels)

    assert_clear(layout, width, height, boxes, labels)
    assert layout.canvas == (width, height)
    assert full_labels(layout) == dict(enumerate(labels))  # room for every full label
    for tag in layout.tags:  # each label is clearly nearer its own box than any other
        own = distance(tag.rect, boxes[tag.finding])
        assert own <= 2 * font_px(width, height)
        assert all(distance(tag.rect, box) > own
                   for i, box in enumerate(boxes) if i != tag.finding), tag


def distance(a, b) -> float:
    dx = max(0.0, b[0] - a[2], a[0] - b[2])
    dy = max(0.0, b[1] - a[3], a[1] - b[3])
    return float(np.hypot(dx, dy))


def test_many_overlapping_boxes_get_numbers_and_a_legend():
    width, height = 512, 512
    rng = np.random.default_rng(3)
    boxes = []
    for _ in range(12):  # a pile of boxes around the centre
        x, y = rng.uniform(150, 300, size=2)
        boxes.append((x, y, x + rng.uniform(30, 120), y + rng.uniform(30, 120)))
    labels = [f"Nodule {50 + i}%" for i in range(12)]

    layout = label_layout(width, height, boxes, labels)

    assert_clear(layout, width, height, boxes, labels)
    numbers = [tag.text for tag in layout.tags if tag.finding is not None
               and tag.text.isdigit()]
    assert numbers and numbers == [str(n) for n in range(1, len(numbers) + 1)]
    assert layout.canvas == (width, height)  # the legend found room in the image


def test_boxes_touching_each_edge_keep_their_labels_inside():
    width, height = 800, 600
    boxes = [(300, 0, 420, 80), (300, 520, 420, 600), (0, 250, 90, 350), (710, 250, 800, 350),
             (0, 0, 60, 60), (740, 540, 800, 600)]
    labels = ["Pneumothorax 87%", "Pleural effusion 76%", "Mass 65%", "Nodule 54%",
              "Nodule 43%", "Atelectasis 32%"]

    layout = label_layout(width, height, boxes, labels)

    assert_clear(layout, width, height, boxes, labels)
    assert layout.canvas == (width, height)
    assert full_labels(layout) == dict(enumerate(labels))


def test_box_covering_the_whole_image_puts_the_legend_in_a_strip():
    width, height = 320, 256
    boxes = [(0, 0, 320, 256), (100, 100, 140, 140)]
    labels = ["Cardiomegaly 91%", "Nodule 41%"]

    layout = label_layout(width, height, boxes, labels)

    assert_clear(layout, width, height, boxes, labels)
    assert layout.canvas[0] > width
    assert all(tag.rect[0] >= width for tag in layout.tags)  # nothing on the image


def test_a_2500_by_2048_plate_crowded_and_readable_when_fitted_to_1000_px():
    width, height = 2500, 2048
    assert font_px(width, height) * 1000 / width >= 12  # screen px when fitted to 1,000
    assert font_px(320, 256) >= 12  # at natural size
    boxes = [(700, 500, 1100, 900), (1080, 880, 1500, 1200), (1120, 520, 1160, 560),
             (600, 1100, 1900, 1800), (1700, 300, 2400, 1000), (100, 100, 600, 1900),
             (1150, 560, 1200, 610), (1500, 1200, 1600, 1300)]
    labels = ["Mass 72%", "Atelectasis 55%", "Nodule 41%", "Cardiomegaly 91%",
              "Pleural effusion 33%", "Infiltration 66%", "Nodule 22%", "Mass 12%"]

    started = time.perf_counter()
    layout = label_layout(width, height, boxes, labels)
    elapsed = time.perf_counter() - started

    assert_clear(layout, width, height, boxes, labels)
    tag_height = min(tag.rect[3] - tag.rect[1] for tag in layout.tags)
    assert tag_height * 1000 / width >= 12
    assert elapsed < 2.0


@pytest.mark.parametrize("seed", range(60))
def test_random_boxes_never_hidden(seed):
    """Random sizes, counts and boxes (some tiny, some huge, overlapping, at the edges)."""
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(200, 2600)), int(rng.integers(200, 2600))
    boxes = []
    for _ in range(int(rng.integers(1, 16))):
        w = rng.uniform(3, width) ** rng.uniform(0.5, 1.0)
        h = rng.uniform(3, height) ** rng.uniform(0.5, 1.0)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append((x, y, x + w, y + h))
    labels = [f"Finding{i} {int(rng.integers(0, 100))}%" for i in range(len(boxes))]

    layout = label_layout(width, height, boxes, labels)

    assert_clear(layout, width, height, boxes, labels)


def test_layout_refuses_mismatched_inputs():
    def measure(text):
        return 10 * len(text), 12

    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        layout_labels(100, 100, [(0, 0, 5, 5), (6, 6, 9, 9)], ["a"], measure, 2)
    with pytest.raises(ValueError, match="image size"):
        layout_labels(0, 100, [], [], measure, 2)
