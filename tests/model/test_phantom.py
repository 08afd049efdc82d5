"""Synthetic radiographs: deterministic, valid DX, every finding drawn where its box says."""

from __future__ import annotations

import csv
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model.phantom import (
    ATELECTASIS,
    CARDIOMEGALY,
    EFFUSION,
    INFILTRATION,
    LABELS_HEADER,
    MASS,
    NODULE,
    PNEUMOTHORAX,
    Box,
    synthesize_case,
    write_synthetic_set,
)
from model.vocabulary import DEFAULT_LABELS
from training.dataset import read_labels_csv

SEED = 11
COUNT = 60
SMALL = (256, 384)
LUNG_FINDINGS = {NODULE, MASS, EFFUSION, PNEUMOTHORAX, ATELECTASIS, INFILTRATION}


@pytest.fixture(scope="module")
def cases():
    return [synthesize_case(SEED, i, size_range=SMALL) for i in range(COUNT)]


@pytest.fixture(scope="module")
def undrawn():
    """The same cases rendered without their findings."""
    return [synthesize_case(SEED, i, size_range=SMALL, draw_findings=False) for i in range(COUNT)]


def attenuation(ds) -> np.ndarray:
    """Stored values as 0..1, higher = more attenuating (bright on screen) for either polarity."""
    values = ds.pixel_array.astype(np.float64) / (2**ds.BitsStored - 1)
    return 1 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def region(image: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return image[math.floor(y1):math.ceil(y2), math.floor(x1):math.ceil(x2)]


def coords(box: Box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


def inside(inner, outer, slack: float = 0.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)

def read_back(labels_path: Path) -> tuple[dict, list[list[str]]]:
    """A written set through the training reader, ({file relative to the set: image}, the
    file's raw rows), its header checked on the way."""
    with labels_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == LABELS_HEADER
    return {image.path.relative_to(labels_path.parent).as_posix(): image
            for image in read_labels_csv(labels_path, vocabulary=DEFAULT_LABELS)}, rows



def test_same_seed_and_index_give_byte_identical_files(tmp_path):
    first = synthesize_case(3, 17, size_range=SMALL)
    again = synthesize_case(3, 17, size_range=SMALL)
    other = synthesize_case(3, 18, size_range=SMALL)
    first.dataset.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    again.dataset.save_as(tmp_path / "b.dcm", enforce_file_format=True)

    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    assert first.boxes == again.boxes
    assert first.patient_id == "SYN0003000017"
    assert first.dataset.SOPInstanceUID.startswith("2.25.")
    assert other.dataset.SOPInstanceUID != first.dataset.SOPInstanceUID
    assert other.dataset.PixelData != first.dataset.PixelData


def test_every_finding_appears_and_normals_follow_the_fraction(cases):
    seen = {box.label for case in cases for box in case.boxes}
    normal = sum(not case.boxes for case in cases)

    assert seen == set(DEFAULT_LABELS)
    # 0.3 of 60 is 18, binomial standard deviation 3.5: allow three of them.
    assert 8 <= normal <= 28, f"{normal} normal images of {COUNT}"
    assert all(not c.boxes for c in (synthesize_case(1, i, size_range=SMALL, normal_fraction=1)
                                     for i in range(3)))
    assert all(c.boxes for c in (synthesize_case(1, i, size_range=SMALL, normal_fraction=0)
                                 for i in range(3)))


def test_abnormal_cases_carry_one_to_three_findings_within_the_limits(cases):
    for case in cases:
        labels = [box.label for box in case.boxes]
        assert len(labels) <= 3
        assert labels.count(CARDIOMEGALY) <= 1 and labels.count(PNEUMOTHORAX) <= 1
        sides = [box.x1 + box.x2 < case.dataset.Columns for box in case.boxes
                 if box.label in (EFFUSION, PNEUMOTHORAX)]
        assert len(sides) == len(set(sides)), f"{case.patient_id}: two pleural findings, one side"


def test_boxes_lie_inside_the_image_and_are_not_degenerate(cases):
    for case in cases:
        rows, columns = case.dataset.Rows, case.dataset.Columns
        assert SMALL[0] <= rows <= SMALL[1] and SMALL[0] <= columns <= SMALL[1]
        for box in case.boxes:
            assert 0 <= box.x1 < box.x2 <= columns and 0 <= box.y1 < box.y2 <= rows, box


def test_lung_findings_lie_inside_a_lung(cases):
    for case in cases:
        lungs = (case.anatomy.right_lung, case.anatomy.left_lung)
        for box in case.boxes:
            if box.label in LUNG_FINDINGS:
                assert any(inside(coords(box), lung) for lung in lungs), (case.patient_id, box)


def test_effusion_fills_the_lung_base_and_pneumothorax_reaches_the_apex(cases):
    for case in cases:
        for box in case.boxes:
            lung = min((case.anatomy.right_lung, case.anatomy.left_lung),
                       key=lambda lung, box=box: abs(lung[0] + lung[2] - box.x1 - box.x2))
            if box.label == EFFUSION:
                assert box.y2 == lung[3] and box.y1 > lung[1] + 0.3 * (lung[3] - lung[1])
            if box.label == PNEUMOTHORAX:
                assert box.y1 - lung[1] < 0.05 * (lung[3] - lung[1]), (case.patient_id, box)


def test_finding_sizes_follow_the_pixel_spacing(cases):
    for case in cases:
        spacing = float(case.dataset.ImagerPixelSpacing[0])
        for box in case.boxes:
            size_mm = max(box.width, box.height) * spacing
            if box.label == NODULE:
                assert 4 <= size_mm <= 35, (case.patient_id, size_mm)
            if box.label == MASS:
                assert 28 <= size_mm <= 100, (case.patient_id, size_mm)


def test_each_finding_changes_its_box_the_way_it_should(cases, undrawn):
    """Dense findings raise attenuation in their box; a pneumothorax lowers it and leaves
    the air rim without lung markings (less texture than the same lung without it)."""
    checked = set()
    for case, plain in zip(cases, undrawn, strict=True):
        with_finding, without = attenuation(case.dataset), attenuation(plain.dataset)
        assert [b.label for b in plain.boxes] == [b.label for b in case.boxes]
        if not case.boxes:
            assert case.dataset.PixelData == plain.dataset.PixelData
        for box in case.boxes:
            changed = region(with_finding, coords(box)) - region(without, coords(box))
            if box.label == PNEUMOTHORAX:
                rim = changed < 0.5 * np.percentile(changed, 5)
                assert changed.mean() < 0 and changed[rim].mean() < -0.03, case.patient_id
            else:
                assert changed.mean() > 0.015, (case.patient_id, box.label, changed.mean())
            checked.add(box.label)
    assert checked == set(DEFAULT_LABELS)


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 square around each pixel."""
    width = 2 * radius + 1
    total = np.pad(np.pad(image, radius, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (total[width:, width:] - total[:-width, width:] - total[width:, :-width]
            + total[:-width, :-width]) / width**2


def test_pneumothorax_rim_has_no_lung_markings():
    """Band-pass texture (vessels, parenchyma; quantum noise averaged out) in the air rim is
    lower than in the same place of the same case drawn without the pneumothorax."""
    found, index = 0, 0
    while found < 3:
        case = synthesize_case(21, index, size_range=(768, 768), normal_fraction=0)
        index += 1
        boxes = [coords(box) for box in case.boxes if box.label == PNEUMOTHORAX]
        if not boxes:
            continue
        found += 1
        plain = synthesize_case(21, index - 1, size_range=(768, 768), normal_fraction=0,
                                draw_findings=False)
        with_rim, without = (region(attenuation(c.dataset), boxes[0]) for c in (case, plain))
        changed = with_rim - without
        rim = box_mean((changed < 0.5 * np.percentile(changed, 5)).astype(float), 6) > 0.999
        assert rim.sum() > 1000, case.patient_id
        texture = [(box_mean(image, 2) - box_mean(image, 6))[rim].std()
                   for image in (with_rim, without)]
        assert texture[0] < 0.9 * texture[1], (case.patient_id, texture)


def test_cardiothoracic_ratio_separates_cardiomegaly(cases):
    for case in cases:
        ratio = (case.anatomy.heart[2] - case.anatomy.heart[0]) / case.anatomy.thorax_width
        enlarged = [box for box in case.boxes if box.label == CARDIOMEGALY]
        if enlarged:
            assert coords(enlarged[0]) == case.anatomy.heart
            assert ratio > 0.5, (case.patient_id, ratio)
        else:
            assert ratio < 0.5, (case.patient_id, ratio)


def test_heart_shows_brighter_than_the_lungs_in_both_polarities(cases):
    polarities = set()
    for case in cases:
        image, anatomy = attenuation(case.dataset), case.anatomy
        heart = region(image, anatomy.heart).mean()
        for lung in (anatomy.right_lung, anatomy.left_lung):
            x1, y1, x2, y2 = lung
            middle = (x1 + 0.3 * (x2 - x1), y1 + 0.2 * (y2 - y1), x2 - 0.3 * (x2 - x1),
                      y1 + 0.4 * (y2 - y1))
            assert heart > region(image, middle).mean() + 0.05, case.patient_id
        polarities.add(case.dataset.PhotometricInterpretation)
    assert polarities == {"MONOCHROME1", "MONOCHROME2"}


def test_acquisition_varies_and_is_consistent(cases):
    bits = {case.dataset.BitsStored for case in cases}
    assert bits <= set(range(10, 17)) and len(bits) >= 4
    assert len({float(case.dataset.ImagerPixelSpacing[0]) for case in cases}) == COUNT
    for case in cases:
        ds = case.dataset
        assert int(ds.pixel_array.max()) <= 2**ds.BitsStored - 1
        inverse = ds.PhotometricInterpretation == "MONOCHROME1"
        assert ds.PresentationLUTShape == ("INVERSE" if inverse else "IDENTITY")
        assert ds.PixelIntensityRelationshipSign == (1 if inverse else -1)
        assert 0 < ds.WindowWidth <= 2**ds.BitsStored


def test_written_files_are_valid_dx_for_both_polarities(tmp_path, tool):
    dciodvfy = tool("dciodvfy")
    wanted, index = {"MONOCHROME1", "MONOCHROME2"}, 0
    while wanted:
        case = synthesize_case(5, index, size_range=SMALL)
        photometric = case.dataset.PhotometricInterpretation
        index += 1
        if photometric not in wanted:
            continue
        wanted.discard(photometric)
        path = tmp_path / f"{photometric}.dcm"
        case.dataset.save_as(path, enforce_file_format=True)

        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                check=False)
        report = result.stdout + result.stderr
        assert "DXImageForPresentation" in report
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
        read = pydicom.dcmread(path)
        assert read.PhotometricInterpretation == photometric
        assert np.array_equal(read.pixel_array, case.dataset.pixel_array)


def test_labels_csv_round_trips_with_the_training_reader(tmp_path):
    labels_path = write_synthetic_set(tmp_path / "set", 12, 4, size_range=SMALL,
                                      normal_fraction=0.4)
    images, rows = read_back(labels_path)

    assert len(images) == 12
    assert any(not image.boxes for image in images.values())
    assert any(image.boxes for image in images.values())
    for index in range(12):
        case = synthesize_case(4, index, size_range=SMALL, normal_fraction=0.4)
        file = f"images/{case.patient_id}.dcm"
        image = images[file]
        ds = pydicom.dcmread(image.path)
        assert (image.patient_id, image.study_uid, image.sop_instance_uid) == (
            ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID)
        assert (image.rows, image.columns) == (ds.Rows, ds.Columns)
        assert [(b.label, b.x1, b.y1, b.x2, b.y2) for b in image.boxes] == [
            (b.label, *coords(b)) for b in case.boxes]
        own_rows = [row for row in rows[1:] if row[0] == file]
        if not image.boxes:
            assert len(own_rows) == 1 and own_rows[0][6:] == ["", "", "", "", ""]
        else:
            assert len(own_rows) == len(image.boxes)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"seed": -1}, ValueError, "seed -1"),
    ({"seed": 10_000}, ValueError, "seed 10000"),
    ({"index": 1.5}, TypeError, "index must be an int"),
    ({"size_range": (32, 64)}, ValueError, "size_range"),
    ({"size_range": (400, 300)}, ValueError, "size_range"),
    ({"size_range": 512}, TypeError, "size_range"),
    ({"normal_fraction": 1.5}, ValueError, "normal_fraction"),
])
def test_invalid_arguments_are_refused_by_name(kwargs, error, message):
    arguments = {"seed": 0, "index": 0, **kwargs}
    with pytest.raises(error, match=message):
        synthesize_case(arguments.pop("seed"), arguments.pop("index"), **arguments)


def test_several_workers_write_the_same_set_as_one(tmp_path):
    one = write_synthetic_set(tmp_path / "one", 6, 5, size_range=SMALL)
    two = write_synthetic_set(tmp_path / "two", 6, 5, workers=2, size_range=SMALL)

    assert one.read_bytes() == two.read_bytes()
    files = sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
    assert len(files) == 6 and files == sorted(p.name for p in (tmp_path / "two" / "images")
                                               .iterdir())
    for name in files:
        assert ((tmp_path / "one" / "images" / name).read_bytes()
                == (tmp_path / "two" / "images" / name).read_bytes())


def test_write_synthetic_set_refuses_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="size"):
        write_synthetic_set(tmp_path, 1, 0, size=512)


def test_generation_speed():
    timings = {}
    for size in (512, 2048):
        start = time.perf_counter()
        synthesize_case(2, 0, size_range=(size, size))
        timings[size] = time.perf_counter() - start
    print(f"seconds per case: 512x512 {timings[512]:.2f}, 2048x2048 {timings[2048]:.2f}")
    assert timings[2048] < 10
