"""A short training run on a tiny set: the loss falls, the run folder is complete, resume works."""

from __future__ import annotations

import json

import pytest

from model.card import ModelCard
from model.detector import Detector
from training.train import TrainConfig, train

# Training runs: a limit of their own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


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
    # Squares of 26-67 px on the 256 px input; the smallest anchors are 32 px (scale 4).
    coverage = json.loads((tmp_path / "run" / "anchor_coverage.json").read_text())
    assert coverage["Mass"]["boxes"] > 0 and coverage["Mass"]["covered"] > 0.5
    assert coverage["Nodule"] == {"boxes": 0, "covered": None, "anchors_per_box": None}

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


def test_a_run_is_logged_to_mlflow_when_a_tracking_uri_is_given(squares, tmp_path,
                                                                monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts beside the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrainConfig(data=squares, out=tmp_path / "run", image_size=256, epochs=2,
                         batch_size=8, device="cpu", version="0.0.2-mlflow",
                         mlflow_tracking_uri=uri)

    train(config, progress=False)

    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
    assert run.data.params["image_size"] == "256"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "map50")] == [1, 2]
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"card.json", "training_curves.png", "config.json"} <= logged
    assert run.info.status == "FINISHED"
