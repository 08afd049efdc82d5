"""A short training run on a tiny set: the loss falls, the run folder is complete, resume works."""

from __future__ import annotations

import json

import pytest

from model.card import ModelCard
from model.detector import Detector
from training.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_short_run_lowers_the_loss_and_writes_a_loadable_model(squares, tmp_path):
    config = TrainConfig(data=squares, out=tmp_path / "run", image_size=256, epochs=3,
                         batch_size=8, learning_rate=2e-3, device="cpu", version="0.0.1-test")

    model_dir = train(config, progress=False)

    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    assert {"map50", "map40", "class_loss", "box_loss"} <= set(epochs[0])
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["image_size"] == 256 and saved["epochs"] == 3

    card = ModelCard.load(model_dir)
    assert card.version == "0.0.1-test" and "Not for clinical use" in card.intended_use
    assert set(card.thresholds) == set(card.labels)
    assert card.metrics["validation"]["dataset"]["images"] > 0
    assert Detector.load(model_dir, device="cpu").predict_images  # loads with its weights


def test_training_resumes_from_its_checkpoint(squares, tmp_path):
    first = TrainConfig(data=squares, out=tmp_path / "run", image_size=256, epochs=1,
                        batch_size=8, device="cpu")
    train(first, progress=False)
    longer = TrainConfig(data=squares, out=tmp_path / "run", image_size=256, epochs=2,
                         batch_size=8, device="cpu")
    train(longer, progress=False)

    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert epochs == [1, 2]  # the second call ran only the missing epoch
