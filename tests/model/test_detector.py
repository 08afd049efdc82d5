"""The detector: batched post-processing matches effdet's, offline loading, original pixels."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from effdet import DetBenchPredict

from model.card import ModelCard
from model.detector import (
    MAX_DETECTIONS,
    BatchedPostProcess,
    Detector,
    create_network,
    score_floor,
)
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


# --- thresholds first ---------------------------------------------------------------------

def _random_outputs(seed: int, batch: int, shift: float) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [IMAGE_SIZE // 2**level for level in range(3, 8)]
    class_out = [torch.randn(batch, 9 * 7, s, s, generator=generator) * 2 + shift for s in sizes]
    box_out = [0.3 * torch.randn(batch, 9 * 4, s, s, generator=generator) for s in sizes]
    return class_out, box_out


def test_score_floor_is_the_largest_float32_not_above_the_lowest_threshold():
    for thresholds in ([0.1, 0.7], [1 / 3], [0.5, 0.9], [1.0], [0.0, 0.4], [0.3000001]):
        floor = score_floor(thresholds)
        assert np.float32(floor) == floor <= min(thresholds)
        assert float(np.nextafter(np.float32(floor), np.float32(2))) > min(thresholds)


def test_thresholds_first_keeps_exactly_todays_detections_above_the_thresholds(tiny_model):
    """Over many random logits and thresholds, with and without more than 100 detections
    per image surviving: the rows at or above the floor, and what the per-finding
    thresholds then keep, are today's to the bit."""
    network = create_network(ModelCard.load(tiny_model)).eval()
    post_process = BatchedPostProcess(network)
    rng = np.random.default_rng(0)
    survivors = []
    for seed in range(40):
        class_out, box_out = _random_outputs(seed, batch=3, shift=float(rng.uniform(-14, 0)))
        thresholds = rng.uniform(0.05, 0.95, 7)
        floor = score_floor(thresholds)
        today = post_process(class_out, box_out)
        first = post_process(class_out, box_out, min_score=floor)
        for image in range(3):
            expected = today[image][today[image, :, 4] >= floor]
            got = first[image][first[image, :, 4] > 0]
            assert torch.equal(got, expected), f"seed {seed}, image {image}"
            rows = expected.numpy()
            survivors.append(int((rows[:, 4] >= thresholds[rows[:, 5].astype(int)]).sum()))
    assert max(survivors) == MAX_DETECTIONS and min(survivors) == 0  # the cap and none


def test_predictions_with_thresholds_equal_todays_filtered_predictions(tmp_path):
    """On the Detector: thresholds first changes nothing a site receives."""
    labels = ("Atelectasis", "Cardiomegaly", "Pleural effusion", "Infiltration", "Mass",
              "Nodule", "Pneumothorax")
    # An untrained network scores about 0.01 (effdet's prior): thresholds around it.
    thresholds = dict(zip(labels, (0.009, 0.0105, 0.01, 0.0095, 0.011, 0.0098, 0.0102),
                          strict=True))
    write_model(tmp_path / "model", thresholds=thresholds)
    detector = Detector.load(tmp_path / "model", device="cpu")
    datasets = [_image(300, 260, 7), _image(256, 400, 8, "MONOCHROME1")]

    everything = detector.predict(datasets, apply_thresholds=False)
    thresholded = detector.predict(datasets)

    assert sum(map(len, thresholded)) > 0
    for all_of_them, kept in zip(everything, thresholded, strict=True):
        assert kept == [d for d in all_of_them if d.score >= thresholds[d.label]]
