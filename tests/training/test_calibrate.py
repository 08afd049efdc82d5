"""`cxr-node calibrate`: new thresholds on the model's own validation split, as a new version."""

from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest

from model.card import ModelCard, file_sha256
from model.detector import Detector
from tests.peers import REPO
from tests.training.conftest import write_squares_set
from training import metrics
from training.dataset import read_labels_csv
from training.train import ground_truth, predicted_boxes

# A training run (the shared fixture) and calibrate processes: limits of their own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def trained(trained_squares):
    """The shared run (tests/training/conftest.py): a model trained on the squares,
    validated on a fixed folder with 20 Masses."""
    return trained_squares.model_dir, trained_squares.validation


def _calibrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "calibrate", "--device", "cpu",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=280)


def test_calibrate_writes_a_new_version_whose_thresholds_hold_on_validation(
        trained, squares, tmp_path):
    model_dir, validation = trained
    out = tmp_path / "calibrated"

    result = _calibrate("--model", str(model_dir), "--data", str(squares), "--validation-data",
                        str(validation), "--out", str(out), "--version", "0.0.2-test",
                        "--target-sensitivity", "0.95", "--target-specificity", "0.8")

    assert result.returncode == 0, result.stderr[-2000:]
    parent, card = ModelCard.load(model_dir), ModelCard.load(out)
    assert (card.version, card.parent_version) == ("0.0.2-test", "0.0.1-test")
    assert file_sha256(out / "weights.pt") == file_sha256(model_dir / "weights.pt")
    # Findings without 10 positive validation images keep the parent's thresholds.
    assert {k: v for k, v in card.thresholds.items() if k != "Mass"} == {
        k: v for k, v in parent.thresholds.items() if k != "Mass"}
    # Mass: the rule applied to the validation images scored by the new model folder.
    images = read_labels_csv(validation / "labels.csv", vocabulary=card.labels)
    predicted = [predicted_boxes(d) for d in Detector.load(out, "cpu").predict(
        [pydicom.dcmread(i.path) for i in images], apply_thresholds=False)]
    scores = metrics.image_scores(predicted, "Mass")
    positives = metrics.image_positives(ground_truth(images), "Mass")
    assert positives.sum() == 20
    assert card.thresholds["Mass"] == pytest.approx(
        metrics.threshold_for_operating_point(scores, positives, 0.95, 0.8), abs=1e-3)
    rates = metrics.sensitivity_specificity(scores, positives, card.thresholds["Mass"])
    recorded = card.metrics["validation"]
    assert recorded["values"]["per_finding"]["Mass"]["sensitivity"] == rates["sensitivity"]
    assert "sensitivity 0.95 and specificity 0.80" in recorded["dataset"]["operating_point"]
    assert set(card.metrics) == {"validation"}  # figures at the old thresholds are not carried
    assert "Mass" in result.stdout and "0.0.2-test" in result.stdout


def test_calibrate_refuses_data_the_model_was_not_trained_on(trained, tmp_path):
    model_dir, validation = trained
    other = write_squares_set(tmp_path / "other", 12, seed=3)

    result = _calibrate("--model", str(model_dir), "--data", str(other), "--out",
                        str(tmp_path / "out"), "--version", "0.0.2-test")

    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "is not the data" in result.stderr and "trained on" in result.stderr
    assert not (tmp_path / "out").exists()
    same_version = _calibrate("--model", str(model_dir), "--data", str(other), "--out",
                              str(tmp_path / "out"), "--version", "0.0.1-test")
    assert same_version.returncode == 2 and "new version" in same_version.stderr
