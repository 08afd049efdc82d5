"""GSPS: boxes and labels over the untouched images, with the polarity and window kept."""

from __future__ import annotations

import pytest

from node.results import ImageFinding, build_presentation_state, presentation_groups
from tests.node.results.conftest import ALGORITHM, DEVICE, FINDINGS, second_image

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
    assert [text.UnformattedTextValue for text in texts] == [
        f"{finding.finding.label} {round(finding.score * 100)}%" for finding in findings]
    for text, finding in zip(texts, findings, strict=True):
        left, top = text.BoundingBoxTopLeftHandCorner
        right, bottom = text.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= source.Columns and 0 <= top < bottom <= source.Rows
        assert list(text.AnchorPoint) == pytest.approx(list(finding.box[:2]))


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
