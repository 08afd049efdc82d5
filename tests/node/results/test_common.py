"""The shared inputs refuse what would make a wrong or invalid DICOM object."""

from __future__ import annotations

import numpy as np
import pytest

from node.results import Algorithm, ImageFinding, ProducingDevice
from node.results.common import closed_box
from tests.node.results.conftest import FINDINGS

UID = "1.2.826.0.1.3680043.8.498.1"


def test_closed_box_repeats_its_first_corner():
    polyline = closed_box((10.5, 20.0, 30.0, 40.25))

    assert polyline.shape == (5, 2)
    assert np.array_equal(polyline[0], polyline[-1])
    assert polyline.tolist() == [[10.5, 20.0], [30.0, 20.0], [30.0, 40.25], [10.5, 40.25],
                                 [10.5, 20.0]]


def test_image_finding_label_and_percent():
    finding = ImageFinding(UID, FINDINGS["Pneumothorax"], np.float32(0.8749), (0, 0, 1, 1))

    assert finding.label == "Pneumothorax 87%"
    assert finding.percent == 87.5


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"score": 1.2}, ValueError, "score must lie in"),
    ({"score": True}, TypeError, "score must be a number"),
    ({"box": (5, 0, 5, 10)}, ValueError, "x1 < x2"),
    ({"box": (-1, 0, 5, 10)}, ValueError, "0 <= x1"),
    ({"box": (0, 0, float("nan"), 10)}, ValueError, "finite"),
    ({"source_sop_instance_uid": "1.02.3"}, ValueError, "not a valid DICOM UID"),
    ({"finding": "Mass"}, TypeError, "must be a Finding"),
])
def test_image_finding_refuses_bad_values(kwargs, error, match):
    values = {"source_sop_instance_uid": UID, "finding": FINDINGS["Mass"], "score": 0.5,
              "box": (0, 0, 10, 10)} | kwargs

    with pytest.raises(error, match=match):
        ImageFinding(**values)


def test_device_and_algorithm_refuse_values_dicom_cannot_hold():
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        ProducingDevice("cxr-node", "cxr-node", "cxr-node project", "0.1.0")
    with pytest.raises(ValueError, match="longer than 64"):
        ProducingDevice(UID, "x" * 65, "cxr-node project", "0.1.0")
    with pytest.raises(ValueError, match="backslash"):
        ProducingDevice(UID, "cxr\\node", "cxr-node project", "0.1.0")
    with pytest.raises(ValueError, match="printable ASCII"):
        ProducingDevice(UID, "cxr-node", "Universitätsklinikum", "0.1.0")
    with pytest.raises(ValueError, match="must not be empty"):
        Algorithm("cxr-detector", " ")
