"""How well a network's anchors fit the boxes it is trained on, per finding.

effdet's labeler makes an anchor a positive example of a box only at IoU >= 0.5; a box
with no such anchor still gets its one best anchor, but every anchor around it is then
trained as background. Such boxes learn slowly and score low, which is where small
nodules went missing. A box fails to reach 0.5 either because it is much smaller than the
smallest anchor, or because anchors of its size sit on a grid too coarse for it: with
anchors as large as their stride (anchor scale 1), a box half a stride off every anchor
centre overlaps none of them by half. So the remedy is more input pixels per finding
rather than a smaller anchor scale; this report shows which, before hours of training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from effdet.anchors import Anchors
from torchvision.ops import box_iou

MATCH_IOU = 0.5  # effdet's AnchorLabeler default (match and unmatched thresholds)
_CHUNK = 256  # boxes per IoU block; one block against ~100k anchors is ~100 MB


def anchor_boxes(network_config) -> torch.Tensor:  # noqa: ANN001 - effdet's config object
    """Every anchor of an effdet network config, XYXY in model-input pixels."""
    return Anchors.from_config(network_config).boxes[:, [1, 0, 3, 2]]


def anchor_coverage(boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
                    labels: Sequence[str], anchors: torch.Tensor) -> dict[str, dict]:
    """Per label: how many boxes, the share with an anchor at IoU >= 0.5, and the mean
    number of such anchors per box.

    ``boxes`` holds per image an (N, 4) XYXY array in model-input pixels and ``classes``
    the matching 1-based class indices into ``labels`` (the training set's convention).
    """
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} box arrays but {len(classes)} class arrays")
    all_boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
                               or [np.zeros((0, 4), np.float32)])
    all_classes = np.concatenate([np.asarray(c).reshape(-1) for c in classes]
                                 or [np.zeros(0)]).astype(int)
    if len(all_boxes) != len(all_classes):
        raise ValueError(f"{len(all_boxes)} boxes but {len(all_classes)} classes")
    if all_classes.size and not 1 <= all_classes.min() <= all_classes.max() <= len(labels):
        raise ValueError(f"class indices must be 1..{len(labels)}")
    best, matched = np.zeros(len(all_boxes)), np.zeros(len(all_boxes))
    for start in range(0, len(all_boxes), _CHUNK):
        iou = box_iou(torch.from_numpy(all_boxes[start:start + _CHUNK]), anchors.float())
        best[start:start + _CHUNK] = iou.max(dim=1).values.numpy()
        matched[start:start + _CHUNK] = (iou >= MATCH_IOU).sum(dim=1).numpy()
    report = {}
    for index, label in enumerate(labels, start=1):
        mine = all_classes == index
        count = int(mine.sum())
        report[label] = {
            "boxes": count,
            "covered": float((best[mine] >= MATCH_IOU).mean()) if count else None,
            "anchors_per_box": float(matched[mine].mean()) if count else None,
        }
    return report
