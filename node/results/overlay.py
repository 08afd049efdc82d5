"""Boxes and labels drawn into the displayed image, for the Secondary Capture and previews.

A viewer that shows neither SR regions nor GSPS graphics still shows pixels, so the Secondary
Capture carries the findings burned in. The grey levels are those a radiologist would see
(:func:`model.preprocess.pixels_for_display`: modality LUT, VOI window, MONOCHROME1 inverted),
the boxes and labels are drawn in one colour that stands out on grey, with dark text on a
filled tag so the label reads on bright bone and dark lung alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from model.preprocess import pixels_for_display
from node.results.common import ImageFinding, check_findings

MAX_SIDE = 2048  # longest side of a rendering; a 3000 px plate is halved, bytes quartered
BOX_COLOUR = (255, 200, 0)  # amber: not a grey level, visible on black and on white
TEXT_COLOUR = (0, 0, 0)


def output_shape(rows: int, columns: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of a rendering: the source's own, or scaled to ``max_side``."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def render_display(source: Dataset, *, max_side: int = MAX_SIDE) -> np.ndarray:
    """The displayed source as (rows, columns) uint8, 0 black, 255 white, shrunk to fit
    ``max_side`` with an antialiasing filter."""
    display = pixels_for_display(source)
    grey = np.rint(np.clip(display, 0.0, 1.0) * 255.0).astype(np.uint8)
    rows, columns = output_shape(*grey.shape, max_side=max_side)
    if (rows, columns) == grey.shape:
        return grey
    image = Image.fromarray(grey).resize((columns, rows), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def render_overlay(source: Dataset, findings: Sequence[ImageFinding], *,
                   max_side: int = MAX_SIDE) -> np.ndarray:
    """The displayed source as (rows, columns, 3) uint8 RGB with each finding's box outlined
    and labelled ("Pneumothorax 87%"); ``Image.fromarray`` of it writes a PNG preview.

    Boxes are in source pixel coordinates ((0, 0) the top-left corner of the first pixel);
    the outline covers the pixels the box covers, drawn inwards from its edge.

    Raises
    ------
    model.preprocess.UnsupportedImage
        When the source's pixels cannot be decoded or displayed (a ``ValueError``).
    """
    findings = check_findings([source], findings)
    grey = render_display(source, max_side=max_side)
    image = Image.fromarray(grey).convert("RGB")
    rows, columns = grey.shape
    scale_x, scale_y = columns / source.Columns, rows / source.Rows
    line_width = max(2, round(max(rows, columns) / 400))
    font_size = max(12, round(max(rows, columns) / 50))
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[int, int, int, int]] = []
    for item in findings:
        x1, y1, x2, y2 = item.box
        left = min(columns - 1, math.floor(x1 * scale_x))
        top = min(rows - 1, math.floor(y1 * scale_y))
        right = max(left, min(columns - 1, math.ceil(x2 * scale_x) - 1))
        bottom = max(top, min(rows - 1, math.ceil(y2 * scale_y) - 1))
        draw.rectangle((left, top, right, bottom), outline=BOX_COLOUR, width=line_width)
        _draw_label(draw, item.label, font, (left, top), line_width, (rows, columns), placed)
    return np.asarray(image, dtype=np.uint8)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _draw_label(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont,
                corner: tuple[int, int], line_width: int, shape: tuple[int, int],
                placed: list[tuple[int, int, int, int]]) -> None:
    """A filled tag above the box's top-left corner, or just inside the box when the box
    touches the top of the image; shifted left when it would leave the image, and moved
    up (or down) past tags already ``placed``, so that nearby findings stay readable."""
    rows, columns = shape
    text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, line_width)
    width = text_right - text_left + 2 * pad
    height = text_bottom - text_top + 2 * pad
    x, y = corner
    y = y - height if y - height >= 0 else y + line_width
    x = max(0, min(x, columns - width))
    y = max(0, min(y, rows - height))
    for step in range(len(placed) + 1):
        for candidate in (y - step * height, y + step * height):
            tag = (x, candidate, x + width - 1, candidate + height - 1)
            if 0 <= candidate <= rows - height and not any(_overlaps(tag, p) for p in placed):
                y = candidate
                break
        else:
            continue
        break
    placed.append((x, y, x + width - 1, y + height - 1))
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=BOX_COLOUR)
    draw.text((x + pad - text_left, y + pad - text_top), text, fill=TEXT_COLOUR, font=font)
