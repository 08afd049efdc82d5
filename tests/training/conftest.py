"""A tiny labelled set: bright squares ("Mass") on noise, and normal images; one short
training run on it, shared."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from model.phantom import dx_dataset
from training.dataset import LABEL_COLUMNS

if TYPE_CHECKING:
    from training.train import TrainConfig

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


@dataclass(frozen=True)
class TrainedSquares:
    config: TrainConfig
    model_dir: Path
    validation: Path  # 30 squares images, 20 with a Mass


@pytest.fixture(scope="session")
def trained_squares(squares, tmp_path_factory) -> TrainedSquares:
    """One short run, shared by every test that reads a trained model or its run folder
    (test_train.py, test_calibrate.py): a training run is the costliest thing these tests do.

    3 epochs at 128 px on the 48 squares, validated on a fixed folder of 30 (20 with a
    Mass, enough to choose a threshold from), logged to MLflow. At 128 px the squares are
    13-34 px, so the anchors are scaled down to match (2: the smallest are 16 px).
    """
    from training.train import TrainConfig, train  # torch: only where a model is trained

    tmp = tmp_path_factory.mktemp("trained")
    validation = write_squares_set(tmp / "validation", 30, seed=7)
    config = TrainConfig(data=squares, validation_data=validation, out=tmp / "run",
                         image_size=128, anchor_scale=2.0, epochs=3, batch_size=8,
                         learning_rate=4e-3, device="cpu", version="0.0.1-test",
                         mlflow_tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # MLflow puts artifacts beside the working directory
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which would make every
        # later run in this process log there: the context restores the environment.
        patch.setenv("MLFLOW_TRACKING_URI", "")
        model_dir = train(config, progress=False)
    return TrainedSquares(config, model_dir, validation)
