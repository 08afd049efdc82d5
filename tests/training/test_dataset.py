"""Labels files, patient splits and augmented batches."""

from __future__ import annotations

import numpy as np
import pytest

from model.preprocess import PreprocessConfig
from training.dataset import (
    LABEL_COLUMNS,
    DetectionDataset,
    LabelledBox,
    LabelledImage,
    collate,
    fingerprint,
    read_labels_csv,
    split_by_patient,
)


def test_labels_file_reads_boxes_and_normal_images(squares):
    images = read_labels_csv(squares / "labels.csv")
    assert len(images) == 48
    normal = [i for i in images if not i.boxes]
    assert len(normal) == 16
    assert all(i.path.is_file() for i in images)
    assert {b.label for i in images for b in i.boxes} == {"Mass"}


@pytest.mark.parametrize(("row", "message"), [
    ("images/x.dcm,P1,1.2,1.3,100,100,Mass,10,10,5,50", "line 3: box"),
    ("images/x.dcm,P1,1.2,1.3,100,100,Mass,10,10,200,50", "line 3: box"),
    ("images/x.dcm,P1,1.2,1.3,100,100,Unicorn,1,1,5,5", 'line 3: label "Unicorn"'),
    ("images/x.dcm,P1,1.2,1.3,100,100,Mass,a,1,5,5", "line 3"),
])
def test_bad_rows_are_reported_with_their_line(tmp_path, row, message):
    path = tmp_path / "labels.csv"
    path.write_text("file,patient_id,study_uid,sop_instance_uid,rows,columns,label,x1,y1,x2,y2\n"
                    "images/y.dcm,P0,1.2,1.4,100,100,,,,,\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        read_labels_csv(path, vocabulary=["Mass", "Nodule"])


HEADER = ",".join(LABEL_COLUMNS) + "\n"
NORMAL = "images/a.dcm,P,1.2,1.3,10,10,,,,,\n"


@pytest.mark.parametrize(("content", "message"), [
    ("file,patient_id\n", "missing columns"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,0.5,2\n", "line 2: box .* empty"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2\n", "line 2: 10 fields, expected 11"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2,3\n",
     "line 2: 12 fields, expected 11"),
    (HEADER + NORMAL + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2\n",
     "line 3: images/a.dcm is both normal and boxed"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2\n" + NORMAL,
     "line 3: images/a.dcm is both normal and boxed"),
    (HEADER + NORMAL + NORMAL, "line 3: images/a.dcm has more than one normal row"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,,1,1,2,2\n", "line 2: coordinates without a label"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2\n"
     "images/a.dcm,Q,1.2,1.3,10,10,Mass,3,3,4,4\n", "line 3: images/a.dcm has patient_id 'Q'"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2\n"
     "images/a.dcm,P,1.9,1.3,10,10,Mass,3,3,4,4\n", "line 3: images/a.dcm has study_uid"),
    (HEADER + "images/a.dcm,P,1.2,1.3,10,10,Nodule,1,1,2,2\n"
     "images/a.dcm,P,1.2,1.3,10,12,Mass,3,3,4,4\n", "line 3: images/a.dcm has columns 12"),
], ids=["header", "degenerate-box", "short-row", "long-row", "normal-then-boxed",
        "boxed-then-normal", "normal-twice", "coordinates-without-label",
        "patient-disagrees", "study-disagrees", "size-disagrees"])
def test_malformed_files_are_refused_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_labels_csv(path)
    assert str(path) in str(error.value)


def _image(patient: str, labels: list[str], n: int) -> LabelledImage:
    return LabelledImage(path=None, patient_id=patient, study_uid=f"1.{n}",
                         sop_instance_uid=f"2.{n}", rows=100, columns=100,
                         boxes=tuple(LabelledBox(lab, 1, 1, 9, 9) for lab in labels))


def test_split_keeps_patients_whole_and_stratifies_by_finding():
    images = []
    for p in range(200):
        labels = ["Nodule"] if p % 10 == 0 else (["Mass"] if p % 2 else [])
        images += [_image(f"P{p}", labels, 2 * p), _image(f"P{p}", labels, 2 * p + 1)]
    train, validation = split_by_patient(images, 0.15, seed=1)

    assert not {i.patient_id for i in train} & {i.patient_id for i in validation}
    assert len(validation) == pytest.approx(0.15 * len(images), abs=4)
    share = lambda part, label: sum(label in i.labels for i in part) / len(part)  # noqa: E731
    for label in ("Nodule", "Mass"):
        assert share(validation, label) == pytest.approx(share(images, label), abs=0.03)
    assert split_by_patient(images, 0.15, seed=1) == (train, validation)


def test_fingerprint_changes_when_a_label_changes():
    images = [_image("P1", ["Mass"], 1), _image("P2", [], 2)]
    changed = [_image("P1", ["Nodule"], 1), _image("P2", [], 2)]
    assert fingerprint(images) == fingerprint(list(reversed(images)))
    assert fingerprint(images) != fingerprint(changed)


def test_augmented_boxes_stay_on_the_bright_square(squares):
    images = [i for i in read_labels_csv(squares / "labels.csv") if i.boxes][:6]
    dataset = DetectionDataset(images, ["Mass"], PreprocessConfig(image_size=256),
                               augment=True, seed=3)
    for epoch in range(3):
        dataset.epoch = epoch
        for index in range(len(dataset)):
            pixels, boxes, classes = dataset[index]
            if np.isnan(boxes).any():
                continue
            x1, y1, x2, y2 = np.round(boxes[0]).astype(int)
            inside = pixels[y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean()
            assert inside > np.median(pixels) + 0.2, "the box no longer covers the square"
            assert classes.tolist() == [1.0]


def test_collate_gives_effdet_targets(squares):
    images = read_labels_csv(squares / "labels.csv")[:4]
    dataset = DetectionDataset(images, ["Mass"], PreprocessConfig(image_size=256))
    batch, target = collate([dataset[i] for i in range(4)])
    assert batch.shape == (4, 3, 256, 256)
    for index, image in enumerate(images):
        assert len(target["bbox"][index]) == len(image.boxes)
        if image.boxes:
            x1, y1, x2, y2 = dataset.letterboxes[index].to_model(
                np.array([[b.x1, b.y1, b.x2, b.y2] for b in image.boxes]))[0]
            assert target["bbox"][index][0].tolist() == pytest.approx([y1, x1, y2, x2], abs=1e-3)
            assert target["cls"][index].tolist() == [1.0]
