"""``cxr-node calibrate``: a model's thresholds chosen again on its own validation split.

An operating point is a decision taken on validation figures, not a property of the
weights: a site that wants other targets, or a better rule for choosing, gets a new model
version with the same weights and new thresholds, and judges it like any other version
(``cxr-node evaluate``, ``cxr-node models register``). The validation split is rebuilt
exactly as training made it, and the data must be the data the model was trained on (its
fingerprint is in the card), so no training image is ever used to choose a threshold.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from model.card import ModelCard
from model.detector import Detector
from model.preprocess import PreprocessConfig
from training import metrics
from training.dataset import DetectionDataset, fingerprint
from training.train import (
    choose_thresholds,
    code_version,
    ground_truth,
    predict_dataset,
    validation_figures,
    validation_split,
)


def calibrate(model_dir: Path, data: Path, out: Path, version: str,
              target_sensitivity: float = 0.90, target_specificity: float = 0.90,
              validation_fraction: float = 0.15, seed: int = 0,
              validation_data: Path | None = None, device: str | None = None) -> ModelCard:
    """Write ``out`` (weights copied, a card with new thresholds); return its card.

    ``validation_fraction`` and ``seed`` must be the ones training used (its defaults are
    these), or ``validation_data`` the folder it validated on.
    """
    model_dir, data, out = Path(model_dir), Path(data), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; a calibrated model needs a folder of its own")
    card = ModelCard.load(model_dir)
    if version == card.version:
        raise ValueError(f'version "{version}" is the version of {model_dir}; new thresholds '
                         "make a new version")
    train_images, validation_images, split = validation_split(
        data, validation_data, validation_fraction, seed, card.labels)
    trained_on = fingerprint(train_images + validation_images)
    if trained_on != card.training_data_fingerprint:
        raise ValueError(
            f"{data} is not the data {card.name} {card.version} was trained on (fingerprint "
            f"{trained_on[:12]}, card {card.training_data_fingerprint[:12]}): "
            "its validation split could hold images the model was trained on")

    detector = Detector.load(model_dir, device)
    validation_set = DetectionDataset(validation_images, card.labels,
                                      PreprocessConfig.from_dict(card.preprocessing))
    predictions = predict_dataset(detector, validation_set)
    truth = ground_truth(validation_images)
    thresholds = choose_thresholds(truth, predictions, card.labels, target_sensitivity,
                                   target_specificity, card.thresholds)
    report = metrics.evaluate(truth, predictions, list(card.labels), thresholds)

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / card.weights_file, out / card.weights_file)
    # Figures measured at the old thresholds no longer describe this version: only the
    # validation figures at the new ones are kept; evaluate it again on held-out data.
    calibrated = replace(
        card, version=version, parent_version=card.version, thresholds=thresholds,
        code_version=code_version(), created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        metrics={"validation": validation_figures(
            data, len(validation_images), split, target_sensitivity, target_specificity,
            report, card.labels)})
    calibrated.save(out)
    (out / "validation_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return calibrated
