"""Labelled images for training and evaluation: the labels file, patient splits, batches.

The labels file is a CSV with one row per box (``file,patient_id,study_uid,
sop_instance_uid,rows,columns,label,x1,y1,x2,y2``); an image without findings has one row
with an empty label. ``cxr-node synth`` writes it for generated data, the label
importers for a site's data, and ``cxr-node dataset import`` for public data sets. A file
is DICOM, PNG or JPEG (:mod:`model.image_file`); all go through the same preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.image_file import read_image
from model.preprocess import Letterbox, PreprocessConfig, preprocess, to_tensor

LABEL_COLUMNS = ("file", "patient_id", "study_uid", "sop_instance_uid", "rows", "columns",
                 "label", "x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class LabelledBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    patient_id: str
    study_uid: str
    sop_instance_uid: str
    rows: int
    columns: int
    boxes: tuple[LabelledBox, ...]

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(box.label for box in self.boxes)


def read_labels_csv(path: Path, vocabulary: Sequence[str] | None = None) -> list[LabelledImage]:
    """Read a labels file; paths are relative to its folder. Bad rows name their line.

    Besides a bad value or box, a row is refused when it has the wrong number of fields,
    gives coordinates without a label, makes an image both normal and boxed (or normal
    twice), or disagrees with the image's earlier rows on patient, study, instance or size.
    """
    path = Path(path)
    grouped: dict[str, dict] = {}
    normal_files: set[str] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(LABEL_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                _check_field_count(row, len(reader.fieldnames))
                file = row["file"]
                instance = {"path": path.parent / file, "patient_id": row["patient_id"],
                            "study_uid": row["study_uid"],
                            "sop_instance_uid": row["sop_instance_uid"],
                            "rows": int(row["rows"]), "columns": int(row["columns"])}
                image = grouped.get(file)
                if image is None:
                    image = grouped[file] = {**instance, "boxes": []}
                else:
                    _check_same_image(file, image, instance)
                if not row["label"]:
                    if any(row[k] for k in ("x1", "y1", "x2", "y2")):
                        raise ValueError("coordinates without a label")
                    if image["boxes"]:
                        raise ValueError(f"{file} is both normal and boxed")
                    if file in normal_files:
                        raise ValueError(f"{file} has more than one normal row")
                    normal_files.add(file)
                    continue
                if file in normal_files:
                    raise ValueError(f"{file} is both normal and boxed")
                if vocabulary is not None and row["label"] not in vocabulary:
                    raise ValueError(f'label "{row["label"]}" is not in the vocabulary')
                box = LabelledBox(row["label"], *(float(row[k]) for k in ("x1", "y1", "x2",
                                                                           "y2")))
                if not (0 <= box.x1 < box.x2 <= image["columns"]
                        and 0 <= box.y1 < box.y2 <= image["rows"]):
                    raise ValueError(f"box {box} is empty or outside the image")
                image["boxes"].append(box)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
    return [LabelledImage(**{**fields, "boxes": tuple(fields["boxes"])})
            for fields in grouped.values()]


def _check_field_count(row: dict, expected: int) -> None:
    """csv.DictReader pads a short row with None and puts a long row's extras under None."""
    found = sum(value is not None for key, value in row.items() if key is not None)
    found += len(row.get(None) or ())
    if found != expected:
        raise ValueError(f"{found} fields, expected {expected}")


def _check_same_image(file: str, image: dict, instance: dict) -> None:
    """Every row of one image must describe the same instance."""
    for key in ("patient_id", "study_uid", "sop_instance_uid", "rows", "columns"):
        if instance[key] != image[key]:
            raise ValueError(f"{file} has {key} {instance[key]!r} here but {image[key]!r} on "
                             f"an earlier row")


def fingerprint(images: Sequence[LabelledImage]) -> str:
    """SHA-256 over the SOP Instance UIDs and boxes: which data, labelled how."""
    digest = hashlib.sha256()
    for image in sorted(images, key=lambda i: i.sop_instance_uid):
        digest.update(image.sop_instance_uid.encode())
        for box in sorted(image.boxes, key=lambda b: (b.label, b.x1, b.y1)):
            digest.update(f"|{box.label}:{box.x1:.1f},{box.y1:.1f},{box.x2:.1f},{box.y2:.1f}"
                          .encode())
        digest.update(b"\n")
    return digest.hexdigest()


def split_by_patient(images: Sequence[LabelledImage], validation_fraction: float = 0.15,
                     seed: int = 0) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split by patient, stratified by finding, so no patient is on both sides.

    Each patient falls in the stratum of its rarest finding (or "normal"); within each
    stratum a seeded shuffle sends ``validation_fraction`` of the patients (rounded, at
    least one when the stratum has two or more) to validation.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction {validation_fraction} must be in (0, 1)")
    by_patient: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        by_patient[image.patient_id].append(image)
    frequency: dict[str, int] = defaultdict(int)
    for image in images:
        for label in image.labels:
            frequency[label] += 1
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, patient_images in sorted(by_patient.items()):
        labels = set().union(*(i.labels for i in patient_images))
        stratum = min(labels, key=lambda lab: (frequency[lab], lab)) if labels else ""
        strata[stratum].append(patient)
    rng = np.random.default_rng(seed)
    validation_patients: set[str] = set()
    for stratum in sorted(strata):
        patients = strata[stratum]
        rng.shuffle(patients)
        count = round(len(patients) * validation_fraction)
        if count == 0 and len(patients) >= 2:
            count = 1
        validation_patients.update(patients[:count])
    train = [i for i in images if i.patient_id not in validation_patients]
    validation = [i for i in images if i.patient_id in validation_patients]
    return train, validation


class DetectionDataset(torch.utils.data.Dataset):
    """Preprocessed images (cached in memory as float16) with boxes in model-input pixels.

    Augmentation, when on: horizontal flip, scale-and-crop (zoom 0.85-1.15 with a random
    shift), brightness and contrast, and Gaussian noise. Targets follow effdet's training
    convention: boxes YXYX, classes 1-based.
    """

    def __init__(self, images: Sequence[LabelledImage], labels: Sequence[str],
                 config: PreprocessConfig, augment: bool = False, seed: int = 0) -> None:
        self.images = list(images)
        self.class_of = {label: index + 1 for index, label in enumerate(labels)}
        self.config = config
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._pixels: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self.letterboxes: list[Letterbox] = []
        for image in self.images:
            pixels, letterbox = preprocess(read_image(image.path), config)
            self._pixels.append(pixels.astype(np.float16))
            boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in image.boxes],
                             dtype=np.float64).reshape(-1, 4)
            self._boxes.append(letterbox.to_model(boxes).astype(np.float32))
            self._classes.append(np.array([self.class_of[b.label] for b in image.boxes],
                                          dtype=np.float32))
            self.letterboxes.append(letterbox)

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, index: int) -> np.ndarray:
        return self._pixels[index].astype(np.float32)

    def model_boxes(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every image's boxes (XYXY, model-input pixels) and 1-based classes, unaugmented."""
        return [b.copy() for b in self._boxes], [c.copy() for c in self._classes]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pixels, boxes = self.pixels(index), self._boxes[index].copy()
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            pixels, boxes = _augment(pixels, boxes, rng)
        return pixels, boxes, self._classes[index].copy()


def _augment(pixels: np.ndarray, boxes: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = pixels.shape[0]
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    zoom = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.08, 0.08, size=2) * size
    pixels, boxes = _zoom_and_shift(pixels, boxes, zoom, shift)
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    pixels = (pixels - 0.5) * contrast + 0.5 + brightness
    pixels = pixels + rng.normal(0, rng.uniform(0, 0.03), pixels.shape)
    return np.clip(pixels, 0, 1).astype(np.float32), boxes.astype(np.float32)


def _zoom_and_shift(pixels: np.ndarray, boxes: np.ndarray, zoom: float,
                    shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale about the centre and translate, keeping the canvas; boxes follow and are
    clipped, and a box with less than half its area left in view is dropped."""
    size = pixels.shape[0]
    centre = size / 2
    # Output pixel (u, v) samples input at ((u - centre - shift) / zoom + centre).
    coordinates = (np.arange(size) + 0.5 - centre)
    sample_x = (coordinates - shift[0]) / zoom + centre - 0.5
    sample_y = (coordinates - shift[1]) / zoom + centre - 0.5
    xi = np.clip(np.round(sample_x).astype(int), 0, size - 1)
    yi = np.clip(np.round(sample_y).astype(int), 0, size - 1)
    inside = (((sample_y >= -0.5) & (sample_y < size - 0.5))[:, None]
              & ((sample_x >= -0.5) & (sample_x < size - 0.5))[None, :])
    moved = np.where(inside, pixels[yi][:, xi], 0.0)
    if len(boxes) == 0:
        return moved, boxes
    mapped = (boxes - centre) * zoom + centre + np.concatenate([shift, shift])
    clipped = np.clip(mapped, 0, size)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    keep = area(clipped) >= 0.5 * area(mapped)
    return moved, np.where(keep[:, None], clipped, np.nan)


def collate(batch: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Images to an ImageNet-normalised tensor; targets to effdet's dict of lists (YXYX)."""
    images = to_tensor([pixels for pixels, _, _ in batch])
    bboxes, classes = [], []
    for _, boxes, cls in batch:
        keep = ~np.isnan(boxes).any(axis=1)
        yxyx = boxes[keep][:, [1, 0, 3, 2]]
        bboxes.append(torch.from_numpy(np.ascontiguousarray(yxyx, dtype=np.float32)))
        classes.append(torch.from_numpy(cls[keep]))
    return images, {"bbox": bboxes, "cls": classes}
