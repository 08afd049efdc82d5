"""render_overlay: the displayed image with boxes and labels, for the SC and PNG previews."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.preprocess import pixels_for_display
from node.results import ImageFinding, render_overlay
from node.results.overlay import BOX_COLOUR, output_shape, overlay_layout
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

    above = (pixels[:100] == BOX_COLOUR).all(axis=-1)  # the tag sits just above the box
    rows, columns = np.nonzero(above)
    assert 90 <= rows.max() < 100 - 1 and columns.min() == 100  # a gap, then the box
    tag = pixels[rows.min():rows.max() + 1, 100:columns.max() + 1]
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


def test_crowded_labels_leave_every_box_as_it_was(rg1):
    """The reported case on the real CR: a Mass with Atelectasis just below and a small
    nodule beside it. Inside each box, only box outlines change: no label is drawn there."""
    source, _ = rg1
    uid = source.SOPInstanceUID
    findings = [ImageFinding(uid, FINDINGS["Mass"], 0.72, (1000.0, 500.0, 1300.0, 800.0)),
                ImageFinding(uid, FINDINGS["Atelectasis"], 0.55, (950.0, 820.0, 1350.0, 1000.0)),
                ImageFinding(uid, FINDINGS["Nodule"], 0.41, (1310.0, 560.0, 1350.0, 600.0)),
                ImageFinding(uid, FINDINGS["Infiltration"], 0.66, (300.0, 400.0, 900.0, 1200.0))]

    pixels = render_overlay(source, findings)

    changed = np.any(pixels != render_overlay(source, []), axis=-1)
    outlines = np.zeros_like(changed)
    width = max(2, round(max(pixels.shape[:2]) / 400))
    for finding in findings:
        x1, y1, x2, y2 = (int(v) for v in finding.box)
        outlines[y1:y2, x1:x2] = True
        outlines[y1 + width:y2 - width, x1 + width:x2 - width] = False
    for finding in findings:
        x1, y1, x2, y2 = (int(v) for v in finding.box)
        inside = changed[y1:y2, x1:x2] & ~outlines[y1:y2, x1:x2]
        assert not inside.any(), f"a label is drawn inside the {finding.finding.label} box"
    tags = overlay_layout(source, findings).tags
    assert [tag.text for tag in tags] == [finding.label for finding in findings]
    for tag in tags:  # and each label is drawn where the layout put it
        x1, y1, x2, y2 = (round(v) for v in tag.rect)
        assert (pixels[y1:y2, x1:x2] == BOX_COLOUR).all(axis=-1).mean() > 0.5


def test_box_over_the_whole_image_widens_the_rendering_by_a_legend_strip(phantom):
    source, _ = phantom
    whole = ImageFinding(source.SOPInstanceUID, FINDINGS["Cardiomegaly"], 0.91,
                         (0.0, 0.0, float(source.Columns), float(source.Rows)))

    pixels = render_overlay(source, [whole])

    assert pixels.shape[0] == source.Rows and pixels.shape[1] > source.Columns
    strip = pixels[:, source.Columns:]
    assert (strip == BOX_COLOUR).all(axis=-1).any()  # the legend line's tag
    plain = render_overlay(source, [])
    rows, columns = slice(4, source.Rows - 4), slice(4, source.Columns - 4)
    assert np.array_equal(pixels[rows, columns], plain[rows, columns])  # inside the outline
