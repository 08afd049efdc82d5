"""A small, untrained model on disk, built the way training will write real ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.card import ModelCard, file_sha256
from model.detector import create_network
from model.vocabulary import DEFAULT_FINDINGS

IMAGE_SIZE = 256


def write_model(model_dir: Path, seed: int = 0, image_size: int = IMAGE_SIZE,
                **card_fields) -> ModelCard:
    """Random (seeded) tf_efficientdet_d0 weights and a card that describes them."""
    model_dir.mkdir(parents=True, exist_ok=True)
    fields = dict(
        name="cxr-test", version="0.0.1-test", architecture="tf_efficientdet_d0",
        image_size=image_size, findings=DEFAULT_FINDINGS,
        preprocessing={"image_size": image_size, "low_percentile": 0.5,
                       "high_percentile": 99.5},
        thresholds={f.label: 0.5 for f in DEFAULT_FINDINGS}, weights_file="weights.pt",
        weights_sha256="0" * 64, training_data_fingerprint="1" * 64, code_version="test",
        intended_use="unit tests only; untrained", parent_version=None,
        metrics={}, created_at="2026-11-27T00:00:00Z")
    fields.update(card_fields)
    draft = ModelCard(**fields)
    torch.manual_seed(seed)
    network = create_network(draft)
    torch.save(network.state_dict(), model_dir / draft.weights_file)
    card = ModelCard(**{**fields, "weights_sha256": file_sha256(model_dir / draft.weights_file)})
    card.save(model_dir)
    return card


@pytest.fixture(scope="session")
def written_model(tmp_path_factory) -> Path:
    """``write_model``'s folder, written once: building the network and hashing its
    weights costs a few tenths of a second, and a dozen tests start from it."""
    directory = tmp_path_factory.mktemp("written") / "model"
    write_model(directory)
    return directory


@pytest.fixture
def tiny_model(written_model, tmp_path) -> Path:
    """A copy of its own, which a test may edit or damage."""
    return Path(shutil.copytree(written_model, tmp_path / "model"))
