"""Evaluation metrics for the chest X-ray detector, in plain numpy.

The report (:func:`evaluate`) gives box-level mAP at IoU 0.5 and 0.4 (the VinDr-CXR metric),
image-level sensitivity and specificity with Wilson intervals, AUC, and lesion-level FROC.
Numpy and the standard library only, so the numbers reproduce without the training stack.
Inputs are one list of boxes per image, ``ground_truth`` (empty: a normal image) and
``predictions``, in the same image order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from statistics import NormalDist
from typing import Any

import numpy as np

FROC_FPPI_POINTS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
# FROC counts a lesion as found at IoU 0.4, the VinDr-CXR criterion: reference boxes of
# diffuse findings are drawn loosely, and 0.5 would call many clinically correct marks misses.
FROC_IOU_THRESHOLD = 0.4
# Size bands (mm, the longer side of an image's largest reference box of a finding) for
# sensitivity by size: the smallest nodules are what a radiograph, and a detector at a few
# hundred pixels, miss first, so a reader asks for the figure per band.
SIZE_BAND_EDGES_MM: tuple[float, ...] = (10.0, 20.0, 30.0)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box, XYXY in pixels, with its finding label."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str

    def __post_init__(self) -> None:
        coords = (self.x1, self.y1, self.x2, self.y2)
        if not all(isinstance(c, Real) and math.isfinite(c) for c in coords):
            raise ValueError(f"Box coordinates {coords} must be finite numbers")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise ValueError(f"Box {coords} must have x1 < x2 and y1 < y2 (XYXY, non-empty)")
        if not isinstance(self.label, str) or not self.label:
            raise TypeError(f"Box label {self.label!r} must be a non-empty string")


@dataclass(frozen=True)
class GroundTruthBox(Box):
    """A reference (radiologist's) box."""


@dataclass(frozen=True)
class PredictedBox(Box):
    """A detector's box; ``score`` is in [0, 1], as an image with no box of a label scores 0."""

    score: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.score, Real) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"PredictedBox score {self.score!r} must be a number in [0, 1]")


GroundTruth = Sequence[Sequence[GroundTruthBox]]
Predictions = Sequence[Sequence[PredictedBox]]


def _check_images(name: str, images: Any, kind: type[Box], labels: Sequence[str] | None) -> None:
    if isinstance(images, str) or not isinstance(images, Sequence):
        raise TypeError(f"{name} must be a list of per-image lists, got {type(images).__name__}")
    for index, boxes in enumerate(images):
        if isinstance(boxes, str) or not isinstance(boxes, Sequence):
            raise TypeError(f"{name}[{index}] must be a list, got {type(boxes).__name__}")
        for box in boxes:
            if not isinstance(box, kind):
                raise TypeError(f"{name}[{index}] holds {box!r}; expected {kind.__name__}")
            if labels is not None and box.label not in labels:
                raise ValueError(f'{name}[{index}] has label "{box.label}", not in {list(labels)}')


def _check_dataset(ground_truth: Any, predictions: Any, labels: Any = None) -> None:
    if labels is not None and (isinstance(labels, str) or not isinstance(labels, Sequence)
                               or not labels or not all(isinstance(x, str) and x for x in labels)):
        raise TypeError(f"labels {labels!r} must be a non-empty list of non-empty strings")
    if labels is not None and len(set(labels)) != len(labels):
        raise ValueError(f"labels {list(labels)} contain duplicates")
    _check_images("ground_truth", ground_truth, GroundTruthBox, labels)
    _check_images("predictions", predictions, PredictedBox, labels)
    if len(ground_truth) != len(predictions):
        raise ValueError(f"ground_truth has {len(ground_truth)} images but predictions has "
                         f"{len(predictions)}; both need one list of boxes per image")
    if not ground_truth:
        raise ValueError("ground_truth and predictions hold no images")


def _as_xyxy(boxes: Any, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=float)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (XYXY), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite coordinates")
    return array


def iou(a: Any, b: Any) -> np.ndarray:
    """IoU of every XYXY box in ``a`` (N, 4) with every one in ``b`` (M, 4): an (N, M) array."""
    a, b = _as_xyxy(a, "a"), _as_xyxy(b, "b")
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    size = np.clip(bottom_right - top_left, 0.0, None)
    inter = size[..., 0] * size[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ground_truth: GroundTruth, predictions: Predictions, label: str | None,
           iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching; return scores and hit flags (highest score first) and the GT count.

    In each image, predictions of a label in descending score take the unmatched GT box of
    that label with the highest IoU >= ``iou_threshold`` (COCO's rule); a prediction left
    without one, a duplicate of a found box included, is a false positive. ``label`` None
    pools all labels, still matching like to like. Equal scores keep image then box order.
    """
    _check_dataset(ground_truth, predictions)
    if not isinstance(iou_threshold, Real) or not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold {iou_threshold!r} must be a number in (0, 1]")
    scores: list[float] = []
    hits: list[bool] = []
    n_gt = 0
    for gt_boxes, pred_boxes in zip(ground_truth, predictions, strict=True):
        names = sorted({b.label for b in (*gt_boxes, *pred_boxes)}) if label is None else [label]
        for name in names:
            gts = [b for b in gt_boxes if b.label == name]
            preds = sorted((b for b in pred_boxes if b.label == name), key=lambda b: -b.score)
            n_gt += len(gts)
            overlaps = iou([[b.x1, b.y1, b.x2, b.y2] for b in preds],
                           [[b.x1, b.y1, b.x2, b.y2] for b in gts])
            matched = np.zeros(len(gts), dtype=bool)
            for pred, row in zip(preds, overlaps, strict=True):
                hit = False
                if gts:
                    candidates = np.where(matched, -1.0, row)
                    best = int(np.argmax(candidates))
                    hit = bool(candidates[best] >= iou_threshold)
                    matched[best] |= hit
                scores.append(pred.score)
                hits.append(hit)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return np.asarray(scores, dtype=float)[order], np.asarray(hits, dtype=bool)[order], n_gt


def average_precision(ground_truth: GroundTruth, predictions: Predictions, label: str,
                      iou_threshold: float = 0.5) -> float:
    """AP of one label: area under the all-point interpolated PR curve (VOC 2010+).

    Returns NaN when the label has no GT box in any image: recall is then undefined, and
    :func:`mean_average_precision` leaves such labels out. With GT but no predictions, 0.
    """
    if not isinstance(label, str) or not label:
        raise TypeError(f"label {label!r} must be a non-empty string")
    _, hits, n_gt = _match(ground_truth, predictions, label, iou_threshold)
    if n_gt == 0:
        return math.nan
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall = np.concatenate(([0.0], tp / n_gt, [1.0]))
    precision = np.concatenate(([0.0], tp / np.maximum(tp + fp, 1), [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mean_average_precision(
        ground_truth: GroundTruth, predictions: Predictions, labels: Sequence[str],
        iou_threshold: float = 0.5) -> tuple[float, dict[str, float]]:
    """mAP over the labels with at least one GT box, and every label's AP (NaN if none)."""
    _check_dataset(ground_truth, predictions, labels)
    per_label = {lab: average_precision(ground_truth, predictions, lab, iou_threshold)
                 for lab in labels}
    present = [ap for ap in per_label.values() if not math.isnan(ap)]
    return (float(np.mean(present)) if present else math.nan), per_label


def image_scores(predictions: Predictions, label: str | None = None) -> np.ndarray:
    """Each image's score: its highest prediction score for ``label`` (any if None), else 0."""
    _check_images("predictions", predictions, PredictedBox, None)
    return np.array([max((b.score for b in boxes if label is None or b.label == label),
                         default=0.0) for boxes in predictions], dtype=float)


def image_positives(ground_truth: GroundTruth, label: str | None = None) -> np.ndarray:
    """Whether each image has a GT box of ``label`` (of any label if None)."""
    _check_images("ground_truth", ground_truth, GroundTruthBox, None)
    return np.array([any(label is None or b.label == label for b in boxes)
                     for boxes in ground_truth], dtype=bool)


def _check_scores(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    scores, flags = np.asarray(scores, dtype=float), np.asarray(positives)
    if scores.ndim != 1 or scores.shape != flags.shape or scores.size == 0:
        raise ValueError(f"scores {scores.shape} and positives {flags.shape} must be "
                         "non-empty 1-D arrays of the same length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold non-finite values")
    if flags.dtype != bool and not np.all((flags == 0) | (flags == 1)):
        raise ValueError(f"positives must be booleans or 0/1, got values {np.unique(flags)}")
    return scores, flags.astype(bool)


def wilson_interval(successes: int, total: int,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high); (nan, nan) when ``total`` is 0.

    Unlike the normal approximation it stays in [0, 1] and keeps its coverage at the small
    counts a rare finding gives.
    """
    if not isinstance(successes, Integral) or not isinstance(total, Integral):
        raise TypeError(f"successes {successes!r} and total {total!r} must be integers")
    if not 0 <= successes <= total:
        raise ValueError(f"successes {successes} must be between 0 and total {total}")
    if not isinstance(confidence, Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must be in (0, 1)")
    if total == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.959963984540054 for 0.95
    p, z2n = successes / total, z * z / total
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z2n / (4 * total)) / (1 + z2n)
    # Exactly 0 and 1 at the extremes, where rounding would leave 1e-17.
    low = 0.0 if successes == 0 else centre - half
    return low, (1.0 if successes == total else centre + half)


def _confusion(calls: np.ndarray, positives: np.ndarray) -> dict[str, Any]:
    tp, fn = int(np.sum(calls & positives)), int(np.sum(~calls & positives))
    tn, fp = int(np.sum(~calls & ~positives)), int(np.sum(calls & ~positives))
    return {"sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "sensitivity_ci": wilson_interval(tp, tp + fn),
            "specificity_ci": wilson_interval(tn, tn + fp),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def sensitivity_specificity(scores: Any, positives: Any, threshold: float) -> dict[str, Any]:
    """Image-level rates at ``threshold`` (a score >= it is a positive call).

    Returns
    -------
    dict
        ``sensitivity``, ``specificity`` (NaN without a denominator), ``sensitivity_ci``,
        ``specificity_ci`` (Wilson 95%) and the counts ``tp``, ``fn``, ``tn``, ``fp``.
    """
    scores, flags = _check_scores(scores, positives)
    if not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold {threshold!r} must be a finite number")
    return _confusion(scores >= threshold, flags)


def largest_box_mm(ground_truth: GroundTruth, label: str,
                   spacing_mm: Sequence[tuple[float, float] | None]) -> np.ndarray:
    """Per image, the longer side in mm of its largest ``label`` box; NaN where it has none
    or its pixel spacing (row, column, mm) is unknown."""
    _check_images("ground_truth", ground_truth, GroundTruthBox, None)
    if len(spacing_mm) != len(ground_truth):
        raise ValueError(f"spacing_mm has {len(spacing_mm)} entries for "
                         f"{len(ground_truth)} images")
    sizes = np.full(len(ground_truth), math.nan)
    for i, (boxes, spacing) in enumerate(zip(ground_truth, spacing_mm, strict=True)):
        if spacing is None:
            continue
        sides = [max((b.x2 - b.x1) * spacing[1], (b.y2 - b.y1) * spacing[0])
                 for b in boxes if b.label == label]
        if sides:
            sizes[i] = max(sides)
    return sizes


def sensitivity_by_size(scores: Any, sizes_mm: Any, threshold: float,
                        edges_mm: Sequence[float] = SIZE_BAND_EDGES_MM) -> dict[str, Any]:
    """Image-level sensitivity of the positive images, by the size of their finding.

    ``sizes_mm`` is NaN for images left out (negatives, unknown spacing). Keys are the
    bands ("<10 mm", "10-20 mm", ..., ">=30 mm"); each holds ``positives``, ``found``
    (score >= ``threshold``), ``sensitivity`` (NaN when the band is empty) and its Wilson
    ``sensitivity_ci``.
    """
    scores, sizes = np.asarray(scores, dtype=float), np.asarray(sizes_mm, dtype=float)
    if scores.shape != sizes.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and sizes_mm {sizes.shape} must be the "
                         "same length")
    edges = [0.0, *edges_mm, math.inf]
    bands: dict[str, Any] = {}
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        name = (f"<{high:g} mm" if low == 0 else
                f">={low:g} mm" if high == math.inf else f"{low:g}-{high:g} mm")
        inside = (sizes >= low) & (sizes < high)  # NaN is in no band
        found, total = int(np.sum(scores[inside] >= threshold)), int(np.sum(inside))
        bands[name] = {"positives": total, "found": found,
                       "sensitivity": found / total if total else math.nan,
                       "sensitivity_ci": wilson_interval(found, total)}
    return bands


def roc_curve(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: one (fpr, tpr) point per distinct score, highest first.

    Returns
    -------
    fpr, tpr, thresholds : np.ndarray
        ``thresholds`` starts at +inf, the (0, 0) point; tied scores make one point. A rate
        whose class is absent is NaN throughout.
    """
    scores, flags = _check_scores(scores, positives)
    order = np.argsort(-scores, kind="stable")
    ranked, flags = scores[order], flags[order]
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    tp, fp = np.r_[0, np.cumsum(flags)[last]], np.r_[0, np.cumsum(~flags)[last]]
    tpr = tp / n_pos if n_pos else np.full(tp.shape, math.nan)
    fpr = fp / n_neg if n_neg else np.full(fp.shape, math.nan)
    return fpr, tpr, np.r_[np.inf, ranked[last]]


def roc_points(scores: Any, positives: Any, max_points: int = 60) -> dict[str, list] | None:
    """The ROC curve thinned to at most ``max_points`` points, small enough to keep in the
    registry and draw on a page; None when one class is absent (no curve exists).

    The points kept are spread evenly along the curve and always include both ends.
    """
    if not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points {max_points!r} must be an integer of at least 2")
    fpr, tpr, _ = roc_curve(scores, positives)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return None
    keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)))
                     .astype(int))
    return {"fpr": [round(float(x), 4) for x in fpr[keep]],
            "tpr": [round(float(y), 4) for y in tpr[keep]]}


def auc(scores: Any, positives: Any) -> float:
    """AUC as the Mann-Whitney P(positive scores above negative), ties 1/2; NaN if one class."""
    scores, flags = _check_scores(scores, positives)
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average rank of each tie group
    return float((ranks[flags].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_for_sensitivity(scores: Any, positives: Any, target: float = 0.90) -> float:
    """An operating threshold for ``target`` sensitivity with the best specificity.

    Sensitivity only changes at positive images' scores, so the highest threshold that
    reaches the target is the k-th highest positive score for the smallest k with
    k / n_positive >= target. Every threshold between it and the highest negative score
    below it has the same specificity, so the threshold is placed midway into that gap
    (down to 0 when no negative lies below): the same specificity on these images, and
    the most room for new positives that score a little lower.
    """
    scores, flags = _check_scores(scores, positives)
    if not isinstance(target, Real) or not 0.0 < target <= 1.0:
        raise ValueError(f"target {target!r} must be in (0, 1]")
    positive_scores = np.sort(scores[flags])[::-1]
    if positive_scores.size == 0:
        raise ValueError("positives has no positive image; no threshold reaches a sensitivity")
    fractions = np.arange(1, positive_scores.size + 1) / positive_scores.size
    highest = float(positive_scores[int(np.argmax(fractions >= target))])
    below = scores[~flags & (scores < highest)]
    floor = float(below.max()) if below.size else 0.0
    return (floor + highest) / 2


def threshold_for_operating_point(scores: Any, positives: Any,
                                  target_sensitivity: float = 0.90,
                                  target_specificity: float = 0.90) -> float:
    """The threshold most likely to hold both targets on new images.

    A threshold chosen on validation images to reach a sensitivity exactly reaches it on
    new images only about half the time: with ~35 positive images sensitivity moves in
    steps of 0.03. Where some thresholds reach both targets on these images, this keeps the
    one whose smaller margin, counted in standard errors of that rate at its target
    (``sqrt(t (1 - t) / n)``: positives for sensitivity, negatives for specificity), is the
    largest, placed midway into the gap below it as in :func:`threshold_for_sensitivity`.
    Where none reaches both, sensitivity comes first: :func:`threshold_for_sensitivity`.
    """
    scores, flags = _check_scores(scores, positives)
    for name, target in (("target_sensitivity", target_sensitivity),
                         ("target_specificity", target_specificity)):
        if not isinstance(target, Real) or not 0.0 < target < 1.0:
            raise ValueError(f"{name} {target!r} must be in (0, 1)")
    n_pos, n_neg = int(flags.sum()), int((~flags).sum())
    if n_pos == 0 or n_neg == 0:
        return threshold_for_sensitivity(scores, flags, target_sensitivity)
    # Calling ``scores >= s`` for each distinct score s, highest first.
    fpr, tpr, cut = roc_curve(scores, flags)
    sensitivity, specificity, cut = tpr[1:], 1.0 - fpr[1:], cut[1:]
    margins = np.stack([
        (sensitivity - target_sensitivity)
        / math.sqrt(target_sensitivity * (1 - target_sensitivity) / n_pos),
        (specificity - target_specificity)
        / math.sqrt(target_specificity * (1 - target_specificity) / n_neg)])
    smaller, larger = margins.min(axis=0), margins.max(axis=0)
    if smaller.max() < 0:
        return threshold_for_sensitivity(scores, flags, target_sensitivity)
    # Ties on the smaller margin (more positives called at no cost in specificity, say)
    # go to the larger other margin.
    best = int(np.lexsort((-larger, -smaller))[0])
    floor = float(cut[best + 1]) if best + 1 < cut.size else 0.0
    return (float(cut[best]) + floor) / 2


def froc(ground_truth: GroundTruth, predictions: Predictions, label: str | None = None,
         iou_threshold: float = FROC_IOU_THRESHOLD,
         fppi_points: Sequence[float] = FROC_FPPI_POINTS) -> dict[str, Any]:
    """Lesion-level sensitivity against average false positives per image (FPPI).

    A lesion is found by a prediction of its label with IoU >= ``iou_threshold`` (default
    0.4, see ``FROC_IOU_THRESHOLD``), matched as in :func:`average_precision`, so a
    duplicate is a false positive; ``label`` None pools all labels.

    Returns
    -------
    dict
        ``sensitivity_at`` ({"0.5": s, "1": s, ...}: the best sensitivity at FPPI <= each
        point), the curve ``fppi``, ``sensitivity``, ``thresholds`` (a (0, 0) point at +inf,
        then one per distinct score) and ``lesions``. Sensitivities are NaN with no lesion.
    """
    if label is not None and (not isinstance(label, str) or not label):
        raise TypeError(f"label {label!r} must be None or a non-empty string")
    if not fppi_points or not all(isinstance(p, Real) and 0 < p < math.inf for p in fppi_points):
        raise ValueError(f"fppi_points {fppi_points!r} must be positive finite numbers")
    scores, hits, n_lesions = _match(ground_truth, predictions, label, iou_threshold)
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if scores.size else []
    fppi = np.r_[0.0, np.cumsum(~hits)[last] / len(ground_truth)]
    found = np.r_[0, np.cumsum(hits)[last]]
    sensitivity = found / n_lesions if n_lesions else np.full(found.shape, math.nan)
    return {"sensitivity_at": {f"{p:g}": float(np.max(sensitivity[fppi <= p]))
                               for p in fppi_points},
            "fppi": fppi, "sensitivity": sensitivity,
            "thresholds": np.r_[np.inf, scores[last]], "lesions": n_lesions}


def _json_safe(value: Any) -> Any:
    """NaN becomes None (JSON has no NaN); numpy values and tuples become plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def headline(report: Mapping[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """The figures a model card keeps from an :func:`evaluate` report."""
    return {"map50": report["map50"], "map40": report["map40"],
            "any_finding": {k: report["any_finding"][k]
                            for k in ("sensitivity", "specificity", "auc")},
            "per_finding": {label: {k: report["per_finding"][label][k]
                                    for k in ("sensitivity", "specificity", "auc", "ap50")}
                            for label in labels}}


def evaluate(ground_truth: GroundTruth, predictions: Predictions, labels: Sequence[str],
             thresholds: Mapping[str, float],
             spacing_mm: Sequence[tuple[float, float] | None] | None = None) -> dict[str, Any]:
    """The evaluation report as a JSON-serialisable dict (NaN written as None).

    Keys: ``images``, ``map50``, ``map40``, ``froc_iou_threshold``, ``froc`` (all labels
    pooled), ``per_finding`` (per label: image-level counts, rates and Wilson intervals at
    ``thresholds[label]``, ``auc``, ``roc`` (see :func:`roc_points`), ``ap50``,
    ``ap40``, ``froc``, ``threshold``) and
    ``any_finding``, where an image is called positive if any label's score reaches that
    label's threshold and its AUC score is the image's highest score of any label.
    With ``spacing_mm`` (per image, row and column pixel spacing in mm, or None), each
    finding also has ``sensitivity_by_size`` (see :func:`sensitivity_by_size`).
    """
    _check_dataset(ground_truth, predictions, labels)
    if not isinstance(thresholds, Mapping) or set(thresholds) != set(labels):
        raise ValueError(f"thresholds {thresholds!r} must map exactly the labels {list(labels)}")
    map50, ap50 = mean_average_precision(ground_truth, predictions, labels, 0.5)
    map40, ap40 = mean_average_precision(ground_truth, predictions, labels, 0.4)
    per_finding: dict[str, Any] = {}
    calls_any = np.zeros(len(ground_truth), dtype=bool)
    for lab in labels:
        scores, positives = image_scores(predictions, lab), image_positives(ground_truth, lab)
        per_finding[lab] = {
            **sensitivity_specificity(scores, positives, thresholds[lab]),
            "auc": auc(scores, positives), "roc": roc_points(scores, positives),
            "ap50": ap50[lab], "ap40": ap40[lab],
            "froc": froc(ground_truth, predictions, lab)["sensitivity_at"],
            "threshold": thresholds[lab]}
        if spacing_mm is not None:
            per_finding[lab]["sensitivity_by_size"] = sensitivity_by_size(
                scores, largest_box_mm(ground_truth, lab, spacing_mm), thresholds[lab])
        calls_any |= scores >= thresholds[lab]
    any_positives = image_positives(ground_truth)
    any_finding = {**_confusion(calls_any, any_positives),
                   "auc": auc(image_scores(predictions), any_positives)}
    return _json_safe({"images": len(ground_truth), "map50": map50, "map40": map40,
                       "froc_iou_threshold": FROC_IOU_THRESHOLD,
                       "froc": froc(ground_truth, predictions)["sensitivity_at"],
                       "per_finding": per_finding, "any_finding": any_finding})
