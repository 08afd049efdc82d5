"""The bundled model: loads offline, says what it is, and reproduces its golden outputs."""

from __future__ import annotations

import socket

import pytest
import torch

from model import BUNDLED_MODEL
from model.card import ModelCard
from model.detector import Detector
from model.golden import check_golden


@pytest.fixture(scope="module")
def bundled() -> Detector:
    real_connect = socket.socket.connect

    def refuse(self, address):  # noqa: ANN001
        raise AssertionError(f"loading the bundled model tried to connect to {address}")

    socket.socket.connect = refuse
    try:
        return Detector.load(BUNDLED_MODEL, device="cpu")
    finally:
        socket.socket.connect = real_connect


def test_card_says_synthetic_and_not_for_clinical_use():
    card = ModelCard.load(BUNDLED_MODEL)
    assert "synthetic" in card.intended_use and "Not for clinical use" in card.intended_use
    held_out = card.metrics["held_out_synthetic"]
    assert held_out["dataset"]["images"] >= 300
    assert set(held_out["values"]["per_finding"]) == set(card.labels)
    assert (BUNDLED_MODEL / card.weights_file).stat().st_size <= 20 * 1024 * 1024


def test_reproduces_its_golden_outputs(bundled):
    assert check_golden(BUNDLED_MODEL, bundled) == []


def test_golden_check_catches_changed_weights(bundled):
    card = ModelCard.load(BUNDLED_MODEL)
    changed = Detector.load(BUNDLED_MODEL, device="cpu")
    with torch.no_grad():
        for name, parameter in changed.network.named_parameters():
            if name.startswith("class_net.predict"):
                parameter.mul_(1.3)
    assert changed.card == card
    assert check_golden(BUNDLED_MODEL, changed) != []
