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
from node.results.layout import Layout, font_px, layout_labels

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


def label_font(width: int, height: int) -> ImageFont.FreeTypeFont:
    """The label font for an image of this size (:func:`node.results.layout.font_px`)."""
    return ImageFont.load_default(size=font_px(width, height))


def _tag_padding(font: ImageFont.FreeTypeFont) -> int:
    return max(2, round(font.size / 8))


def _text_band(font: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Top and bottom of ink over ascenders, digits and descenders, so every tag of one
    font has the same height whatever its letters."""
    _, top, _, bottom = font.getbbox("Ay%0|")
    return top, bottom


def label_layout(width: int, height: int, boxes: Sequence[Sequence[float]],
                 labels: Sequence[str]) -> Layout:
    """Labels laid out on an image of ``width`` x ``height`` pixels in the font this module
    draws, by :func:`node.results.layout.layout_labels`: the one call that the burned-in
    Secondary Capture and the GSPS share, so their labels agree."""
    font = label_font(width, height)
    pad = _tag_padding(font)
    top, bottom = _text_band(font)

    def measure(text: str) -> tuple[int, int]:
        return math.ceil(font.getlength(text)) + 2 * pad, bottom - top + 2 * pad

    gap = max(2, round(font.size / 6))
    return layout_labels(width, height, [tuple(box) for box in boxes], labels, measure, gap)


def _outlines(source: Dataset, findings: Sequence[ImageFinding],
              shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Each box as the first and last (column, row) pixels it covers in a rendering of
    ``shape``: the outline is drawn on them, inwards from the box's edge."""
    rows, columns = shape
    scale_x, scale_y = columns / source.Columns, rows / source.Rows
    outlines = []
    for item in findings:
        x1, y1, x2, y2 = item.box
        left = min(columns - 1, math.floor(x1 * scale_x))
        top = min(rows - 1, math.floor(y1 * scale_y))
        right = max(left, min(columns - 1, math.ceil(x2 * scale_x) - 1))
        bottom = max(top, min(rows - 1, math.ceil(y2 * scale_y) - 1))
        outlines.append((left, top, right, bottom))
    return outlines


def overlay_layout(source: Dataset, findings: Sequence[ImageFinding], *,
                   max_side: int = MAX_SIDE) -> Layout:
    """Where :func:`render_overlay` puts the labels, in the pixels of its rendering."""
    findings = check_findings([source], findings)
    rows, columns = output_shape(source.Rows, source.Columns, max_side)
    outlines = _outlines(source, findings, (rows, columns))
    return label_layout(columns, rows, [(x1, y1, x2 + 1, y2 + 1) for x1, y1, x2, y2 in outlines],
                        [item.label for item in findings])


def render_overlay(source: Dataset, findings: Sequence[ImageFinding], *,
                   max_side: int = MAX_SIDE) -> np.ndarray:
    """The displayed source as (rows, columns, 3) uint8 RGB with each finding's box outlined
    and labelled ("Pneumothorax 87%"); ``Image.fromarray`` of it writes a PNG preview.

    Boxes are in source pixel coordinates ((0, 0) the top-left corner of the first pixel);
    the outline covers the pixels the box covers, drawn inwards from its edge, and labels lie
    outside every box (:func:`label_layout`). When the boxes leave no room for the legend,
    the result is wider than the image by a black strip on the right that holds it.

    Raises
    ------
    model.preprocess.UnsupportedImage
        When the source's pixels cannot be decoded or displayed (a ``ValueError``).
    """
    findings = check_findings([source], findings)
    grey = render_display(source, max_side=max_side)
    rows, columns = grey.shape
    layout = overlay_layout(source, findings, max_side=max_side)
    canvas_width, canvas_height = (math.ceil(v) for v in layout.canvas)
    image = Image.new("RGB", (canvas_width, canvas_height))
    image.paste(Image.fromarray(grey).convert("RGB"))
    draw = ImageDraw.Draw(image)
    line_width = max(2, round(max(rows, columns) / 400))
    for outline in _outlines(source, findings, (rows, columns)):
        draw.rectangle(outline, outline=BOX_COLOUR, width=line_width)
    font = label_font(columns, rows)
    pad = _tag_padding(font)
    text_top, _ = _text_band(font)
    for tag in layout.tags:
        x1, y1, x2, y2 = (round(v) for v in tag.rect)
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=BOX_COLOUR)
        draw.text((x1 + pad, y1 + pad - text_top), tag.text, fill=TEXT_COLOUR, font=font)
    return np.asarray(image, dtype=np.uint8)
