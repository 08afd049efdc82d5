"""The detector: batched post-processing matches effdet's, offline loading, original pixels."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from effdet import DetBenchPredict

from model.card import ModelCard
from model.detector import MAX_DETECTIONS, BatchedPostProcess, Detector, create_network
from model.phantom import dx_dataset
from tests.model.conftest import IMAGE_SIZE, write_model


def _rows(detections: torch.Tensor) -> list[tuple]:
    return sorted(tuple(np.round(row.tolist(), 3)) for row in detections if row[4] > 0)


def test_batched_post_processing_matches_effdet_per_image_loop(tiny_model):
    card = ModelCard.load(tiny_model)
    network = create_network(card).eval()
    torch.manual_seed(3)
    # Spread-out logits, so scores are distinct and the order of ties cannot differ.
    class_out = [torch.randn(2, 9 * 7, s, s) for s in (32, 16, 8, 4, 2)]
    box_out = [0.3 * torch.randn(2, 9 * 4, s, s) for s in (32, 16, 8, 4, 2)]

    class Outputs(torch.nn.Module):
        config = network.config

        def forward(self, x):
            return class_out, box_out

    stock = DetBenchPredict(Outputs()).eval()
    size = torch.tensor([[float(IMAGE_SIZE)] * 2] * 2)
    with torch.no_grad():
        theirs = stock(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE),
                       img_info={"img_scale": torch.ones(2), "img_size": size})
        ours = BatchedPostProcess(network)(class_out, box_out)

    assert ours.shape == (2, MAX_DETECTIONS, 6)
    for image in range(2):
        mine = ours[image].clone()
        mine[:, 5] += 1  # effdet reports classes 1-based
        # The 100 best after NMS are the same boxes, scores and classes.
        assert _rows(mine[:50]) == _rows(theirs[image][:50])


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the detector tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _image(rows: int, columns: int, seed: int, photometric: str = "MONOCHROME2"):
    rng = np.random.default_rng(seed)
    return dx_dataset(rng.integers(0, 4096, (rows, columns), dtype=np.uint16),
                      photometric=photometric)


def test_detector_loads_offline_and_reports_boxes_in_original_pixels(tiny_model, no_network):
    detector = Detector.load(tiny_model, device="cpu")
    datasets = [_image(600, 400, 1), _image(300, 900, 2, "MONOCHROME1")]

    everything = detector.predict(datasets, apply_thresholds=False)

    assert len(everything) == 2
    for ds, detections in zip(datasets, everything, strict=True):
        assert detections, "an untrained network still scores every anchor"
        for detection in detections:
            x1, y1, x2, y2 = detection.box
            assert 0 <= x1 <= x2 <= ds.Columns and 0 <= y1 <= y2 <= ds.Rows
            assert detection.label in detector.card.labels
            assert 0 < detection.score < 1


def test_per_finding_thresholds_from_the_card_filter_detections(tmp_path):
    strict = write_model(tmp_path / "strict", thresholds={label: 1.0 for label in (
        "Atelectasis", "Cardiomegaly", "Pleural effusion", "Infiltration", "Mass", "Nodule",
        "Pneumothorax")})
    detector = Detector.load(tmp_path / "strict", device="cpu")
    assert strict.thresholds["Mass"] == 1.0
    assert detector.predict([_image(300, 300, 4)]) == [[]]
    assert detector.predict([_image(300, 300, 4)], apply_thresholds=False)[0]


def test_an_image_scores_the_same_alone_or_in_a_batch(tiny_model):
    detector = Detector.load(tiny_model, device="cpu")
    ds = _image(512, 512, 5)
    alone = detector.predict([ds], apply_thresholds=False)[0]
    batched = detector.predict([ds, _image(256, 700, 6)], apply_thresholds=False)[0]
    # An untrained network ties many scores, so compare the score distributions.
    assert len(alone) == len(batched)
    assert np.allclose(sorted(d.score for d in alone), sorted(d.score for d in batched),
                       atol=1e-4)


def test_boxes_wholly_in_the_padding_are_dropped():
    from model.detector import rows_to_original
    from model.preprocess import Letterbox

    letterbox = Letterbox.fit(rows=100, columns=200, image_size=256)  # padding above and below
    rows = np.zeros((3, 6), dtype=np.float32)
    rows[0] = [10, 100, 60, 150, 0.9, 2]  # on the image
    rows[1] = [10, 0, 60, 40, 0.8, 4]  # in the top padding: empty once clipped
    # rows[2] is unused (score 0)

    kept = rows_to_original(rows, letterbox)

    assert [(round(score, 1), cls) for _, score, cls in kept] == [(0.9, 2)]
    x1, y1, x2, y2 = kept[0][0]
    assert 0 <= y1 < y2 <= 100 and 0 <= x1 < x2 <= 200
