"""A tiny labelled set: bright squares ("Mass") on noise, and normal images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from model.phantom import dx_dataset
from training.dataset import LABEL_COLUMNS

SPACING_MM = 0.5  # the squares' sides, 30-79 px, are 15-39.5 mm


def write_squares_set(out: Path, count: int, seed: int = 0, size: int = 300) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        pixels = rng.normal(1500, 100, (size, size))
        boxes = []
        if index % 3:
            x, y, side = (int(v) for v in (*rng.integers(20, size - 100, 2),
                                           rng.integers(30, 80)))
            pixels[y:y + side, x:x + side] += 1500
            boxes.append(("Mass", x, y, x + side, y + side))
        ds = dx_dataset(pixels.clip(0, 4095).astype(np.uint16),
                        patient_id=f"P{seed:02d}{index:04d}")
        ds.ImagerPixelSpacing = [SPACING_MM, SPACING_MM]
        name = f"images/{index:04d}.dcm"
        ds.save_as(out / name, enforce_file_format=True)
        base = [name, ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID, size, size]
        rows += [base + list(box) for box in boxes] or [base + [""] * 5]
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return out


@pytest.fixture(scope="session")
def squares(tmp_path_factory) -> Path:
    return write_squares_set(tmp_path_factory.mktemp("squares"), 48)
