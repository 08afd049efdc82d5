"""docs/ihe-air.md against reports built as a running node builds them.

The page's marked tables (observer context, algorithm identification, the content of each
kind of measurement group, the items named as absent) are compared with SRs made by the
result builders with a default node's device and the bundled model's card: the same inputs
the worker's :class:`node.reporting.Reporter` gives them.
"""

from __future__ import annotations

import pytest

from config.settings import Settings
from node.reporting import COMPREHENSIVE_3D_SR
from node.results import build_measurement_report, build_not_analysed_report
from tests.docs_check import (
    IHE_AIR,
    block,
    content_items,
    doc_text,
    phantom_with_findings,
    production_reporter,
    sr_codes,
    triplets,
)

MEASUREMENT_GROUP = ("125007", "DCM")
PROBABILITY = ("122157", "DCM", "Probability")


@pytest.fixture(scope="module")
def page() -> str:
    return doc_text(IHE_AIR)


@pytest.fixture(scope="module")
def reports():
    """(reporter, source, findings, {kind: SR}) for findings, none and not analysed."""
    reporter = production_reporter()
    device, algorithm = reporter.device, reporter.algorithm
    source, findings = phantom_with_findings()
    built = {
        "findings": build_measurement_report([source], findings, device, algorithm),
        "none": build_measurement_report([source], [], device, algorithm),
        "not analysed": build_not_analysed_report([source], "view LL is lateral", device,
                                                  algorithm),
    }
    return reporter, source, findings, built


def _codes(item) -> set[tuple[str, str, str]]:  # noqa: ANN001 - an SR content item
    """Concept names, CODE values and units of ``item`` and everything under it."""
    return {entry[1:] for entry in sr_codes(item)}


def _groups(sr) -> list:  # noqa: ANN001
    return content_items(sr, *MEASUREMENT_GROUP)


def test_reports_are_tid_1500_in_comprehensive_3d_sr_in_the_source_study(reports):
    _, source, _, built = reports
    for sr in built.values():
        assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
        template = sr.ContentTemplateSequence[0]
        assert (template.TemplateIdentifier, template.MappingResource) == ("1500", "DCMR")
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
            "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert built["not analysed"].SeriesDescription == "AI not analysed (cxr-node)"


def test_observer_context_is_the_nodes_device(page, reports):
    reporter, _, _, built = reports
    settings = Settings()
    listed = triplets(block(page, "air-observer"))
    assert ("121007", "DCM", "Device") in listed
    expected = {"121012": settings.device_uid, "121013": settings.node.device_name,
                "121014": "cxr-node project"}
    assert reporter.device.manufacturer == "cxr-node project"
    for sr in built.values():
        observer = {item.ConceptNameCodeSequence[0].CodeValue: item for item in sr.ContentSequence
                    if item.RelationshipType == "HAS OBS CONTEXT"}
        assert observer["121005"].ConceptCodeSequence[0].CodeValue == "121007"
        for code, value in expected.items():
            item = observer[code]
            assert (item.get("UID") or item.get("TextValue")) == value, code
        assert {code for code, _, _ in listed if code.startswith("1210")} >= set(observer)


def test_every_group_identifies_the_model_that_made_it(page, reports):
    reporter, _, _, built = reports
    listed = {code for code, _, _ in triplets(block(page, "air-algorithm"))}
    assert listed == {"111001", "111003", "111000", "123110"}
    for sr in built.values():
        groups = _groups(sr)
        assert groups
        for group in groups:
            rows = {item.ConceptNameCodeSequence[0].CodeValue: item
                    for item in group.ContentSequence}
            assert rows["111001"].TextValue == reporter.algorithm.name
            assert rows["111003"].TextValue == reporter.algorithm.version
            assert rows["111000"].ConceptCodeSequence[0].CodeValue == "123110"


def test_finding_groups_hold_what_the_page_lists(page, reports):
    _, source, findings, built = reports
    finding_codes = {(f.finding.code, f.finding.scheme, f.finding.meaning) for f in findings}
    listed = set(triplets(block(page, "air-finding-group")))
    groups = _groups(built["findings"])
    assert len(groups) == len(findings)
    seen = set()
    for group, finding in zip(groups, findings, strict=True):
        codes = _codes(group)
        sites = {code for code in codes if code not in listed and code not in finding_codes}
        # Besides the listed items: the finding's code and, under the NUM, one site.
        assert len(sites) <= 1, f"in the group, not on the page (besides one site): {sites}"
        seen |= codes - finding_codes - sites
        num = next(item for item in group.ContentSequence if item.ValueType == "NUM")
        assert float(num.MeasuredValueSequence[0].NumericValue) == finding.percent
        (derivation,) = [item.ConceptCodeSequence[0] for item in num.ContentSequence
                         if item.ConceptNameCodeSequence[0].CodeValue == "121401"]
        assert (derivation.CodeValue, derivation.CodingSchemeDesignator,
                derivation.CodeMeaning) == PROBABILITY
        assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
        region = next(item for item in group.ContentSequence if item.ValueType == "SCOORD")
        assert region.GraphicType == "POLYLINE" and len(region.GraphicData) == 10
        assert region.GraphicData[:2] == region.GraphicData[-2:]  # closed
        image = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seen == listed, (f"in the groups, not on the page: {sorted(seen - listed)}; "
                            f"on the page, not in the groups: {sorted(listed - seen)}")


def test_no_findings_and_not_analysed_groups_hold_what_the_page_lists(page, reports):
    _, _, _, built = reports
    listed = set(triplets(block(page, "air-summary-group")))
    seen = set()
    for kind, summary in (("none", "111241"), ("not analysed", "111245")):
        (group,) = _groups(built[kind])
        seen |= _codes(group)
        rows = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
        assert rows["111017"].ConceptCodeSequence[0].CodeValue == summary
    comment = {item.ConceptNameCodeSequence[0].CodeValue: item
               for item in _groups(built["not analysed"])[0].ContentSequence}["121106"]
    assert comment.TextValue == "Not analysed: view LL is lateral"
    assert seen == listed, (f"in the groups, not on the page: {sorted(seen - listed)}; "
                            f"on the page, not in the groups: {sorted(listed - seen)}")


def test_items_the_page_names_as_absent_are_absent(page, reports):
    _, _, _, built = reports
    absent = {(code, scheme) for code, scheme, _ in triplets(block(page, "air-absent"))}
    assert absent
    for sr in built.values():
        present = {(code, scheme) for _, code, scheme, _ in sr_codes(sr)}
        assert not absent & present, f"now written, update the gaps: {absent & present}"


def test_tracking_uids_are_new_in_every_report(reports):
    reporter, source, findings, _ = reports

    def uids() -> list[str]:
        sr = build_measurement_report([source], findings, reporter.device, reporter.algorithm)
        return [item.UID for item in content_items(sr, "112040", "DCM")]

    first, second = uids(), uids()
    assert len(first) == len(findings) and not set(first) & set(second)
