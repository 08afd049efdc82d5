"""GSPS: boxes and labels over the untouched images, with the polarity and window kept."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.phantom import dx_dataset
from node.results import ImageFinding, build_presentation_state, presentation_groups
from node.results.overlay import overlay_layout
from tests.node.results.conftest import ALGORITHM, DEVICE, FINDINGS, second_image
from tests.node.results.test_layout import touches

GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
EXPECTED_SHAPE = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}


def referenced_uids(gsps) -> list[str]:
    return [image.ReferencedSOPInstanceUID
            for series in gsps.ReferencedSeriesSequence
            for image in series.ReferencedImageSequence]


def assert_annotation(annotation, source, findings: list[ImageFinding]) -> None:
    assert [ref.ReferencedSOPInstanceUID for ref in annotation.ReferencedImageSequence] == [
        source.SOPInstanceUID]
    assert annotation.GraphicLayer == "AI FINDINGS"
    boxes = annotation.GraphicObjectSequence
    assert len(boxes) == len(findings)
    for graphic, finding in zip(boxes, findings, strict=True):
        x1, y1, x2, y2 = finding.box
        assert graphic.GraphicType == "POLYLINE"
        assert graphic.GraphicAnnotationUnits == "PIXEL"
        assert graphic.NumberOfGraphicPoints == 5
        assert [float(v) for v in graphic.GraphicData] == pytest.approx(
            [x1, y1, x2, y1, x2, y2, x1, y2, x1, y1])
    texts = annotation.TextObjectSequence
    values = [text.UnformattedTextValue for text in texts]
    for finding in findings:  # beside its box, or numbered there and named in the legend
        label = f"{finding.finding.label} {round(finding.score * 100)}%"
        assert label in values or any(
            value.isdigit() and f"{value} {label}" in values for value in values), values
    rects = []
    for text in texts:
        assert text.BoundingBoxAnnotationUnits == "PIXEL"
        assert "AnchorPoint" not in text  # the box points at the finding; no leader line
        left, top = text.BoundingBoxTopLeftHandCorner
        right, bottom = text.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= source.Columns and 0 <= top < bottom <= source.Rows
        for finding in findings:
            assert not touches((left, top, right, bottom), finding.box), (
                f"{text.UnformattedTextValue!r} covers the {finding.finding.label} box")
        rects.append((left, top, right, bottom))
    for i, a in enumerate(rects):
        assert not any(touches(a, b) for b in rects[i + 1:]), "labels overlap"


def test_presentation_state_draws_each_finding_in_the_ai_layer(phantom, write_verified):
    source, findings = phantom

    gsps = write_verified(build_presentation_state([source], findings, DEVICE, ALGORITHM),
                          f"gsps-{source.PhotometricInterpretation}")

    assert gsps.SOPClassUID == GSPS_STORAGE
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    assert gsps.PatientID == source.PatientID
    assert gsps.DeviceUID == DEVICE.uid
    assert gsps.SeriesNumber == 9002
    assert gsps.PresentationLUTShape == EXPECTED_SHAPE[source.PhotometricInterpretation]
    layer = gsps.GraphicLayerSequence[0]
    assert layer.GraphicLayer == "AI FINDINGS"
    assert layer.GraphicLayerDescription
    assert referenced_uids(gsps) == [source.SOPInstanceUID]
    assert len(gsps.GraphicAnnotationSequence) == 1
    assert_annotation(gsps.GraphicAnnotationSequence[0], source, findings)
    window = gsps.SoftcopyVOILUTSequence[0]
    assert float(window.WindowCenter) == float(source.WindowCenter)
    assert float(window.WindowWidth) == float(source.WindowWidth)


def test_presentation_state_on_the_real_chest_cr(rg1, write_verified):
    source, findings = rg1

    gsps = write_verified(build_presentation_state([source], findings, DEVICE, ALGORITHM),
                          "rg1-gsps")

    assert gsps.PresentationLUTShape == "INVERSE"  # RG1 is MONOCHROME1
    assert_annotation(gsps.GraphicAnnotationSequence[0], source, findings)
    window = gsps.SoftcopyVOILUTSequence[0]
    assert (float(window.WindowCenter), float(window.WindowWidth)) == (15000.0, 30000.0)


def test_images_without_findings_are_still_referenced(phantom, write_verified):
    source, findings = phantom
    lateral = second_image(source, source.SOPInstanceUID + ".2")

    gsps = write_verified(build_presentation_state([source, lateral], findings, DEVICE,
                                                   ALGORITHM), "two-images-gsps")

    assert referenced_uids(gsps) == [source.SOPInstanceUID, lateral.SOPInstanceUID]
    assert len(gsps.GraphicAnnotationSequence) == 1  # only the image with findings
    assert_annotation(gsps.GraphicAnnotationSequence[0], source, findings)


def test_presentation_state_without_findings_still_presents_the_images(phantom, write_verified):
    source, _ = phantom

    gsps = write_verified(build_presentation_state([source], [], DEVICE, ALGORITHM), "empty")

    assert referenced_uids(gsps) == [source.SOPInstanceUID]
    assert "GraphicAnnotationSequence" not in gsps
    assert gsps.PresentationLUTShape == EXPECTED_SHAPE[source.PhotometricInterpretation]


def test_label_at_the_top_edge_stays_inside_the_image(phantom, write_verified):
    source, _ = phantom
    corner = ImageFinding(source.SOPInstanceUID, FINDINGS["Pneumothorax"], 0.5,
                          (source.Columns - 20.0, 0.0, float(source.Columns), 30.0))

    gsps = write_verified(build_presentation_state([source], [corner], DEVICE, ALGORITHM),
                          "corner")

    assert_annotation(gsps.GraphicAnnotationSequence[0], source, [corner])


def test_refuses_images_of_several_series(phantom):
    source, findings = phantom
    other = second_image(source, source.SOPInstanceUID + ".3")
    other.SeriesInstanceUID = source.SeriesInstanceUID + ".9"

    with pytest.raises(ValueError, match="one series"):
        build_presentation_state([source, other], findings, DEVICE, ALGORITHM)


def test_refuses_mixed_polarity(phantom):
    source, findings = phantom
    other = second_image(source, source.SOPInstanceUID + ".4")
    other.PhotometricInterpretation = ({"MONOCHROME1", "MONOCHROME2"}
                                       - {source.PhotometricInterpretation}).pop()

    with pytest.raises(ValueError, match="PhotometricInterpretation"):
        build_presentation_state([source, other], findings, DEVICE, ALGORITHM)


def test_refuses_images_of_different_sizes(phantom):
    source, findings = phantom
    other = second_image(source, source.SOPInstanceUID + ".5")
    other.Rows = source.Rows + 64  # a repeat exposure, collimated otherwise

    with pytest.raises(ValueError, match="one size"):
        build_presentation_state([source, other], findings, DEVICE, ALGORITHM)


def test_presentation_groups_split_what_one_gsps_cannot_hold(phantom, write_verified):
    """Same series: a smaller repeat, an image of the other polarity, one with
    another rescale, and a copy that fits with the first."""
    source, findings = phantom
    smaller = second_image(source, source.SOPInstanceUID + ".6")
    smaller.Rows, smaller.Columns = source.Rows // 2, source.Columns // 2
    smaller.PixelData = bytes(smaller.Rows * smaller.Columns * 2)
    inverse = second_image(source, source.SOPInstanceUID + ".7")
    inverse.PhotometricInterpretation = ({"MONOCHROME1", "MONOCHROME2"}
                                         - {source.PhotometricInterpretation}).pop()
    rescaled = second_image(source, source.SOPInstanceUID + ".8")
    rescaled.RescaleSlope = 2
    fits = second_image(source, source.SOPInstanceUID + ".9")
    images = [source, smaller, inverse, rescaled, fits]

    groups = presentation_groups(images)

    assert [[ds.SOPInstanceUID for ds in group] for group in groups] == [
        [source.SOPInstanceUID, fits.SOPInstanceUID], [smaller.SOPInstanceUID],
        [inverse.SOPInstanceUID], [rescaled.SOPInstanceUID]]
    for number, group in enumerate(groups):
        uids = {ds.SOPInstanceUID for ds in group}
        gsps = write_verified(build_presentation_state(
            group, [f for f in findings if f.source_sop_instance_uid in uids], DEVICE,
            ALGORITHM), f"group-{number}")
        assert set(referenced_uids(gsps)) == uids


def text_objects(gsps) -> list[tuple[str, tuple[float, ...], str]]:
    return [(text.UnformattedTextValue,
             (*map(float, text.BoundingBoxTopLeftHandCorner),
              *map(float, text.BoundingBoxBottomRightHandCorner)),
             text.BoundingBoxAnnotationUnits)
            for annotation in gsps.GraphicAnnotationSequence
            for text in annotation.TextObjectSequence]


def crowded(source) -> list[ImageFinding]:
    """The reported case, scaled onto a small image: a Mass with Atelectasis just below it,
    a small nodule at its side, and a Pneumothorax at the top edge."""
    uid = source.SOPInstanceUID
    return [ImageFinding(uid, FINDINGS["Mass"], 0.72, (120.0, 60.0, 200.0, 140.0)),
            ImageFinding(uid, FINDINGS["Atelectasis"], 0.55, (110.0, 146.0, 220.0, 190.0)),
            ImageFinding(uid, FINDINGS["Nodule"], 0.41, (204.0, 80.0, 212.0, 88.0)),
            ImageFinding(uid, FINDINGS["Pneumothorax"], 0.29, (20.0, 0.0, 90.0, 50.0))]


def test_labels_lie_where_the_secondary_capture_burns_them(phantom, write_verified):
    """At natural size the GSPS and the SC place every label in the same rectangle."""
    source, _ = phantom
    findings = crowded(source)

    gsps = write_verified(build_presentation_state([source], findings, DEVICE, ALGORITHM),
                          "agree")

    assert_annotation(gsps.GraphicAnnotationSequence[0], source, findings)
    burned = overlay_layout(source, findings)
    assert text_objects(gsps) == [(tag.text, pytest.approx(tag.rect), "PIXEL")
                                  for tag in burned.tags]


def test_findings_filling_the_image_get_a_legend_beside_it(phantom, write_verified):
    """No room on the image: the displayed area grows by the SC's strip, and the legend,
    beside the image, is placed in DISPLAY units (PIXEL ones must lie on the image)."""
    source, _ = phantom
    uid = source.SOPInstanceUID
    findings = [ImageFinding(uid, FINDINGS["Cardiomegaly"], 0.91,
                             (0.0, 0.0, float(source.Columns), float(source.Rows))),
                ImageFinding(uid, FINDINGS["Nodule"], 0.41, (100.0, 100.0, 120.0, 120.0))]

    gsps = write_verified(build_presentation_state([source], findings, DEVICE, ALGORITHM),
                          "strip")

    area = gsps.DisplayedAreaSelectionSequence[0]
    width, height = overlay_layout(source, findings).canvas
    assert list(area.DisplayedAreaBottomRightHandCorner) == [width, height]
    assert width > source.Columns and height == source.Rows
    texts = text_objects(gsps)
    assert {text for text, _, _ in texts} == {"Cardiomegaly 91%", "Nodule 41%"}
    for _, (left, top, right, bottom), units in texts:
        assert units == "DISPLAY"
        assert source.Columns / width <= left < right <= 1 and 0 <= top < bottom <= 1


DUMP_GRAPHIC = re.compile(r"graphic \d+: points=(\d+) type=polyline filled=no units=pixel\s+"
                          r"\S*\s*coordinates: ([^\n]*)")
DUMP_TEXT = re.compile(r'text \d+: "([^"]*)"\s+\S*\s*anchor point: none\s+\S*\s*'
                       r"bounding box: TLHC=(\S+)\\(\S+) BRHC=(\S+)\\(\S+) units=pixel")


def test_dcmtk_finds_the_boxes_and_labels_where_they_belong(tool, tmp_path, write_verified):
    """dcmtk's dcmp2pgm applies our GSPS to the image and reports what it read.

    dcmp2pgm (3.6) renders the grey-scale pipeline, not the graphic layer, which it leaves
    to a viewer; so the test draws each polyline exactly as dcmtk read it onto dcmtk's
    rendering, and checks the strokes lie on the findings' box edges and nowhere else: the
    inside of every box stays background. Wrong GSPS coordinates fail here."""
    dcmp2pgm = tool("dcmp2pgm")
    source = dx_dataset(np.full((256, 320), 1500, dtype=np.uint16))
    source.WindowCenter, source.WindowWidth = 2048, 4096
    image_path = tmp_path / "image.dcm"
    source.save_as(image_path, enforce_file_format=True)
    findings = crowded(source)
    write_verified(build_presentation_state([source], findings, DEVICE, ALGORITHM), "dcmp2pgm")
    gsps_path = tmp_path / "dcmp2pgm.dcm"
    pgm_path = tmp_path / "out.pgm"

    result = subprocess.run([dcmp2pgm, "-v", "-p", str(gsps_path), str(image_path),
                             str(pgm_path)], capture_output=True, text=True, timeout=120,
                            check=False)

    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    rendered = np.asarray(Image.open(pgm_path))
    assert rendered.shape == (source.Rows, source.Columns)
    assert len(np.unique(rendered)) == 1  # the flat image, windowed by the GSPS
    assert "Graphic Layer #1 [AI FINDINGS]" in report
    graphics = DUMP_GRAPHIC.findall(report)
    assert len(graphics) == len(findings), report
    strokes = Image.new("L", (source.Columns + 1, source.Rows + 1))
    draw = ImageDraw.Draw(strokes)
    for count, coordinates in graphics:
        points = [tuple(float(v) for v in point.split("\\"))
                  for point in coordinates.strip(", ").split(", ")]
        assert len(points) == int(count) == 5 and points[0] == points[-1]  # closed
        draw.line(points, fill=255, width=1)
    drawn = np.asarray(strokes) > 0
    expected = np.zeros_like(drawn)
    for finding in findings:
        x1, y1, x2, y2 = (int(v) for v in finding.box)
        expected[y1, x1:x2 + 1] = expected[y2, x1:x2 + 1] = True
        expected[y1:y2 + 1, x1] = expected[y1:y2 + 1, x2] = True
    assert np.array_equal(drawn, expected), "dcmtk reads box strokes off the finding edges"
    texts = DUMP_TEXT.findall(report)
    rects = [tuple(float(v) for v in corners) for _, *corners in texts]
    assert list(zip([text for text, *_ in texts], rects, strict=True)) == [
        (tag.text, pytest.approx(tag.rect, abs=1e-3))
        for tag in overlay_layout(source, findings).tags], report  # where the SC has them
    for rect in rects:  # as dcmtk reads them: on the image, off every box and label
        assert 0 <= rect[0] < rect[2] <= source.Columns and 0 <= rect[1] < rect[3] <= source.Rows
        assert not any(touches(rect, finding.box) for finding in findings), rect
    for i, a in enumerate(rects):
        assert not any(touches(a, b) for b in rects[i + 1:])
