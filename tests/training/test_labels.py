"""Label import: what a radiologist's SR and a public dataset's CSV become, checked by hand."""

from __future__ import annotations

import io
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    GraphicTypeValues,
    ImageRegion,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes

from model.phantom import synthesize_case
from model.vocabulary import DEFAULT_FINDINGS
from node.results import Algorithm, ImageFinding, ProducingDevice, build_measurement_report
from training.labels import (
    VINDR_CLASSES,
    VINDR_LOCAL_CLASSES,
    VINDR_MAPPING,
    LabelImportError,
    LabelRecord,
    NihEntry,
    is_tid1500,
    match_finding,
    read_nih_csv,
    read_nih_data_entry,
    read_plain_csv,
    read_plain_csv_patients,
    read_sr_labels,
    read_vindr_csv,
    region_box,
)

FINDINGS = {finding.label: finding for finding in DEFAULT_FINDINGS}
PNEUMOTHORAX = ("SCT", "36118008", "Pneumothorax")
NODULE = ("SCT", "27925004", "Nodule")
INFILTRATION = ("DCM", "112121", "Infiltrate")
CARDIOMEGALY = ("SCT", "287272002", "Cardiomegaly")
PNEUMONIA_SCT = ("SCT", "233604007", "Pneumonia")
READER = "Doe^Jane"


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    return synthesize_case(1, 0, size_range=(256, 320)).dataset


def written_and_read(ds: pydicom.Dataset) -> pydicom.Dataset:
    """What a viewer would send us: the object as bytes, read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def group(source, name: str, finding: tuple[str, str, str], graphic_type: str, points):
    """A TID 1410 group as a viewer writes it: finding type and one region on ``source``."""
    scheme, value, meaning = finding
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=name),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues(graphic_type),
            graphic_data=np.array(points, dtype=float),
            source_image=SourceImageForRegion.from_source_image(source)),
        finding_type=CodedConcept(value, scheme, meaning),
    )


def radiologist_report(source, groups) -> pydicom.Dataset:
    observer = ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=READER))
    content = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=observer),
        procedure_reported=CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=groups, referenced_images=[source])
    report = Comprehensive3DSR(
        evidence=[source], content=content, series_instance_uid=hd.UID(), series_number=700,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="OHIF",
        is_complete=True, is_final=True, is_verified=True, verifying_observer_name=READER,
        verifying_organization="Test hospital")
    return written_and_read(report)


def normal_group(source):
    """TID 1501: the reader's "Normal" on the image, no region."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="Reading"),
        finding_type=CodedConcept("17621005", "SCT", "Normal"),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)])


# --------------------------------------------------------------------------- SR


def test_radiologist_sr_gives_boxes_labels_and_unmapped_codes(source):
    rectangle = [[40, 50], [120, 50], [120, 150], [40, 150], [40, 50]]
    ellipse = [[100, 200], [180, 200], [140, 180], [140, 220]]  # major ends, minor ends
    circle = [[200, 100], [200, 130]]  # centre, a point on the perimeter: radius 30
    sr = radiologist_report(source, [
        group(source, "PTX 1", PNEUMOTHORAX, "POLYLINE", rectangle),
        group(source, "Nodule 1", ("SRT", "27925004", "Nodule"), "ELLIPSE", ellipse),
        group(source, "Pneumonia 1", PNEUMONIA_SCT, "CIRCLE", circle),
        group(source, "Probe", ("99dcmjs", "CS3DTEXT", "Effusion"), "POINT", [[60, 70]]),
    ])
    assert is_tid1500(sr)

    labels = read_sr_labels(sr)

    uid = source.SOPInstanceUID
    assert labels.study_uid == source.StudyInstanceUID
    assert labels.sop_instance_uid == sr.SOPInstanceUID
    assert (labels.observer, labels.observer_is_person) == (READER, True)
    assert labels.records == [
        LabelRecord(uid, "Pneumothorax", PNEUMOTHORAX, (40.0, 50.0, 120.0, 150.0), reader=READER),
        LabelRecord(uid, "Nodule", ("SRT", "27925004", "Nodule"), (100.0, 180.0, 180.0, 220.0),
                    reader=READER),
        LabelRecord(uid, None, PNEUMONIA_SCT, (170.0, 70.0, 230.0, 130.0), reader=READER),
        # a single point has no extent: an image-level label on its image
        LabelRecord(uid, "Pleural effusion", ("99dcmjs", "CS3DTEXT", "Effusion"), None,
                    reader=READER),
    ]
    assert labels.unmapped == [PNEUMONIA_SCT]
    assert labels.reviewed_normal is False


def test_unmapped_code_is_listed_once_however_many_groups_use_it(source):
    sr = radiologist_report(source, [
        group(source, f"Pneumonia {i}", PNEUMONIA_SCT, "POLYLINE",
              [[10 + i, 10], [40 + i, 10], [40 + i, 40], [10 + i, 40], [10 + i, 10]])
        for i in range(2)])

    labels = read_sr_labels(sr)

    assert labels.unmapped == [PNEUMONIA_SCT]
    assert [record.box for record in labels.records] == [(10.0, 10.0, 40.0, 40.0),
                                                         (11.0, 10.0, 41.0, 40.0)]
    assert [record.label for record in labels.records] == [None, None]


@pytest.mark.parametrize("without_groups", [False, True], ids=["normal-group", "no-groups"])
def test_sr_without_findings_is_a_normal_reading_of_each_evidence_image(source, without_groups):
    report = radiologist_report(source, [normal_group(source)])
    if without_groups:  # highdicom insists on a group; a viewer may save none
        measurements = [item for item in report.ContentSequence
                        if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
        assert len(measurements) == 1
        del measurements[0].ContentSequence
        report = written_and_read(report)

    labels = read_sr_labels(report)

    assert labels.reviewed_normal is True
    assert labels.records == [LabelRecord(source.SOPInstanceUID, None, None, None, normal=True,
                                          reader=READER)]
    assert labels.unmapped == []


DEVICE = ProducingDevice(uid="1.2.826.0.1.3680043.8.498.77", name="cxr-node",
                         manufacturer="cxr-node project", software_version="0.1.0")
ALGORITHM = Algorithm(name="cxr-detector", version="1")


def test_device_sr_has_a_device_observer_and_its_no_findings_report_is_not_normal(source):
    finding = ImageFinding(source.SOPInstanceUID, FINDINGS["Cardiomegaly"], 0.9,
                           (60.0, 80.0, 200.0, 180.0))
    with_finding = written_and_read(build_measurement_report([source], [finding], DEVICE,
                                                             ALGORITHM))
    nothing_found = written_and_read(build_measurement_report([source], [], DEVICE, ALGORITHM))

    labels = read_sr_labels(with_finding)
    empty = read_sr_labels(nothing_found)

    assert (labels.observer, labels.observer_is_person) == ("cxr-node", False)
    assert labels.records == [LabelRecord(source.SOPInstanceUID, "Cardiomegaly", CARDIOMEGALY,
                                          (60.0, 80.0, 200.0, 180.0), reader="cxr-node")]
    # "the algorithm found nothing" is not a reader saying the image is normal
    assert (empty.reviewed_normal, empty.records) == (False, [])
    assert empty.notes == ["No findings: no finding type; not a label"]


def test_non_sr_and_non_tid1500_are_refused(source):
    assert not is_tid1500(source)
    with pytest.raises(ValueError, match="is not a Structured Report"):
        read_sr_labels(source)
    sr = radiologist_report(source, [normal_group(source)])
    del sr.ContentTemplateSequence
    sr.ConceptNameCodeSequence[0].CodeValue = "18748-4"  # LOINC Diagnostic imaging report
    sr.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    assert not is_tid1500(sr)
    with pytest.raises(ValueError, match="is not a TID 1500 Measurement Report"):
        read_sr_labels(sr)


def test_region_boxes():
    # an ellipse at 45 degrees reaches past its axis ends: half-extent hypot(10, 5) each way
    half = math.hypot(10, 5)
    assert region_box("ELLIPSE", [0, 0, 20, 20, 5, 15, 15, 5]) == pytest.approx(
        (10 - half, 10 - half, 10 + half, 10 + half))
    assert region_box("POLYLINE", [1, 2, 9, 2, 9, 7, 1, 7]) == (1, 2, 9, 7)  # open rectangle
    assert region_box("POLYGON", [5, 5, 15, 5, 10, 12]) == (5, 5, 15, 12)
    assert region_box("MULTIPOINT", [3, 4, 8, 1]) == (3, 1, 8, 4)
    assert region_box("POINT", [3, 4]) is None
    assert region_box("POLYLINE", [0, 5, 10, 5]) is None  # a horizontal line has no area
    with pytest.raises(ValueError, match='GraphicType "CIRCLE" with 3 points'):
        region_box("CIRCLE", [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(("given", "label"), [
    (("SRT", "27925004"), "Nodule"),
    (("SCT", "999", "Lung nodule"), "Nodule"),
    ("SCT:60046008", "Pleural effusion"),
    ("Effusion", "Pleural effusion"),
    ("  pulmonary   NODULE ", "Nodule"),
    ("Lung mass", "Mass"),
    ("Enlarged heart", "Cardiomegaly"),
    (INFILTRATION, "Infiltration"),
    ("Infiltrate", "Infiltration"),
    (PNEUMONIA_SCT, None),
    ("Consolidation", None),
    ("DCM:36118008", None),  # the same digits in another scheme are another concept
])
def test_match_finding(given, label):
    finding = match_finding(given, DEFAULT_FINDINGS)
    assert (finding.label if finding else None) == label


# --------------------------------------------------------------------------- NIH


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


@pytest.mark.parametrize(("pneumonia_as", "label", "code"), [
    ("Infiltration", "Infiltration", INFILTRATION),
    (None, None, ("99NIH", "Pneumonia", "Pneumonia")),
])
def test_nih_box_list(tmp_path, pneumonia_as, label, code):
    path = write(tmp_path, "BBox_List_2017.csv", NIH_HEADER
                 + "00013118_008.png,Effusion,225.5,547.0,86.5,79.0\n"
                 + "00014716_007.png,Infiltrate,686.0,131.5,185.5,313.5,,,\n"
                 + "00029464_015.png,Pneumonia,100.25,200.75,50.5,60.25\n")

    records = read_nih_csv(path, pneumonia_as=pneumonia_as)

    assert records == [
        LabelRecord("00013118_008.png", "Pleural effusion", ("SCT", "60046008",
                                                             "Pleural effusion"),
                    (225.5, 547.0, 312.0, 626.0)),
        LabelRecord("00014716_007.png", "Infiltration", INFILTRATION,
                    (686.0, 131.5, 871.5, 445.0)),
        LabelRecord("00029464_015.png", label, code, (100.25, 200.75, 150.75, 261.0)),
    ]


def test_nih_bad_rows_are_all_named_and_nothing_is_returned(tmp_path):
    path = write(tmp_path, "BBox_List_2017.csv", NIH_HEADER
                 + "00000001_000.png,Nodule,10,20,30,40\n"
                 + "00000002_000.png,Nodule,10,20,-3,40\n"
                 + "00000003_000.png,Mass,abc,20,30,40\n"
                 + ",Atelectasis,10,20,30,40\n"
                 + "00000004_000.png,Fracture,10,20,30,40\n"
                 + "00000005_000.png,Nodule,1,2,3\n")

    with pytest.raises(LabelImportError) as caught:
        read_nih_csv(path)

    assert caught.value.errors == [
        (3, "Bbox w must be > 0, got -3"),
        (4, 'Bbox x "abc" is not a number'),
        (5, "Image Index is empty"),
        (6, 'Finding Label "Fracture" is not an NIH box class (Atelectasis, Cardiomegaly, '
            "Effusion, Infiltrate, Mass, Nodule, Pneumonia, Pneumothorax)"),
        (7, "5 fields, expected 6"),
    ]
    assert "line 3: Bbox w must be > 0, got -3" in str(caught.value)
    assert "5 bad row(s), nothing imported" in str(caught.value)


def test_nih_header_without_box_columns_is_refused(tmp_path):
    path = write(tmp_path, "boxes.csv", "Image Index,Finding Label,x,y,w\n")
    with pytest.raises(LabelImportError) as caught:
        read_nih_csv(path)
    assert caught.value.errors == [(1, "missing column(s) h in the header")]


def test_nih_pneumonia_as_must_be_a_vocabulary_label(tmp_path):
    path = write(tmp_path, "boxes.csv", NIH_HEADER)
    with pytest.raises(ValueError, match='pneumonia_as "Pneumonia" is not a vocabulary label'):
        read_nih_csv(path, pneumonia_as="Pneumonia")


# The 2017 file's header, trailing comma and all; v2020 says "Patient Sex" and drops it.
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                     "Patient Gender,View Position,OriginalImage[Width,Height],"
                     "OriginalImagePixelSpacing[x,y],\n")


def test_nih_data_entry(tmp_path):
    path = write(tmp_path, "Data_Entry_2017.csv", DATA_ENTRY_HEADER
                 + "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
                 + "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,AP,2894,2729,0.143,"
                 "0.143,\n"
                 + "00000003_000.png,No Finding,0,3,081Y,F,PA,2582,2991,0.143,0.143,\n")
    v2020 = write(tmp_path, "Data_Entry_2017_v2020.csv", DATA_ENTRY_HEADER.replace(
        "Gender", "Sex").replace("],\n", "]\n") + "00000003_000.png,No Finding,0,3,81,F,PA,"
        "2582,2991,0.143,0.143\n")

    entries = read_nih_data_entry(path)

    assert entries == [
        NihEntry("00000001_000.png", "1", "0", "PA", ("Cardiomegaly",)),
        NihEntry("00000001_001.png", "1", "1", "AP", ("Cardiomegaly", "Emphysema")),
        NihEntry("00000003_000.png", "3", "0", "PA", ("No Finding",)),
    ]
    assert [e.no_finding for e in entries] == [False, False, True]
    assert read_nih_data_entry(v2020) == entries[2:]


def test_nih_data_entry_bad_rows(tmp_path):
    path = write(tmp_path, "Data_Entry_2017.csv", DATA_ENTRY_HEADER
                 + "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
                 + "00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
                 + "00000002_000.png,Cardiomegaly|Fracture,0,2,058Y,M,PA,1,1,0.1,0.1,\n"
                 + "00000003_000.png,No Finding|Mass,0,3,058Y,M,PA,1,1,0.1,0.1,\n"
                 + "00000004_000.png,Mass,0,,058Y,M,PA,1,1,0.1,0.1,\n"
                 + "00000005_000.png,Mass,0,5,058Y,M,PA,1,1\n")

    with pytest.raises(LabelImportError) as caught:
        read_nih_data_entry(path)

    assert caught.value.errors == [
        (3, "Image Index 00000001_000.png again (first on line 2)"),
        (4, 'Finding Labels "Fracture" not among Atelectasis, Cardiomegaly, Consolidation, '
            "Edema, Effusion, Emphysema, Fibrosis, Hernia, Infiltration, Mass, Nodule, "
            "Pleural_Thickening, Pneumonia, Pneumothorax, No Finding"),
        (5, '"No Finding" together with findings'),
        (6, "Patient ID is empty"),
        (7, "9 fields, expected 11"),
    ]


# --------------------------------------------------------------------------- VinDr

VINDR = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
img1,Cardiomegaly,3,R8,100,300,300,400
img1,Cardiomegaly,3,R9,110,310,310,410
img1,Nodule/Mass,8,R10,600,100,640,140
img1,Aortic enlargement,0,R8,200,100,260,160
img1,Aortic enlargement,0,R10,202,102,262,162
img2,No finding,14,R1,,,,
img2,No finding,14,R2,,,,
img2,No finding,14,R3,,,,
img3,No finding,14,R1,,,,
img3,No finding,14,R2,,,,
img3,Pneumothorax,12,R3,10,10,50,90
"""
CARDIOMEGALY_MEAN = LabelRecord("img1", "Cardiomegaly", CARDIOMEGALY,
                                (105.0, 305.0, 305.0, 405.0), reader="R8,R9")
AORTIC_MEAN = LabelRecord("img1", None, ("99VINDR", "0", "Aortic enlargement"),
                          (201.0, 101.0, 261.0, 161.0), reader="R8,R10")


def test_vindr_majority_keeps_agreed_boxes_and_normal_images(tmp_path):
    records = read_vindr_csv(write(tmp_path, "train.csv", VINDR))

    assert records == [
        CARDIOMEGALY_MEAN,  # R8 and R9 agree (IoU 0.75); R10's lone nodule is dropped
        AORTIC_MEAN,  # outside the vocabulary, kept with label None
        LabelRecord("img2", None, None, None, normal=True, reader="R1,R2,R3"),
        LabelRecord("img3", None, None, None, normal=True, reader="R1,R2"),
    ]


def test_vindr_any_keeps_every_box(tmp_path):
    records = read_vindr_csv(write(tmp_path, "train.csv", VINDR), consensus="any")

    assert records == [
        CARDIOMEGALY_MEAN,
        LabelRecord("img1", "Nodule", NODULE, (600.0, 100.0, 640.0, 140.0), reader="R10"),
        AORTIC_MEAN,
        LabelRecord("img2", None, None, None, normal=True, reader="R1,R2,R3"),
        LabelRecord("img3", "Pneumothorax", PNEUMOTHORAX, (10.0, 10.0, 50.0, 90.0),
                    reader="R3"),
    ]


def test_vindr_all_needs_every_reader(tmp_path):
    records = read_vindr_csv(write(tmp_path, "train.csv", VINDR), consensus="all")

    # img1: no box from all 3 readers and nobody said No finding; img3: split 2 to 1
    assert records == [LabelRecord("img2", None, None, None, normal=True, reader="R1,R2,R3")]


def test_vindr_boxes_below_the_iou_stay_apart(tmp_path):
    path = write(tmp_path, "train.csv", VINDR.splitlines()[0] + "\n"
                 + "img1,Cardiomegaly,3,R1,0,0,100,100\n"
                 + "img1,Cardiomegaly,3,R2,50,0,150,100\n")  # IoU 50/150 = 0.33

    assert read_vindr_csv(path, consensus="majority") == []
    assert len(read_vindr_csv(path, consensus="majority", iou=0.3)) == 1


def test_vindr_classes_map_by_one_table_and_one_finding_named_twice_counts_once(tmp_path):
    """Consolidation and Infiltration are both Infiltration: R1 drew both on one region, R2
    only Consolidation there; Lung Opacity stays outside the vocabulary."""
    path = write(tmp_path, "train.csv", VINDR.splitlines()[0] + "\n"
                 + "img1,Consolidation,4,R1,100,100,200,200\n"
                 + "img1,Infiltration,6,R1,102,100,202,200\n"
                 + "img1,Consolidation,4,R2,104,100,204,200\n"
                 + "img1,Lung Opacity,7,R1,100,100,200,200\n"
                 + "img1,Lung Opacity,7,R2,100,100,200,200\n"
                 + "img1,No finding,14,R3,,,,\n")

    records = read_vindr_csv(path)

    assert records == [
        LabelRecord("img1", "Infiltration", INFILTRATION, (102.0, 100.0, 202.0, 200.0),
                    reader="R1,R2"),
        LabelRecord("img1", None, ("99VINDR", "7", "Lung Opacity"),
                    (100.0, 100.0, 200.0, 200.0), reader="R1,R2"),
    ]
    # Every class either layout may name has its row; Kaggle's 14 are among PhysioNet's 22.
    assert set(VINDR_MAPPING) == set(VINDR_LOCAL_CLASSES) - {"No finding"}
    assert len(VINDR_MAPPING) == 22 and set(VINDR_CLASSES) <= set(VINDR_LOCAL_CLASSES)
    assert {VINDR_MAPPING[name] for name in ("Consolidation", "Infiltration")} == \
        {"Infiltration"} and VINDR_MAPPING["Nodule/Mass"] == "Nodule"
    # PhysioNet's eight extra classes have no place in the default vocabulary.
    assert {name: VINDR_MAPPING[name] for name in set(VINDR_LOCAL_CLASSES)
            - set(VINDR_CLASSES)} == dict.fromkeys(
        ("Clavicle fracture", "Edema", "Emphysema", "Enlarged PA", "Lung cavity", "Lung cyst",
         "Mediastinal shift", "Rib fracture"))


def test_vindr_bad_rows(tmp_path):
    path = write(tmp_path, "train.csv", VINDR.splitlines()[0] + "\n"
                 + "img1,Cardiomegaly,4,R1,0,0,100,100\n"
                 + "img1,Emphysema,15,R1,0,0,100,100\n"
                 + "img2,No finding,14,R1,0,0,10,10\n"
                 + "img3,Pneumothorax,12,R1,100,0,100,50\n"
                 + "img4,Atelectasis,1,,0,0,10,10\n"
                 + "img5,Pneumonia,15,R1,0,0,10,10\n")

    with pytest.raises(LabelImportError) as caught:
        read_vindr_csv(path)

    assert caught.value.errors == [
        (2, 'class_id "4" is not that of "Cardiomegaly" (3)'),
        (3, 'class_name "Emphysema" is one of PhysioNet\'s 22 classes, which Kaggle\'s '
            "train.csv (with class_id) does not have"),
        (4, "No finding with coordinates"),
        (5, "x_max must be > x_min, got x_min 100, x_max 100"),
        (6, "rad_id is empty"),
        (7, 'class_name "Pneumonia" is not a VinDr-CXR class'),  # an image-level label
    ]


# PhysioNet vindr-cxr 1.0.0, annotations/annotations_train.csv: rad_id second, no class_id.
PHYSIONET = """image_id,rad_id,class_name,x_min,y_min,x_max,y_max
img1,R8,Cardiomegaly,100,300,300,400
img1,R9,Cardiomegaly,110,310,310,410
img1,R8,Aortic enlargement,200,100,260,160
img1,R10,Aortic enlargement,202,102,262,162
img1,R9,Rib fracture,20,20,60,40
img1,R10,Rib fracture,22,20,62,40
img1,R8,Emphysema,0,0,500,500
img2,R1,No finding,,,,
img2,R2,No finding,,,,
img2,R3,Edema,10,10,90,90
"""


def test_physionet_annotations_read_with_the_same_table_and_consensus(tmp_path):
    records = read_vindr_csv(write(tmp_path, "annotations_train.csv", PHYSIONET))

    assert records == [
        CARDIOMEGALY_MEAN,  # as from Kaggle's train.csv
        AORTIC_MEAN,  # Kaggle's class_id is its code whichever layout it came in
        LabelRecord("img1", None, ("99VINDR", "Rib fracture", "Rib fracture"),
                    (21.0, 20.0, 61.0, 40.0), reader="R9,R10"),  # PhysioNet only: no id
        # R8's lone Emphysema and R3's lone Edema have no majority
        LabelRecord("img2", None, None, None, normal=True, reader="R1,R2"),
    ]


def test_physionet_bad_rows(tmp_path):
    path = write(tmp_path, "annotations_train.csv", PHYSIONET.splitlines()[0] + "\n"
                 + "img1,R1,Pneumonia,0,0,10,10\n"
                 + "img1,R1,lung cyst,0,0,10,10\n"
                 + "img2,,Lung cyst,0,0,10,10\n")

    with pytest.raises(LabelImportError) as caught:
        read_vindr_csv(path)

    assert caught.value.errors == [(2, 'class_name "Pneumonia" is not a VinDr-CXR class'),
                                   (3, 'class_name "lung cyst" is not a VinDr-CXR class'),
                                   (4, "rad_id is empty")]


@pytest.mark.parametrize("consensus", ["majority", "all"])
def test_physionet_test_consensus_without_rad_id_keeps_every_box(tmp_path, consensus):
    """annotations_test.csv is the consensus of five readers: one reading, kept whole."""
    path = write(tmp_path, "annotations_test.csv", "image_id,class_name,x_min,y_min,x_max,y_max\n"
                 "img1,Cardiomegaly,100,300,300,400\n"
                 "img1,Nodule/Mass,600,100,640,140\n"
                 "img1,Nodule/Mass,400,100,430,130\n"
                 "img1,Lung cavity,600,100,640,140\n"
                 "img2,No finding,,,,\n")

    records = read_vindr_csv(path, consensus=consensus)

    assert records == [
        LabelRecord("img1", "Cardiomegaly", CARDIOMEGALY, (100.0, 300.0, 300.0, 400.0),
                    reader="consensus"),
        LabelRecord("img1", "Nodule", NODULE, (600.0, 100.0, 640.0, 140.0), reader="consensus"),
        LabelRecord("img1", "Nodule", NODULE, (400.0, 100.0, 430.0, 130.0), reader="consensus"),
        LabelRecord("img1", None, ("99VINDR", "Lung cavity", "Lung cavity"),
                    (600.0, 100.0, 640.0, 140.0), reader="consensus"),
        LabelRecord("img2", None, None, None, normal=True, reader="consensus"),
    ]


def test_vindr_settings_are_checked(tmp_path):
    path = write(tmp_path, "train.csv", VINDR)
    with pytest.raises(ValueError, match='consensus "most" must be one of majority, any, all'):
        read_vindr_csv(path, consensus="most")
    with pytest.raises(ValueError, match=r"iou must be a number in \(0, 1\], got 0"):
        read_vindr_csv(path, iou=0)


# --------------------------------------------------------------------------- plain CSV


def test_plain_csv(tmp_path):
    path = write(tmp_path, "labels.csv", "sop_instance_uid,label,x1,y1,x2,y2,reader\n"
                 "1.2.3,Nodule,10,20,30,40,dr_a\n"
                 "1.2.3,SCT:36118008,50,60,70.5,80,dr_a\n"
                 "1.2.4,,,,,,dr_b\n"
                 "1.2.5,SCT:233604007,1,2,3,4,\n")

    assert read_plain_csv(path) == [
        LabelRecord("1.2.3", "Nodule", NODULE, (10.0, 20.0, 30.0, 40.0), reader="dr_a"),
        LabelRecord("1.2.3", "Pneumothorax", PNEUMOTHORAX, (50.0, 60.0, 70.5, 80.0),
                    reader="dr_a"),
        LabelRecord("1.2.4", None, None, None, normal=True, reader="dr_b"),
        LabelRecord("1.2.5", None, ("SCT", "233604007", ""), (1.0, 2.0, 3.0, 4.0)),
    ]


def test_plain_csv_reads_a_training_labels_file(tmp_path):
    path = write(tmp_path, "labels.csv",
                 "file,patient_id,study_uid,sop_instance_uid,rows,columns,label,x1,y1,x2,y2\n"
                 "images/0.dcm,P1,1.2.1,1.2.1.1,300,300,Mass,5,6,50,60\n")

    assert read_plain_csv(path) == [
        LabelRecord("1.2.1.1", "Mass", ("SCT", "4147007", "Mass"), (5.0, 6.0, 50.0, 60.0))]


def test_plain_csv_bad_rows(tmp_path):
    path = write(tmp_path, "labels.csv", "sop_instance_uid,label,x1,y1,x2,y2\n"
                 "1.2.3,Nodule,30,20,10,40\n"
                 "1.2.4,,1,2,3,4\n"
                 "1.2.5,Nodul,1,2,3,4\n"
                 "1.2.6,Mass,,,,\n"
                 "1.2.7,Mass,-1,2,3,4\n"
                 "1.2.8,,,,,\n"
                 "1.2.8,Mass,1,2,3,4\n")

    with pytest.raises(LabelImportError) as caught:
        read_plain_csv(path)

    labels = ", ".join(FINDINGS)
    assert caught.value.errors == [
        (2, "x2 must be > x1, got x1 30, x2 10"),
        (3, "coordinates without a label"),
        (4, f'label "Nodul" is neither a vocabulary label ({labels}) nor SCHEME:CODE'),
        (5, 'label "Mass" without coordinates'),
        (6, "x1 must be >= 0, got -1"),
        (8, "1.2.8 already has a normal row"),
    ]


def test_plain_csv_patients(tmp_path):
    path = write(tmp_path, "labels.csv", "sop_instance_uid,label,x1,y1,x2,y2,patient_id\n"
                 "1.2.3,Nodule,10,20,30,40,P1\n"
                 "1.2.3,Mass,50,60,70,80,P1\n"
                 "1.2.4,,,,,,\n"
                 "1.2.5,,,,,,P2\n"
                 "1.2.5,Mass,1,2,3,4,P3\n")

    with pytest.raises(LabelImportError) as caught:
        read_plain_csv_patients(path)
    assert caught.value.errors == [(6, "1.2.5 has patient_id P3 here but P2 on an earlier row")]
    assert read_plain_csv_patients(write(tmp_path, "ok.csv", "\n".join(
        path.read_text().splitlines()[:5]) + "\n")) == {"1.2.3": "P1", "1.2.5": "P2"}
    assert read_plain_csv_patients(write(tmp_path, "none.csv", "sop_instance_uid,label,x1,"
                                         "y1,x2,y2\n1.2.3,,,,,\n")) == {}


def test_bytes_that_are_not_utf8_or_csv_are_one_bad_line_not_a_traceback(tmp_path):
    header = b"sop_instance_uid,label,x1,y1,x2,y2\n"
    rows = b"1.2.3,Nodule,10,20,30,40\n" * 5000  # past the text layer's first read-ahead
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(header + rows + b"1.2.4,N\xe9odule,1,2,3,4\n")
    huge_field = tmp_path / "huge.csv"
    huge_field.write_bytes(header + b"1.2.3," + b"x" * 200_000 + b",1,2,3,4\n")

    with pytest.raises(LabelImportError) as not_utf8:
        read_plain_csv(latin1)
    with pytest.raises(LabelImportError) as not_csv:
        read_plain_csv(huge_field)

    assert not_utf8.value.errors == [
        (5002, "not UTF-8 text (invalid continuation byte); save the file as CSV in UTF-8")]
    assert not_csv.value.errors == [(2, "not CSV: field larger than field limit (131072)")]
