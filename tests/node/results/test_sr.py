"""TID 1500 reports: what a radiology IT person checks in the SR the node sends back."""

from __future__ import annotations

import subprocess

import pytest

from node.results import ImageFinding, build_measurement_report, build_not_analysed_report
from node.results.common import SeriesDescription
from tests.node.results.conftest import ALGORITHM, DEVICE, FINDINGS, second_image

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def content_items(node):
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(node, code_value: str, scheme: str = "DCM") -> list:
    return [item for item in content_items(node)
            if "ConceptNameCodeSequence" in item
            and item.ConceptNameCodeSequence[0].CodeValue == code_value
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == scheme]


def one(node, code_value: str, scheme: str = "DCM"):
    items = named(node, code_value, scheme)
    assert len(items) == 1, f"expected one ({code_value}, {scheme}), found {len(items)}"
    return items[0]


def library_uids(sr) -> list[str]:
    library = one(sr, "111028")  # Image Library
    return [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for item in content_items(library) if item.ValueType == "IMAGE"]


def assert_common_header(sr, source, sop_class: str) -> None:
    assert sr.SOPClassUID == sop_class
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.DeviceUID == DEVICE.uid
    assert sr.Manufacturer == DEVICE.manufacturer
    assert sr.SoftwareVersions == DEVICE.software_version
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert one(sr, "121012").UID == DEVICE.uid  # Device Observer UID
    assert one(sr, "121013").TextValue == DEVICE.name
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID


def children(item, value_type: str | None = None) -> list:
    return [c for c in item.get("ContentSequence", [])
            if value_type is None or c.ValueType == value_type]


def concept(item) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return name.CodingSchemeDesignator, name.CodeValue


def ohif_box_lines(group) -> list[str]:
    """The text OHIF 3.13 draws beside an SR box before tracking: each NUM of the group as
    "meaning: value unit" (two decimals) and a Finding Site as "363698007: meaning", at most
    five lines (extensions/cornerstone-dicom-sr: getSopClassHandlerModule
    _processTID1410Measurement, DICOMSRDisplayTool _getTextBoxLinesFromLabels)."""
    lines = []
    for num in children(group, "NUM"):
        value = num.MeasuredValueSequence[0]
        lines.append(f"{num.ConceptNameCodeSequence[0].CodeMeaning}: "
                     f"{float(value.NumericValue):.2f} "
                     f"{value.MeasurementUnitsCodeSequence[0].CodeValue}")
    sites = [c for c in children(group) if concept(c) == ("SCT", "363698007")]
    if sites:
        lines.append(f"363698007: {sites[0].ConceptCodeSequence[0].CodeMeaning}")
    return lines[:5]


def ohif_tracked(group) -> tuple[object, str | None]:
    """(region, label) as OHIF 3.13 tracks a group (@cornerstonejs/adapters
    MeasurementReport.getSetupMeasurementData): the SCOORD under the first NUM, or the
    group's own only when it has no NUM ("No spatial coordinates group found" otherwise);
    the label from the group's Comment TEXT (getCornerstoneLabelFromDefaultState)."""
    nums = children(group, "NUM")
    regions = children(nums[0] if nums else group, "SCOORD")
    assert regions, "OHIF: Unable to generate tool state ... No spatial coordinates group found"
    comments = [c for c in children(group, "TEXT") if concept(c) == ("DCM", "121106")]
    return regions[0], comments[0].TextValue if comments else None


def assert_finding_groups(sr, findings: list[ImageFinding]) -> None:
    groups = named(sr, "125007")  # Measurement Group
    assert len(groups) == len(findings)
    for group, finding in zip(groups, findings, strict=True):
        code = (finding.finding.scheme, finding.finding.code)
        finding_type = one(group, "121071").ConceptCodeSequence[0]
        assert (finding_type.CodingSchemeDesignator, finding_type.CodeValue) == code
        assert one(group, "112039").TextValue.startswith(finding.finding.label)
        assert one(group, "111001").TextValue == ALGORITHM.name
        assert one(group, "111003").TextValue == ALGORITHM.version
        region = one(group, "111030")  # Image Region
        assert region.GraphicType == "POLYLINE"
        x1, y1, x2, y2 = finding.box
        assert [float(v) for v in region.GraphicData] == pytest.approx(
            [x1, y1, x2, y1, x2, y2, x1, y2, x1, y1])
        source_image = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert source_image.ReferencedSOPInstanceUID == finding.source_sop_instance_uid
        # The probability: one NUM named by the finding, derived as DCM 122157 Probability.
        [num] = children(group, "NUM")
        assert concept(num) == code
        value = num.MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(round(finding.score * 100, 1))
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
        derivation = one(num, "121401").ConceptCodeSequence[0]
        assert (derivation.CodingSchemeDesignator, derivation.CodeValue) == ("DCM", "122157")
        assert one(num, "121050").TextValue == f"Probability of {finding.finding.meaning}"
        # The NUM is INFERRED FROM the group's own box on the same image (TID 320).
        [num_region] = children(num, "SCOORD")
        assert num_region.RelationshipType == "INFERRED FROM"
        assert num_region.GraphicType == region.GraphicType
        assert list(num_region.GraphicData) == list(region.GraphicData)
        assert (num_region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                == finding.source_sop_instance_uid)
        # What OHIF 3.13 shows: the name and probability, before and after tracking.
        assert ohif_box_lines(group) == [f"{finding.finding.meaning}: "
                                         f"{round(finding.score * 100, 1):.2f} %"]
        tracked_region, label = ohif_tracked(group)
        assert tracked_region is num_region
        assert label == finding.label  # e.g. "Nodule 63%"


@pytest.mark.parametrize(("comprehensive_3d", "sop_class"),
                         [(True, COMPREHENSIVE_3D_SR), (False, COMPREHENSIVE_SR)])
def test_report_holds_one_group_per_finding_with_box_and_probability(
        phantom, write_verified, comprehensive_3d, sop_class):
    source, findings = phantom
    report = build_measurement_report([source], findings, DEVICE, ALGORITHM,
                                      comprehensive_3d=comprehensive_3d)

    sr = write_verified(report, f"sr-{source.PhotometricInterpretation}-{comprehensive_3d}")

    assert_common_header(sr, source, sop_class)
    assert sr.SeriesDescription == SeriesDescription.FINDINGS
    assert sr.SeriesNumber == 9001
    assert library_uids(sr) == [source.SOPInstanceUID]
    assert_finding_groups(sr, findings)
    assert one(sr, "121058").ConceptCodeSequence[0].CodeValue == "399208008"  # procedure


def test_report_on_the_real_chest_cr(rg1, write_verified):
    source, findings = rg1

    sr = write_verified(build_measurement_report([source], findings, DEVICE, ALGORITHM), "rg1-sr")

    assert_common_header(sr, source, COMPREHENSIVE_3D_SR)
    assert_finding_groups(sr, findings)
    assert library_uids(sr) == [source.SOPInstanceUID]
    sites = [item.ConceptCodeSequence[0].CodeValue for item in named(sr, "363698007", "SCT")]
    assert sites == ["39607008", "80891009"]  # nodule in the lung, cardiomegaly at the heart
    for group in named(sr, "125007"):  # under the NUM, where OHIF prints no raw code
        assert [c for c in children(group) if concept(c) == ("SCT", "363698007")] == []


def test_report_reads_as_text_in_dsr2html(rg1, write_verified, tool):
    source, findings = rg1
    sr = write_verified(build_measurement_report([source], findings, DEVICE, ALGORITHM), "html")

    result = subprocess.run([tool("dsr2html"), sr.filename], capture_output=True, text=True,
                            timeout=120, check=True)

    html = result.stdout
    for text in ("Nodule", "63.4 %", "Nodule 63%", "Probability of Nodule", "Lung",
                 "Cardiomegaly", "91.0 %", "Cardiomegaly 91%"):
        assert text in html, f"{text!r} missing from dsr2html output"


def test_image_library_lists_every_source_and_regions_name_their_own_image(
        phantom, write_verified):
    source, findings = phantom
    lateral = second_image(source, source.SOPInstanceUID + ".2")
    on_lateral = ImageFinding(lateral.SOPInstanceUID, FINDINGS["Nodule"], 0.42, (10, 20, 30, 40))

    sr = write_verified(build_measurement_report([source, lateral], [*findings, on_lateral],
                                                 DEVICE, ALGORITHM), "two-images")

    assert library_uids(sr) == [source.SOPInstanceUID, lateral.SOPInstanceUID]
    assert_finding_groups(sr, [*findings, on_lateral])
    identifiers = [item.TextValue for item in named(sr, "112039")]
    assert len(set(identifiers)) == len(identifiers)


def test_no_findings_report_states_the_algorithm_ran_and_found_nothing(phantom, write_verified):
    source, _ = phantom

    sr = write_verified(build_measurement_report([source], [], DEVICE, ALGORITHM), "no-findings")

    assert_common_header(sr, source, COMPREHENSIVE_3D_SR)
    assert sr.SeriesDescription == SeriesDescription.NO_FINDINGS
    group = one(sr, "125007")
    summary = one(group, "111017").ConceptCodeSequence[0]  # CAD Processing and Findings Summary
    assert summary.CodeValue == "111241"  # All algorithms succeeded; without findings
    comment = one(group, "121106").TextValue
    assert comment.startswith(f"No findings detected by {ALGORITHM.name} {ALGORITHM.version}")
    assert "not state that the study is normal" in comment
    assert named(sr, "111030") == []  # no region
    assert library_uids(sr) == [source.SOPInstanceUID]


@pytest.mark.parametrize(("comprehensive_3d", "sop_class"),
                         [(True, COMPREHENSIVE_3D_SR), (False, COMPREHENSIVE_SR)])
def test_not_analysed_report_says_why(phantom, write_verified, comprehensive_3d, sop_class):
    source, _ = phantom
    report = build_not_analysed_report([source], "image is a lateral view", DEVICE, ALGORITHM,
                                       comprehensive_3d=comprehensive_3d)

    sr = write_verified(report, f"not-analysed-{comprehensive_3d}")

    assert_common_header(sr, source, sop_class)
    assert sr.SeriesDescription == SeriesDescription.NOT_ANALYSED
    assert one(sr, "121106").TextValue == "Not analysed: image is a lateral view"
    assert one(sr, "111017").ConceptCodeSequence[0].CodeValue == "111245"
    group = one(sr, "125007")
    assert [item for item in content_items(group) if item.ValueType in ("NUM", "SCOORD")] == []


def test_new_report_references_its_predecessor(phantom, write_verified):
    source, findings = phantom
    first = write_verified(build_measurement_report([source], findings[:1], DEVICE, ALGORITHM),
                           "first")

    second = write_verified(build_measurement_report([source], findings, DEVICE, ALGORITHM,
                                                     predecessor=first), "second")

    predecessor = second.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == source.StudyInstanceUID
    series = predecessor.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.SOPInstanceUID != first.SOPInstanceUID


def test_refuses_inputs_that_would_point_at_the_wrong_image(phantom, phantom_cases):
    source, findings = phantom
    other_study = next(case.dataset for case in phantom_cases.values()
                       if case.dataset.StudyInstanceUID != source.StudyInstanceUID)
    stray = ImageFinding("1.2.3.4", FINDINGS["Mass"], 0.5, (1, 1, 2, 2))
    too_big = ImageFinding(source.SOPInstanceUID, FINDINGS["Mass"], 0.5,
                           (0, 0, source.Columns + 1, 10))

    with pytest.raises(ValueError, match="one study"):
        build_measurement_report([source, other_study], [], DEVICE, ALGORITHM)
    with pytest.raises(ValueError, match="not among the sources"):
        build_measurement_report([source], [stray], DEVICE, ALGORITHM)
    with pytest.raises(ValueError, match="leaves the"):
        build_measurement_report([source], [too_big], DEVICE, ALGORITHM)
    with pytest.raises(ValueError, match="predecessor StudyInstanceUID"):
        earlier = build_measurement_report([other_study], [], DEVICE, ALGORITHM)
        build_measurement_report([source], findings, DEVICE, ALGORITHM, predecessor=earlier)
    with pytest.raises(ValueError, match="not an SR"):
        build_measurement_report([source], findings, DEVICE, ALGORITHM, predecessor=source)
    with pytest.raises(ValueError, match="reason"):
        build_not_analysed_report([source], "  ", DEVICE, ALGORITHM)
    with pytest.raises(TypeError, match="ProducingDevice"):
        build_measurement_report([source], findings, "cxr-node", ALGORITHM)
