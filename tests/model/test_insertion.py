"""Findings inserted into a real chest radiograph: deterministic, inside the lungs, valid DX."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from model.phantom import MASS, NODULE, synthesize_case
from model.phantom.insertion import INSERTED_LABELS, insert_findings, write_inserted_set
from model.vocabulary import DEFAULT_LABELS
from tests.model.test_phantom import attenuation, coords, inside, read_back, region
from tests.peers import CXR_NODE, REPO
from training.dataset import read_labels_csv


@pytest.fixture
def rg1(chest_cr):
    """RG1_UNCR.dcm: a real PA chest CR, 1955 x 1841, MONOCHROME1, 15 bits, spacing 0\\0."""
    return chest_cr["RG1_UNCR.dcm"]


def test_same_seed_and_index_give_identical_pixels_and_boxes(rg1):
    source = pydicom.dcmread(rg1)
    first = insert_findings(source, 5, 3)
    again = insert_findings(pydicom.dcmread(rg1), 5, 3)
    other = insert_findings(source, 5, 4)
    phantom = synthesize_case(5, 3, size_range=(64, 64))

    assert first.dataset.PixelData == again.dataset.PixelData
    assert first.boxes == again.boxes
    assert first.dataset.SOPInstanceUID == again.dataset.SOPInstanceUID
    assert first.patient_id == "INS0005000003"
    assert other.dataset.PixelData != first.dataset.PixelData
    assert other.dataset.SOPInstanceUID != first.dataset.SOPInstanceUID
    assert first.dataset.StudyInstanceUID != phantom.dataset.StudyInstanceUID
    assert source.PixelData == pydicom.dcmread(rg1).PixelData, "the source was changed"


def test_findings_lie_inside_the_lungs_found(rg1):
    source = pydicom.dcmread(rg1)
    rows, columns = source.Rows, source.Columns
    cases = [insert_findings(source, 7, i, normal_fraction=0) for i in range(10)]
    right, left = cases[0].lungs

    assert all(case.lungs_found and case.lungs == (right, left) for case in cases)
    # PA: the patient's right lung on the image's left, each a good part of the image tall.
    assert right[2] <= columns / 2 + 0.1 * columns and left[0] >= columns / 2 - 0.1 * columns
    assert all(lung[3] - lung[1] > 0.35 * rows for lung in (right, left))
    labels = set()
    for case in cases:
        assert case.boxes
        for box in case.boxes:
            assert 0 <= box.x1 < box.x2 <= columns and 0 <= box.y1 < box.y2 <= rows, box
            assert any(inside(coords(box), lung) for lung in (right, left)), box
            labels.add(box.label)
    assert {NODULE, MASS} <= labels <= set(INSERTED_LABELS)


def test_each_finding_raises_attenuation_where_its_box_is(rg1):
    source = pydicom.dcmread(rg1)
    before = attenuation(source)
    nodules = 0
    for index in range(8):
        case = insert_findings(source, 3, index, normal_fraction=0)
        after = attenuation(case.dataset)
        for box in case.boxes:
            gain = region(after, coords(box)).mean() - region(before, coords(box)).mean()
            assert gain > 0.01, (index, box, gain)
            nodules += box.label == NODULE
        # Outside the lungs only the mild noise: no drift of the whole image.
        assert abs(float((after[:100] - before[:100]).mean())) < 0.001
    assert nodules >= 2
    # MONOCHROME1: more attenuation is stored as lower values (shown brighter).
    box = next(b for b in case.boxes)
    assert (region(case.dataset.pixel_array.astype(float), coords(box)).mean()
            < region(source.pixel_array.astype(float), coords(box)).mean())


def test_monochrome2_phantom_lungs_are_found_and_findings_brighten_it():
    index = next(i for i in range(20) if synthesize_case(
        9, i, size_range=(384, 512)).dataset.PhotometricInterpretation == "MONOCHROME2")
    phantom = synthesize_case(9, index, size_range=(384, 512), normal_fraction=1)
    truth = (phantom.anatomy.right_lung, phantom.anatomy.left_lung)
    case = insert_findings(phantom.dataset, 1, 2, normal_fraction=0)

    assert case.lungs_found and case.boxes
    for found, drawn in zip(case.lungs, truth, strict=True):
        assert inside(found, drawn, slack=8), (found, drawn)
        assert (found[3] - found[1]) > 0.7 * (drawn[3] - drawn[1])
    for box in case.boxes:
        assert (region(case.dataset.pixel_array.astype(float), coords(box)).mean()
                > region(phantom.dataset.pixel_array.astype(float), coords(box)).mean())


def test_written_file_is_valid_dx_without_the_source_patient(rg1, tmp_path, tool):
    dciodvfy = tool("dciodvfy")
    source = pydicom.dcmread(rg1)
    case = insert_findings(source, 2, 0)
    path = tmp_path / "inserted.dcm"
    case.dataset.save_as(path, enforce_file_format=True)

    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "DXImageForPresentation" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    read = pydicom.dcmread(path)
    assert np.array_equal(read.pixel_array, case.dataset.pixel_array)
    assert (read.PhotometricInterpretation, read.BitsStored) == ("MONOCHROME1", 15)
    assert (read.Rows, read.Columns) == (source.Rows, source.Columns)
    assert read.ImageType[0] == "DERIVED" and "assumed" in read.DerivationDescription
    assert str(source.PatientID).encode() not in path.read_bytes()
    assert str(source.PatientName).encode() not in path.read_bytes()


def test_inserted_set_reads_back_with_the_training_reader(rg1, tmp_path):
    labels_path = write_inserted_set(rg1, tmp_path / "set", 5, 4, normal_fraction=0.4)
    images, _ = read_back(labels_path)

    assert len(images) == 5
    source = pydicom.dcmread(rg1)
    for index in range(5):
        case = insert_findings(source, 4, index, normal_fraction=0.4)
        image = images[f"images/{case.patient_id}.dcm"]
        assert image.sop_instance_uid == case.dataset.SOPInstanceUID
        assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in image.boxes] == [
            (b.label, *coords(b)) for b in case.boxes]


def test_synth_onto_command_writes_the_images(rg1, tmp_path):
    out = tmp_path / "onto"
    result = subprocess.run([*CXR_NODE, "synth", "--onto", str(rg1), "--out", str(out),
                             "--count", "3", "--seed", "5"],
                            cwd=REPO, capture_output=True, text=True, timeout=100)

    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"INS0005{i:06d}.dcm" for i in range(3)]
    assert len(read_labels_csv(out / "labels.csv", vocabulary=DEFAULT_LABELS)) == 3


@pytest.mark.parametrize("attributes, error, message", [
    ({"ViewPosition": "LL"}, ValueError, "not a frontal"),
    ({"BodyPartExamined": "KNEE"}, ValueError, "not CHEST"),
    ({"PhotometricInterpretation": "RGB"}, ValueError, "photometric"),
])
def test_unsuitable_sources_are_refused_by_name(rg1, attributes, error, message):
    source = pydicom.dcmread(rg1)
    for keyword, value in attributes.items():
        setattr(source, keyword, value)
    with pytest.raises(error, match=message):
        insert_findings(source, 0, 0)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seed": -1}, ValueError, "seed -1"),
    ({"index": 1.5}, TypeError, "index must be an int"),
    ({"normal_fraction": 2}, ValueError, "normal_fraction"),
])
def test_invalid_arguments_are_refused_by_name(rg1, kwargs, error, message):
    arguments = {"seed": 0, "index": 0, **kwargs}
    with pytest.raises(error, match=message):
        insert_findings(pydicom.dcmread(rg1), arguments.pop("seed"), arguments.pop("index"),
                        **arguments)
