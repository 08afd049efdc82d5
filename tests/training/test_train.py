"""A short training run on a tiny set: the loss falls, the run folder is complete, resume works."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from model.card import ModelCard
from model.detector import Detector
from tests.peers import REPO
from training.train import TrainConfig, TrainError, train

# Training runs: a limit of their own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def three_epochs(trained_squares):
    """The shared 3-epoch run (tests/training/conftest.py): its config and model folder."""
    return trained_squares.config, trained_squares.model_dir


def test_short_run_lowers_the_loss_and_writes_a_loadable_model(three_epochs):
    config, model_dir = three_epochs

    epochs = [json.loads(line) for line in (config.out / "metrics.jsonl").open()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    assert {"map50", "map40", "class_loss", "box_loss"} <= set(epochs[0])
    assert (config.out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((config.out / "config.json").read_text())
    assert saved["image_size"] == 128 and saved["epochs"] == 3
    # Squares of 13-34 px on the 128 px input; the smallest anchors are 16 px (scale 2).
    coverage = json.loads((config.out / "anchor_coverage.json").read_text())
    assert coverage["Mass"]["boxes"] > 0 and coverage["Mass"]["covered"] > 0.5
    assert coverage["Nodule"] == {"boxes": 0, "covered": None, "anchors_per_box": None}

    card = ModelCard.load(model_dir)
    assert card.version == "0.0.1-test" and "Not for clinical use" in card.intended_use
    assert set(card.thresholds) == set(card.labels)
    assert card.metrics["validation"]["dataset"]["images"] > 0
    assert Detector.load(model_dir, device="cpu").predict_images  # loads with its weights


def test_training_resumes_from_its_checkpoint(three_epochs, tmp_path):
    config = dataclasses.replace(three_epochs[0], out=tmp_path / "run", epochs=4,
                                 mlflow_tracking_uri=None)
    shutil.copytree(three_epochs[0].out, config.out)

    train(config, progress=False)

    epochs = [json.loads(line)["epoch"] for line in (config.out / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3, 4]  # the second call ran only the missing epoch


def test_a_run_is_logged_to_mlflow_when_a_tracking_uri_is_given(three_epochs):
    import mlflow

    config = three_epochs[0]
    client = mlflow.MlflowClient(tracking_uri=config.mlflow_tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
    assert run.data.params["image_size"] == "128"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "map50")] == [1, 2, 3]
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"card.json", "training_curves.png", "config.json"} <= logged
    assert run.info.status == "FINISHED"


def normal_images_only(squares, out):
    """A validation folder with the squares set's images that have no box."""
    out.mkdir()
    with open(squares / "labels.csv", newline="") as source:
        rows = list(csv.reader(source))
    with open(out / "labels.csv", "w", newline="") as target:
        csv.writer(target).writerows([rows[0]] + [
            [str(squares / row[0]), *row[1:]] for row in rows[1:] if not row[6]])
    return out


@pytest.fixture(scope="module")
def first_epoch(squares, tmp_path_factory):
    """One epoch, one step (8 images at 128 px), validated on images without a box; each
    test copies the run folder. Returns the config and what the run logged."""
    tmp = tmp_path_factory.mktemp("first")
    config = TrainConfig(data=squares, validation_data=normal_images_only(squares, tmp / "normal"),
                         out=tmp / "run", image_size=128, epochs=1, batch_size=8,
                         max_train_images=8, device="cpu")
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("cxr_node.train").addHandler(handler)
    try:
        model_dir = train(config, progress=False)
    finally:
        logging.getLogger("cxr_node.train").removeHandler(handler)
    return config, model_dir, messages


def copy_run(first_epoch, tmp_path, **changes) -> TrainConfig:
    config = first_epoch[0]
    shutil.copytree(config.out, tmp_path / "run")
    return dataclasses.replace(config, out=tmp_path / "run", **changes)


def test_resuming_with_other_settings_is_refused_naming_them(first_epoch, tmp_path):
    config = copy_run(first_epoch, tmp_path, epochs=2, learning_rate=5e-4, batch_size=4)
    saved = (config.out / "config.json").read_text()

    with pytest.raises(TrainError, match=r"other settings \(batch_size 8 there, 4 now; "
                                         r"learning_rate 0\.001 there, 0\.0005 now\); resume "
                                         r"it with the same batch_size, learning_rate"):
        train(config, progress=False)

    assert (config.out / "config.json").read_text() == saved  # the run's record is intact
    assert [json.loads(line)["epoch"] for line in (config.out / "metrics.jsonl").open()] == [1]


def test_cli_refuses_a_resume_with_other_settings_in_one_line(first_epoch, tmp_path):
    config = copy_run(first_epoch, tmp_path)
    saved = (config.out / "config.json").read_text()

    run = subprocess.run([sys.executable, "-m", "node.cli", "train", "--data", str(config.data),
                          "--out", str(config.out), "--batch-size", "4", "--device", "cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=100)

    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("cxr-node train: error:") and "batch_size 8 there, 4 now" in line
    assert (config.out / "config.json").read_text() == saved


def test_a_checkpoint_write_cut_short_leaves_the_previous_checkpoint_whole(first_epoch,
                                                                          tmp_path):
    """The second epoch's checkpoint hits a file size limit (a full disk, as far as the
    write can tell) half-way: the first epoch's checkpoint must still load."""
    config = copy_run(first_epoch, tmp_path, epochs=2)
    checkpoint = config.out / "checkpoint.pt"
    limit = checkpoint.stat().st_size // 2  # above best.pt (weights only), below a checkpoint
    script = (
        "import resource\n"
        "from pathlib import Path\n"
        "from training.train import TrainConfig, train\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        f"train(TrainConfig(data=Path({str(config.data)!r}), out=Path({str(config.out)!r}), "
        f"validation_data=Path({str(config.validation_data)!r}), image_size=128, epochs=2, "
        "batch_size=8, max_train_images=8, device='cpu'), progress=False)\n")

    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=280)

    # It failed in torch's writer (how it words that differs with the kind of file).
    assert run.returncode != 0 and "torch/serialization.py" in run.stderr, run.stderr[-2000:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0  # the first epoch's, whole
    assert sorted(p.name for p in config.out.iterdir() if p.suffix in (".pt", ".tmp")) == \
        ["best.pt", "checkpoint.pt"]  # no partial file left beside them


def test_a_validation_split_without_boxes_ends_with_a_model_and_says_why(first_epoch):
    config, model_dir, messages = first_epoch

    assert any("has no boxes: mAP cannot be measured, so the last epoch is kept" in message
               for message in messages), messages
    [epoch] = [json.loads(line) for line in (config.out / "metrics.jsonl").open()]
    assert epoch["map50"] is None and epoch["map40"] is None  # null, not NaN
    card = ModelCard.load(model_dir)
    assert card.metrics["validation"]["values"]["map50"] is None
    assert set(card.thresholds.values()) == {0.5}  # no positives to choose from, no parent


def test_warmup_is_a_fraction_of_the_run_and_a_longer_one_is_refused(tmp_path):
    from training.train import _lr_factor

    config = TrainConfig(data=tmp_path, out=tmp_path / "run", epochs=1, warmup_epochs=0.1)
    steps = 74
    warmup = int(config.warmup_epochs * steps)
    factors = [_lr_factor(step, steps, warmup) for step in range(steps)]

    assert warmup == 7 and factors[warmup - 1] == 1.0  # full rate after 7 steps, not 74
    assert factors[warmup:] == sorted(factors[warmup:], reverse=True)  # then only decays
    with pytest.raises(ValueError, match=r"warmup_epochs must be 0 to epochs \(2\), got 3"):
        TrainConfig(data=tmp_path, out=tmp_path / "run", epochs=2, warmup_epochs=3)

    run = subprocess.run([sys.executable, "-m", "node.cli", "train", "--data", str(tmp_path),
                          "--out", str(tmp_path / "run"), "--epochs", "1",
                          "--warmup-epochs", "-1"],
                         cwd=REPO, capture_output=True, text=True, timeout=100)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert "--warmup-epochs must be 0 to epochs (1), got -1.0" in line
