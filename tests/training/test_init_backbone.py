"""`cxr-node train --init-backbone FILE`: a timm ImageNet checkpoint from a local file,
loaded strictly into the detector's backbone; a file that does not fit is one line."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from model import BUNDLED_MODEL
from model.card import ModelCard
from model.detector import create_network, load_backbone
from node.cli import main
from tests.training.conftest import write_squares_set


@pytest.fixture(scope="module")
def imagenet_b0(tmp_path_factory) -> dict[str, torch.Tensor]:
    """What a site downloads: tf_efficientnet_b0 with its classifier head (random here)."""
    torch.manual_seed(1234)
    return timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return write_squares_set(tmp_path_factory.mktemp("small"), 10, size=256)


def trained_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone weights a step of training moves by about the learning rate (running
    BatchNorm statistics move by their momentum instead, and are left out)."""
    return {key: value for key, value in state.items()
            if value.is_floating_point() and "running_" not in key}


def test_the_backbone_is_loaded_from_a_pth_and_its_head_is_ignored(imagenet_b0, tmp_path):
    path = tmp_path / "tf_efficientnet_b0.pth"
    torch.save({"state_dict": imagenet_b0, "epoch": 450}, path)  # a timm training checkpoint
    network = create_network(ModelCard.load(BUNDLED_MODEL, verify_weights=False))

    load_backbone(network, path)

    for key, value in network.backbone.state_dict().items():
        assert torch.equal(value, imagenet_b0[key]), key


def test_training_starts_from_the_backbone_file(imagenet_b0, small_set, tmp_path):
    """Two steps at learning rate 1e-3 move no backbone weight by more than a few 1e-3;
    the file's weights and effdet's own initialisation differ by far more."""
    path = tmp_path / "model.safetensors"  # as the Hugging Face hub serves timm weights
    save_file({k: v.contiguous() for k, v in imagenet_b0.items()}, path)
    run = tmp_path / "run"

    assert main(["train", "--data", str(small_set), "--out", str(run), "--image-size", "128",
                 "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--init-backbone", str(path)]) == 0

    trained = torch.load(run / "model" / "weights.pt", map_location="cpu", weights_only=True)
    backbone = {k.removeprefix("backbone."): v for k, v in trained.items()
                if k.startswith("backbone.")}
    fresh = create_network(ModelCard.load(run / "model")).backbone.state_dict()
    moved = {k: (v - imagenet_b0[k]).abs().max().item()
             for k, v in trained_weights(backbone).items()}
    unlike = max((fresh[k] - imagenet_b0[k]).abs().max().item() for k in moved)
    assert len(moved) > 200 and max(moved.values()) < 0.01 < 0.1 < unlike
    assert '"init_backbone": "' + str(path) in (run / "config.json").read_text()


@pytest.mark.parametrize(("make", "message"), [
    (lambda path: torch.save(timm.create_model("tf_efficientnet_b3").state_dict(), path),
     r"{path} does not fit the tf_efficientnet_b0 backbone: [0-9]+ tensor\(s\) of another "
     r"shape \(conv_stem\.weight 40x3x3x3 where the backbone has 32x3x3x3, bn1\.weight 40 "
     r"where the backbone has 32, \.\.\.\); [0-9]+ tensor\(s\) the backbone does not have "
     r"\(blocks\.0\.1\.conv_dw\.weight, blocks\.0\.1\.bn1\.weight, \.\.\.\)"),
    (lambda path: path.write_text("weights, as a web page said they would be"),
     r"{path} is not a readable PyTorch or safetensors checkpoint \(.+\)"),
], ids=["another network", "not a checkpoint"])
def test_a_backbone_file_that_does_not_fit_is_refused_in_one_line(small_set, tmp_path, capsys,
                                                                  make, message):
    path = tmp_path / "backbone.pth"
    make(path)

    code = main(["train", "--data", str(small_set), "--out", str(tmp_path / "run"),
                 "--image-size", "128", "--device", "cpu", "--init-backbone", str(path)])

    assert code == 2
    [line] = capsys.readouterr().err.splitlines()
    prefix, _, problem = line.partition(": error: ")
    assert prefix == "cxr-node train"
    assert re.fullmatch(message.format(path=re.escape(str(path))), problem), line
    assert not (tmp_path / "run" / "model").exists()


def test_a_backbone_file_with_a_model_folder_is_refused(small_set, tmp_path, capsys):
    code = main(["train", "--data", str(small_set), "--out", str(tmp_path / "run"),
                 "--init-backbone", "b0.pth", "--init-from", "model/bundled"])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cxr-node train: error: --init-backbone b0.pth and init_from model/bundled are both "
        "given; a model folder brings its own backbone"]


def test_retrain_takes_a_backbone_file_only_from_scratch(capsys):
    assert main(["retrain", "--init-backbone", "b0.pth"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "cxr-node retrain: error: --init-backbone goes with --from-scratch: fine-tuning "
        "starts from the active model's whole network"]
