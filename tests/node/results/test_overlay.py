"""render_overlay: the displayed image with boxes and labels, for the SC and PNG previews."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.preprocess import pixels_for_display
from node.results import ImageFinding, render_overlay
from node.results.overlay import BOX_COLOUR, output_shape
from tests.node.results.conftest import FINDINGS


def test_without_findings_it_is_the_displayed_image_in_grey(phantom):
    source, _ = phantom

    plain = render_overlay(source, [])

    assert plain.dtype == np.uint8 and plain.shape == (source.Rows, source.Columns, 3)
    display = np.rint(pixels_for_display(source) * 255).astype(np.uint8)
    for channel in range(3):  # grey, with MONOCHROME1 already inverted: bone white
        assert np.array_equal(plain[..., channel], display)


def test_boxes_are_drawn_in_the_box_colour_and_write_a_png(phantom, tmp_path):
    source, findings = phantom

    pixels = render_overlay(source, findings)

    x1, y1, x2, _ = (int(v) for v in findings[0].box)
    assert tuple(pixels[y1 + 1, (x1 + x2) // 2]) == BOX_COLOUR  # on the top edge
    path = tmp_path / "preview.png"
    Image.fromarray(pixels).save(path)
    assert np.array_equal(np.asarray(Image.open(path)), pixels)


def test_label_reads_as_text_on_the_tag(phantom):
    source, _ = phantom
    finding = ImageFinding(source.SOPInstanceUID, FINDINGS["Mass"], 0.5, (100, 100, 140, 140))

    pixels = render_overlay(source, [finding])

    above = (pixels[:100] == BOX_COLOUR).all(axis=-1)  # the tag sits above the box
    rows, columns = np.nonzero(above)
    assert rows.max() == 99 and columns.min() == 100
    tag = pixels[rows.min():100, 100:columns.max() + 1]
    assert tag.shape[0] >= 12 and tag.shape[1] >= 6 * len(finding.label)
    assert (tag.max(axis=-1) < 80).sum() > 20  # dark text on the amber tag


def test_output_shape_keeps_aspect_and_caps_the_longer_side():
    assert output_shape(1955, 1841) == (1955, 1841)
    assert output_shape(3000, 2500) == (2048, 1707)
    assert output_shape(2500, 3000, max_side=1000) == (833, 1000)
    with pytest.raises(ValueError, match="max_side"):
        output_shape(10, 10, max_side=0)


def test_refuses_findings_of_another_image(phantom):
    source, _ = phantom
    stray = ImageFinding("1.2.3", FINDINGS["Mass"], 0.5, (1, 1, 5, 5))

    with pytest.raises(ValueError, match="not among the sources"):
        render_overlay(source, [stray])


def test_labels_of_nearby_findings_do_not_cover_each_other():
    from PIL import Image, ImageDraw, ImageFont

    from node.results.overlay import _draw_label, _overlaps

    draw = ImageDraw.Draw(Image.new("RGB", (400, 400)))
    font = ImageFont.load_default(size=14)
    placed: list[tuple[int, int, int, int]] = []
    for text in ("Nodule 8%", "Nodule 6%", "Nodule 5%"):  # three boxes at one spot
        _draw_label(draw, text, font, (200, 200), 2, (400, 400), placed)

    assert len(placed) == 3
    assert not any(_overlaps(a, b) for i, a in enumerate(placed) for b in placed[i + 1:])
