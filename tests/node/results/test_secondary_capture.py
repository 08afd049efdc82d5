"""Secondary Capture: findings burned into the displayed image, and labelled as such."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from model.phantom import synthesize_case
from node.results import ImageFinding, build_secondary_capture, render_overlay
from node.results.overlay import overlay_layout
from tests.node.results.conftest import ALGORITHM, DEVICE, FINDINGS, SEED, findings_of

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def outline(box, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """The pixel columns/rows of a box's edges, as render_overlay draws them."""
    x1, y1, x2, y2 = box
    scale_x, scale_y = scale
    return (math.floor(x1 * scale_x), math.floor(y1 * scale_y),
            math.ceil(x2 * scale_x) - 1, math.ceil(y2 * scale_y) - 1)


def assert_burned_in(pixels, plain, source, findings,
                     scale: tuple[float, float] = (1.0, 1.0)) -> None:
    """Every outline drawn, and nothing changed but outlines and the labels' tags."""
    changed = np.any(pixels[:plain.shape[0], :plain.shape[1]] != plain, axis=-1)
    drawn = np.zeros_like(changed)
    for finding in findings:
        left, top, right, bottom = outline(finding.box, scale)
        ring = np.concatenate([changed[top, left:right + 1], changed[bottom, left:right + 1],
                               changed[top:bottom + 1, left], changed[top:bottom + 1, right]])
        assert ring.all(), f"outline of {finding.finding.label} not drawn"
        drawn[top:bottom + 1, left:right + 1] = True
        drawn[top + 8:bottom - 7, left + 8:right - 7] = False  # outlines are < 8 px wide
    for tag in overlay_layout(source, findings).tags:
        x1, y1, x2, y2 = (round(v) for v in tag.rect)
        drawn[y1:y2, x1:x2] = True
    assert not changed[~drawn].any(), "pixels changed away from the boxes and their labels"


def test_secondary_capture_carries_the_findings_burned_in(phantom, write_verified):
    source, findings = phantom

    sc = write_verified(build_secondary_capture(source, findings, DEVICE, ALGORITHM),
                        f"sc-{source.PhotometricInterpretation}")

    assert sc.SOPClassUID == SC_STORAGE
    assert sc.BurnedInAnnotation == "YES"
    assert "AI" in sc.SeriesDescription and "not for diagnosis" in sc.SeriesDescription
    assert sc.SeriesNumber == 9003 and sc.InstanceNumber == 1
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID
    assert sc.DeviceUID == DEVICE.uid
    assert sc.Manufacturer == DEVICE.manufacturer
    assert sc.PhotometricInterpretation == "RGB" and sc.BitsAllocated == 8
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    assert sc.BodyPartExamined == "CHEST"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ALGORITHM.name in sc.DerivationDescription
    assert_burned_in(sc.pixel_array, render_overlay(source, []), source, findings)


# RG1's Referring Physician's Name is "ward", one component; copied as it is, not ours to fix.
@pytest.mark.filterwarnings("ignore:The string \"ward\" is unlikely:UserWarning")
def test_secondary_capture_of_the_real_chest_cr(rg1, chest_cr, write_verified):
    source, findings = rg1

    sc = write_verified(build_secondary_capture(source, findings, DEVICE, ALGORITHM), "rg1-sc")

    assert (sc.Rows, sc.Columns) == (1955, 1841)  # under 2048: kept at full size
    assert "PixelSpacing" not in sc  # RG1 writes 0.000, which is no spacing at all
    assert_burned_in(sc.pixel_array, render_overlay(source, []), source, findings)
    lossless = pydicom.dcmread(chest_cr["RG1_J2KR.dcm"])  # JPEG 2000 lossless twin
    on_twin = [replace(f, source_sop_instance_uid=lossless.SOPInstanceUID) for f in findings]
    twin = write_verified(build_secondary_capture(lossless, on_twin, DEVICE, ALGORITHM),
                          "rg1-j2k-sc")
    assert np.array_equal(twin.pixel_array, sc.pixel_array)


def test_large_source_is_downsampled_to_2048_with_scaled_spacing(write_verified):
    case = next(case for index in range(50)
                if (case := synthesize_case(SEED, index, size_range=(3000, 3200))).boxes)
    source, findings = case.dataset, findings_of(case)
    row_spacing, column_spacing = (float(v) for v in source.ImagerPixelSpacing)
    source.PixelSpacing = [row_spacing, column_spacing]  # as if calibrated at the patient

    sc = write_verified(build_secondary_capture(source, findings, DEVICE, ALGORITHM), "big-sc")

    assert max(sc.Rows, sc.Columns) == 2048
    scale = (sc.Columns / source.Columns, sc.Rows / source.Rows)
    assert float(sc.PixelSpacing[0]) == pytest.approx(row_spacing / scale[1])
    assert float(sc.PixelSpacing[1]) == pytest.approx(column_spacing / scale[0])
    assert "downsampled" in sc.DerivationDescription
    assert_burned_in(sc.pixel_array, render_overlay(source, []), source, findings, scale)


def test_refuses_findings_of_another_image(phantom, phantom_cases):
    source, _ = phantom
    other = next(case for case in phantom_cases.values()
                 if case.dataset.SOPInstanceUID != source.SOPInstanceUID)

    with pytest.raises(ValueError, match="not among the sources"):
        build_secondary_capture(source, findings_of(other), DEVICE, ALGORITHM)


def test_findings_filling_the_image_widen_it_by_a_legend_strip(phantom, write_verified):
    source, _ = phantom
    source.PixelSpacing = [0.2, 0.2]  # as if calibrated: the strip must not change it
    uid = source.SOPInstanceUID
    findings = [ImageFinding(uid, FINDINGS["Cardiomegaly"], 0.91,
                             (0.0, 0.0, float(source.Columns), float(source.Rows))),
                ImageFinding(uid, FINDINGS["Nodule"], 0.41, (100.0, 100.0, 120.0, 120.0))]

    sc = write_verified(build_secondary_capture(source, findings, DEVICE, ALGORITHM),
                        "strip-sc")

    assert sc.Rows == source.Rows and sc.Columns > source.Columns
    assert "legend in a strip" in sc.DerivationDescription
    assert [float(v) for v in sc.PixelSpacing] == [0.2, 0.2]
    assert_burned_in(sc.pixel_array, render_overlay(source, []), source, findings)
