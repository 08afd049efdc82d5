"""Where the label of each finding goes, so that no label hides what any label marks.

One pure function, :func:`layout_labels`, decides for the burned-in Secondary Capture and for
the GSPS alike, so both show the same labels in the same places. What it guarantees, for any
boxes: no two labels overlap, no label overlaps any box (its own or another's: a label never
covers what it marks), and every label lies inside the canvas, which is the image unless
nothing fits there (see below).

The rule, in the order it is tried:

1. Each finding's full label ("Nodule 41%") just outside its box, at most one label height
   away: above (left-aligned with the box), below, left, right, nearest first; and nearer
   its own box than any other by a label height, or it would read as the other's label.
2. Where no such spot is free (crowded boxes, a box at the edge), a numbered tag ("1") at
   the free spot nearest the box, and a legend line "1 Nodule 41%" in a free area nearest
   a corner of the image.
3. Where no free area holds the legend (boxes filling the image), the canvas grows by a
   strip on the right that holds it; a finding for which no tag fits anywhere is listed in
   the legend without a number.

Text size: the font's em is ``max(14, ceil(longer side / 60))`` pixels of the image it is
laid out on: at least 14 px at natural size, and at least 16.7 screen px when a viewer fits
the image's longer side into 1,000 px (a 2,500 px plate: 42 px em, 16.8 px on screen), over
the ~12 px below which labels stop being readable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Rect = tuple[float, float, float, float]  # x1, y1, x2, y2; (0, 0) the top-left image corner
MIN_FONT_PX = 14
FONT_DIVISOR = 60


def font_px(width: int, height: int) -> int:
    """The em of label text on an image of this size, in its pixels (module docstring)."""
    return max(MIN_FONT_PX, math.ceil(max(width, height) / FONT_DIVISOR))


@dataclass(frozen=True)
class Tag:
    """One piece of text and the rectangle it fills: a finding's label, its numbered tag, or
    a legend line (``finding`` None)."""

    text: str
    rect: Rect
    finding: int | None


@dataclass(frozen=True)
class Layout:
    """The tags, and the canvas they lie on: (width, height), the image's own unless a
    legend strip was added on the right."""

    tags: tuple[Tag, ...]
    canvas: tuple[float, float]


def layout_labels(width: float, height: float, boxes: Sequence[Rect], labels: Sequence[str],
                  measure: Callable[[str], tuple[float, float]], gap: float) -> Layout:
    """Place one label per box by the rule of the module docstring.

    ``measure(text)`` gives the (width, height) of a tag holding ``text``; ``gap`` is the
    clear space kept between a tag and any box or other tag, so that a viewer's box stroke,
    drawn centred on the edge, does not touch the text either.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if not gap >= 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    boxes = [tuple(float(v) for v in box) for box in boxes]
    taken: list[Rect] = list(boxes)
    tags: list[Tag] = []
    pending = []
    for index, label in enumerate(labels):
        size = measure(label)
        rect = _nearest_free(size, taken, (width, height), gap, boxes, index,
                             reach=size[1] + gap)
        if rect is None:
            pending.append(index)
        else:
            tags.append(Tag(label, rect, index))
            taken.append(rect)
    lines = []
    for index in pending:
        number = str(sum(1 for line in lines if line[0]) + 1)
        rect = _nearest_free(measure(number), taken, (width, height), gap, boxes, index)
        if rect is None:
            lines.append(("", labels[index]))
        else:
            tags.append(Tag(number, rect, index))
            taken.append(rect)
            lines.append((number, labels[index]))
    lines.sort(key=lambda line: not line[0])  # numbered first, in order; stable
    texts = [f"{number} {label}" if number else label for number, label in lines]
    if not texts:
        return Layout(tuple(tags), (width, height))
    sizes = [measure(text) for text in texts]
    line_width = max(w for w, _ in sizes)
    line_height = max(h for _, h in sizes)
    block = (line_width, len(texts) * line_height + (len(texts) - 1) * gap)
    corner = _free_corner(block, taken, (width, height), gap)
    canvas = (width, height)
    if corner is None:  # the legend strip: image edge, gap, legend, gap
        corner = (width + gap, gap)
        canvas = (width + line_width + 2 * gap, max(height, block[1] + 2 * gap))
    x, y = corner
    for text in texts:
        tags.append(Tag(text, (x, y, x + line_width, y + line_height), None))
        y += line_height + gap
    return Layout(tuple(tags), canvas)


def _candidates(size: tuple[float, float], taken: Sequence[Rect],
                canvas: tuple[float, float], gap: float) -> np.ndarray:
    """Top-left corners worth trying, as an (n, 4) array of rectangles inside the canvas:
    flush against a canvas edge or ``gap`` in from it, ``gap`` away from a taken rectangle, or
    aligned with one.
    Any free spot can slide left and up until it meets one of these, so none is missed."""
    w, h = size
    xs = {0.0, gap, canvas[0] - w - gap, canvas[0] - w}
    ys = {0.0, gap, canvas[1] - h - gap, canvas[1] - h}
    for x1, y1, x2, y2 in taken:
        xs.update((x1 - gap - w, x2 + gap, x1, x2 - w))
        ys.update((y1 - gap - h, y2 + gap, y1, y2 - h))
    xs_ok = np.array(sorted(x for x in xs if 0 <= x <= canvas[0] - w))
    ys_ok = np.array(sorted(y for y in ys if 0 <= y <= canvas[1] - h))
    grid_x, grid_y = np.meshgrid(xs_ok, ys_ok)
    left, top = grid_x.ravel(), grid_y.ravel()
    return np.stack([left, top, left + w, top + h], axis=1)


def _free(rects: np.ndarray, taken: Sequence[Rect], gap: float) -> np.ndarray:
    """Which ``rects`` keep ``gap`` clear of every taken rectangle."""
    free = np.ones(len(rects), dtype=bool)
    for x1, y1, x2, y2 in taken:
        free &= ~((rects[:, 0] < x2 + gap) & (x1 < rects[:, 2] + gap)
                  & (rects[:, 1] < y2 + gap) & (y1 < rects[:, 3] + gap))
    return free


def _distance(rects: np.ndarray, box: Rect) -> np.ndarray:
    """Euclidean gap between each of ``rects`` and ``box`` (0 where they touch)."""
    x1, y1, x2, y2 = box
    dx = np.maximum(0.0, np.maximum(x1 - rects[:, 2], rects[:, 0] - x2))
    dy = np.maximum(0.0, np.maximum(y1 - rects[:, 3], rects[:, 1] - y2))
    return np.round(np.hypot(dx, dy), 6)


def _nearest_free(size: tuple[float, float], taken: Sequence[Rect], canvas: tuple[float, float],
                  gap: float, boxes: Sequence[Rect], index: int,
                  reach: float = math.inf) -> Rect | None:
    """The free rectangle of ``size`` nearest ``boxes[index]``, at most ``reach`` from it.

    A spot not clearly nearer its own box than any other (by a tag height) would read
    as the other box's label: with a finite ``reach`` (a full label) such spots are refused,
    otherwise (a numbered tag) they come last. Among equally near spots: above, below, left,
    right, then aligned with the box's top-left corner."""
    rects = _candidates(size, taken, canvas, gap)
    if len(rects) == 0:
        return None
    box = boxes[index]
    distance = _distance(rects, box)
    others = [_distance(rects, other) for i, other in enumerate(boxes) if i != index]
    ambiguous = (np.min(others, axis=0) <= distance + size[1] if others
                 else np.zeros(len(rects), dtype=bool))
    x1, y1, x2, y2 = box
    # Above or below only when at least half the tag (or box) spans the box: a tag that just
    # clips a corner reads as belonging to whatever lies beside it.
    w, h = size
    across = np.minimum(rects[:, 2], x2) - np.maximum(rects[:, 0], x1) >= min(w, x2 - x1) / 2
    along = np.minimum(rects[:, 3], y2) - np.maximum(rects[:, 1], y1) >= min(h, y2 - y1) / 2
    side = np.select([across & (rects[:, 3] <= y1), across & (rects[:, 1] >= y2),
                      along & (rects[:, 2] <= x1), along & (rects[:, 0] >= x2)],
                     [0, 1, 2, 3], default=4)
    offset = np.abs(rects[:, 0] - x1) + np.abs(rects[:, 1] - y1)
    ok = _free(rects, taken, gap) & (distance <= reach)
    if math.isfinite(reach):
        ok &= ~ambiguous
    if not ok.any():
        return None
    order = np.lexsort((offset, side, distance, ambiguous))
    best = order[ok[order]][0]
    return tuple(float(v) for v in rects[best])


def _free_corner(size: tuple[float, float], taken: Sequence[Rect],
                 canvas: tuple[float, float], gap: float) -> tuple[float, float] | None:
    """Top-left of a free rectangle of ``size`` nearest a corner of the canvas (``gap`` in
    from both edges where that is free), if any."""
    rects = _candidates(size, taken, canvas, gap)
    if len(rects) == 0:
        return None
    ok = _free(rects, taken, gap)
    if not ok.any():
        return None
    to_corner = (np.abs(np.minimum(rects[:, 0], canvas[0] - rects[:, 2]) - gap)
                 + np.abs(np.minimum(rects[:, 1], canvas[1] - rects[:, 3]) - gap))
    order = np.lexsort((rects[:, 0], rects[:, 1], to_corner))
    best = order[ok[order]][0]
    return float(rects[best, 0]), float(rects[best, 1])
