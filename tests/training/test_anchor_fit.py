"""Anchor coverage: which training boxes some anchor matches at IoU >= 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from effdet import get_efficientdet_config

from training.anchor_fit import anchor_boxes, anchor_coverage

LABELS = ("Mass", "Nodule", "Pneumothorax")
TWO_ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])


def test_coverage_counts_boxes_with_an_anchor_at_half_overlap():
    boxes = [np.array([[0, 0, 10, 10], [5, 0, 15, 10]]),  # on an anchor; straddling two
             np.array([[0, 0, 3, 3]])]  # far smaller than either anchor
    classes = [np.array([1, 1]), np.array([2])]

    report = anchor_coverage(boxes, classes, LABELS, TWO_ANCHORS)

    # The straddling box overlaps each anchor by 50 / 150 = 0.33.
    assert report["Mass"] == {"boxes": 2, "covered": 0.5, "anchors_per_box": 0.5}
    assert report["Nodule"] == {"boxes": 1, "covered": 0.0, "anchors_per_box": 0.0}
    assert report["Pneumothorax"] == {"boxes": 0, "covered": None, "anchors_per_box": None}


def test_a_larger_input_covers_a_small_nodule_that_a_smaller_anchor_scale_does_not():
    def covered(image_size: int, anchor_scale: float, side: float) -> float:
        config = get_efficientdet_config("tf_efficientdet_d0")
        config.image_size, config.anchor_scale = (image_size, image_size), anchor_scale
        box = np.array([[100.0, 100.0, 100.0 + side, 100.0 + side]])
        return anchor_coverage([box], [np.array([1])], LABELS,
                               anchor_boxes(config))["Mass"]["covered"]

    # A 7 px nodule on a 512 px input: no anchor is small enough at anchor scale 2.
    assert covered(512, 2.0, 7.0) == 0.0
    # Twice the input (the nodule 14 px) finds one; halving the anchors instead leaves
    # their centres 8 px apart, too coarse for a 7 px box 3.5 px off the nearest.
    assert covered(1024, 2.0, 14.0) == 1.0
    assert covered(512, 1.0, 7.0) == 0.0


def test_anchor_boxes_are_xyxy_around_stride_centres():
    config = get_efficientdet_config("tf_efficientdet_d0")
    config.image_size, config.anchor_scale = (512, 512), 2.0
    anchors = anchor_boxes(config)
    assert anchors.shape == (9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2), 4)
    assert anchors[0].tolist() == [-4.0, -4.0, 12.0, 12.0]  # 16 px, centred on (4, 4)
    wide = anchors[1]
    assert wide[2] - wide[0] > wide[3] - wide[1]  # aspect 1.4 : 0.7 is wider than tall


@pytest.mark.parametrize("boxes, classes, message", [
    ([np.zeros((1, 4))], [], "1 box arrays but 0 class arrays"),
    ([np.zeros((2, 4))], [np.array([1])], "2 boxes but 1 classes"),
    ([np.zeros((1, 4))], [np.array([4])], "class indices must be 1..3"),
])
def test_mismatched_or_unknown_classes_are_refused(boxes, classes, message):
    with pytest.raises(ValueError, match=message):
        anchor_coverage(boxes, classes, LABELS, TWO_ANCHORS)
