"""The detector's findings as a TID 1500 Measurement Report (PS3.16 TID 1500, IHE AIR).

IHE AI Results (AIR) carries image findings as a TID 1500 report in a Comprehensive 3D SR;
a PACS that does not store Comprehensive 3D SR gets the same tree in a Comprehensive SR,
which allows the 2D SCOORD we use (PS3.3 A.35.3, A.35.13). Each finding is a TID 1410 planar
ROI group: tracking identifier and UID, finding type, TID 4019 algorithm identification, the
box as a closed POLYLINE on its image, the probability as a NUM and the same statement as a
TEXT comment. Where each item sits is chosen for what viewers read (OHIF 3.13 in particular);
docs/sr-for-viewers.md traces every choice to the viewer's code and to PS3.16.

A study where the model found nothing, or which it did not read, still gets a report that
says so in words (a TID 1501 group with a coded CAD summary and a TEXT comment): an absent
report must never read as a normal study.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ComprehensiveSR,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.results.common import (
    Algorithm,
    ImageFinding,
    ProducingDevice,
    SeriesDescription,
    check_findings,
    check_producer,
    check_sources,
    closed_box,
    stamp_device,
)

# Procedure reported (TID 1500 row 4, CID 100 is extensible). SNOMED "Plain chest X-ray"
# names a chest radiograph whatever its views; LOINC 36643-5 "XR Chest 2V" or 24648-8
# "XR Chest PA upright" would claim views or a position that a single AP image lacks.
PROCEDURE_REPORTED = CodedConcept("399208008", "SCT", "Plain chest X-ray")
# DCM 122157 "Probability" (PS3.16 Table D-1, in no context group). It is the NUM's
# Derivation (TID 1419 row 8; CID 7464 is extensible), not its concept name: OHIF labels a box
# with the NUM's concept name, so the NUM is named by the finding ("Nodule: 41.00 %"), and
# Derivation plus "Equivalent Meaning of Concept Name" (row 18) say that the number is the
# probability of that finding.
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
PERCENT = codes.UCUM.Percent
EQUIVALENT_MEANING = codes.DCM.EquivalentMeaningOfConceptName  # DCM 121050
# CAD Processing and Findings Summary (CID 6047), as the CAD SR templates state it.
CAD_SUMMARY = CodedConcept("111017", "DCM", "CAD Processing and Findings Summary")
RAN_WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # DCM 111241
DID_NOT_RUN = codes.DCM.NoAlgorithmsSucceededWithoutFindings  # DCM 111245
COMMENT = codes.DCM.Comment  # DCM 121106
AI_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110, TID 4019 Algorithm Family

# Finding site (TID 1410 row 10) by finding code, with the code meanings of CID 4: a
# site-trained vocabulary may add codes; a finding without an entry gets no site.
LUNG = CodedConcept("39607008", "SCT", "Lung")
HEART = CodedConcept("80891009", "SCT", "Heart")
PLEURA = CodedConcept("3120008", "SCT", "Pleura")
FINDING_SITES: dict[tuple[str, str], CodedConcept] = {
    ("SCT", "46621007"): LUNG,  # Atelectasis
    ("SCT", "287272002"): HEART,  # Cardiomegaly
    ("SCT", "60046008"): PLEURA,  # Pleural effusion
    ("DCM", "112121"): LUNG,  # Infiltrate
    ("SCT", "4147007"): LUNG,  # Mass
    ("SCT", "27925004"): LUNG,  # Nodule
    ("SCT", "36118008"): PLEURA,  # Pneumothorax: air in the pleural space
}
SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every SR Storage SOP Class (PS3.4 B.5)


def build_measurement_report(
    sources: Sequence[Dataset],
    findings: Sequence[ImageFinding],
    device: ProducingDevice,
    algorithm: Algorithm,
    *,
    series_number: int = 9001,
    comprehensive_3d: bool = True,
    predecessor: Dataset | None = None,
) -> Dataset:
    """A TID 1500 report of ``findings`` on ``sources`` (one group per finding), or, with no
    findings, a report stating that the algorithm ran and found none.

    ``predecessor``, an earlier report of ours on the same study, goes into the Predecessor
    Documents Sequence (PS3.3 C.17.2) so that a viewer shows the newer one as its revision.
    """
    sources = check_sources(sources)
    check_producer(device, algorithm)
    findings = check_findings(sources, findings)
    if predecessor is not None:
        _check_predecessor(predecessor, sources)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    if findings:
        numbers: Counter[str] = Counter()
        groups = []
        for item in findings:
            numbers[item.finding.label] += 1
            groups.append(_finding_group(item, by_uid[item.source_sop_instance_uid],
                                         algorithm, numbers[item.finding.label]))
        description = SeriesDescription.FINDINGS
    else:
        text = (f"No findings detected by {algorithm.name} {algorithm.version}. It reports only "
                f"the findings it was trained on; this does not state that the study is normal.")
        groups = [_summary_group(sources, algorithm, "No findings", RAN_WITHOUT_FINDINGS, text)]
        description = SeriesDescription.NO_FINDINGS
    return _report(sources, groups, device, description, series_number, comprehensive_3d,
                   predecessor)


def build_not_analysed_report(
    sources: Sequence[Dataset],
    reason: str,
    device: ProducingDevice,
    algorithm: Algorithm,
    *,
    series_number: int = 9001,
    comprehensive_3d: bool = True,
) -> Dataset:
    """A TID 1500 report whose one group says "Not analysed: <reason>".

    Still TID 1500 (a TID 1501 group with the coded summary "No algorithms succeeded;
    without findings" and a TEXT comment), so the same viewers and archives that show our
    findings show this too, and nobody mistakes an unread study for a normal one.
    """
    sources = check_sources(sources)
    check_producer(device, algorithm)
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"reason must be a non-empty str, got {reason!r}")
    group = _summary_group(sources, algorithm, "Not analysed", DID_NOT_RUN,
                           f"Not analysed: {reason.strip()}")
    return _report(sources, [group], device, SeriesDescription.NOT_ANALYSED, series_number,
                   comprehensive_3d, None)


def _algorithm_id(algorithm: Algorithm) -> AlgorithmIdentification:
    return AlgorithmIdentification(algorithm.name, algorithm.version, family=AI_FAMILY)


def _finding_group(item: ImageFinding, source: Dataset, algorithm: Algorithm,
                   number: int) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one box, shaped so that viewers name the finding (docs/sr-for-viewers.md).

    - The NUM (TID 1419 row 5) is named by the finding's code: OHIF draws each NUM beside the
      box as "<concept name>: <value> <unit>", and reads no other item there but the Finding
      Site, which it shows as "363698007: <site>". So the site moves from the group (TID 1410)
      under the NUM (TID 1419 row 9), where OHIF does not print it.
    - The NUM is INFERRED FROM the same closed box (TID 320 SCOORD; TID 1419 is extensible):
      OHIF's tracking adapter takes the region from the first NUM and fails without it.
    - A TEXT Comment (DCM 121106, "Nodule 41%") in the group: the label that OHIF's adapter
      reads for a tracked measurement, and what Cornerstone itself writes there.
    """
    finding = item.finding
    name = CodedConcept(finding.code, finding.scheme, finding.meaning)
    site = FINDING_SITES.get((finding.scheme, finding.code))
    box = closed_box(item.box)
    probability = Measurement(name=name, value=item.percent, unit=PERCENT, derivation=PROBABILITY,
                              finding_sites=[FindingSite(site)] if site is not None else None)
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(),
                                               identifier=f"{finding.label} {number}"),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE, graphic_data=box,
            source_image=SourceImageForRegion.from_source_image(source)),
        finding_type=name,
        algorithm_id=_algorithm_id(algorithm),
        measurements=[probability],
    )
    # highdicom refuses coordinates under a TID 1410 NUM, so they are appended once built.
    num = next(c for c in group[0].ContentSequence if c.ValueType == "NUM")
    num.ContentSequence.extend([
        TextContentItem(name=EQUIVALENT_MEANING, value=f"Probability of {finding.meaning}",
                        relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD),
        CoordinatesForMeasurement(graphic_type=GraphicTypeValues.POLYLINE, graphic_data=box,
                                  source_image=SourceImageForRegion.from_source_image(source)),
    ])
    group[0].ContentSequence.append(
        TextContentItem(name=COMMENT, value=item.label,
                        relationship_type=RelationshipTypeValues.CONTAINS))
    return group


def _summary_group(sources: list[Dataset], algorithm: Algorithm, identifier: str,
                   summary: CodedConcept, text: str) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 over all sources: the coded CAD summary and the same statement as TEXT,
    which every SR viewer shows as it is."""
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=identifier),
        algorithm_id=_algorithm_id(algorithm),
        qualitative_evaluations=[QualitativeEvaluation(CAD_SUMMARY, summary)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )
    group[0].ContentSequence.append(
        TextContentItem(name=COMMENT, value=text,
                        relationship_type=RelationshipTypeValues.CONTAINS))
    return group


def _report(sources: list[Dataset], groups: list, device: ProducingDevice,
            description: SeriesDescription, series_number: int, comprehensive_3d: bool,
            predecessor: Dataset | None) -> Dataset:
    """The SR document: device observer (TID 1004), image library of every source (OHIF
    needs it to place the regions), COMPLETE and UNVERIFIED (no person has read it)."""
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device.uid, name=device.name, manufacturer_name=device.manufacturer),
    )
    content = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=[_library_view(ds) for ds in sources],
    )
    sr_class = Comprehensive3DSR if comprehensive_3d else ComprehensiveSR
    report = sr_class(
        evidence=sources,
        content=content,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=device.manufacturer,
        is_complete=True,
        is_final=False,  # PreliminaryFlag PRELIMINARY until a radiologist signs a report
        is_verified=False,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=str(description),
        manufacturer_model_name=device.name,
        software_versions=device.software_version,
    )
    stamp_device(report, device)
    return report


def _library_view(source: Dataset) -> Dataset:
    """What the image library (TID 1601/1602) describes of ``source``.

    highdicom adds the projection radiography descriptors (TID 1603, all optional) from
    Patient Orientation and Imager Pixel Spacing whenever Modality is CR or DX, and fails
    when a CR lacks them (both are optional in CR). The view keeps Modality, which only
    selects that branch (the coded modality comes from the SOP Class), when both are there.
    """
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in source:
            setattr(view, keyword, source[keyword].value)
    orientation = source.get("PatientOrientation")
    spacing = source.get("ImagerPixelSpacing")
    described = (orientation is not None and len(orientation) == 2 and spacing is not None
                 and len(spacing) == 2 and all(float(v) > 0 for v in spacing))
    view.Modality = source.get("Modality", "") if described else ""
    if described:
        view.PatientOrientation = orientation
        view.ImagerPixelSpacing = spacing
    return view


def _check_predecessor(predecessor: Dataset, sources: list[Dataset]) -> None:
    if not isinstance(predecessor, Dataset):
        raise TypeError(f"predecessor must be a Dataset, got {type(predecessor).__name__}")
    sop_class = str(predecessor.get("SOPClassUID", ""))
    if not sop_class.startswith(SR_STORAGE_PREFIX):
        raise ValueError(f'predecessor SOPClassUID "{sop_class}" is not an SR Storage class')
    study = predecessor.get("StudyInstanceUID")
    if study != sources[0].StudyInstanceUID:
        raise ValueError(f'predecessor StudyInstanceUID "{study}" is not the sources\' study '
                         f'"{sources[0].StudyInstanceUID}"')
