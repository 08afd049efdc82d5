"""Evaluation metrics on hand-made cases whose answers are worked out in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.metrics import (
    GroundTruthBox,
    PredictedBox,
    auc,
    average_precision,
    evaluate,
    froc,
    iou,
    largest_box_mm,
    mean_average_precision,
    roc_curve,
    roc_points,
    sensitivity_by_size,
    sensitivity_specificity,
    threshold_for_operating_point,
    threshold_for_sensitivity,
    wilson_interval,
)

Z95 = 1.959963984540054


def gt(x1: float, y1: float, x2: float, y2: float, label: str = "Nodule") -> GroundTruthBox:
    return GroundTruthBox(x1, y1, x2, y2, label)


def pred(x1: float, y1: float, x2: float, y2: float, score: float,
         label: str = "Nodule") -> PredictedBox:
    return PredictedBox(x1, y1, x2, y2, label, score)


def far(score: float, label: str = "Nodule") -> PredictedBox:
    """A prediction that overlaps no ground-truth box in these tests: a false positive."""
    return pred(500, 500, 510, 510, score, label)


# --- IoU -----------------------------------------------------------------------------------

def test_iou_is_pairwise_and_matches_hand_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 4.5]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    # [0,0,10,10] vs [5,0,15,10]: intersection 5x10 = 50, union 100 + 100 - 50 = 150 -> 1/3.
    # [0,0,10,4.5] inside [0,0,10,10]: intersection 45, union 100 -> 0.45.
    # [0,0,10,4.5] vs [5,0,15,10]: intersection 5x4.5 = 22.5, union 45 + 100 - 22.5 -> 0.18367.
    expected = [[1.0, 1 / 3, 0.0], [0.45, 22.5 / 122.5, 0.0]]
    np.testing.assert_allclose(iou(a, b), expected)
    assert iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"a must have shape \(N, 4\)"):
        iou([[0, 0, 1]], [[0, 0, 1, 1]])


# --- AP and mAP ----------------------------------------------------------------------------

def test_perfect_predictions_have_ap_one():
    truth = [[gt(0, 0, 10, 10), gt(20, 20, 40, 40)], [], [gt(5, 5, 15, 25)]]
    predictions = [[pred(0, 0, 10, 10, 0.9), pred(20, 20, 40, 40, 0.8)], [],
                   [pred(5, 5, 15, 25, 0.7)]]
    assert average_precision(truth, predictions, "Nodule", 0.5) == 1.0


def test_ap_of_a_small_pr_case():
    # Three GT boxes; predictions by score: TP, FP, TP, FP, FP (the third box is missed).
    # cumulative TP 1,1,2,2,2 and FP 0,1,1,2,3 -> recall 1/3,1/3,2/3,2/3,2/3,
    # precision 1, 1/2, 2/3, 1/2, 2/5. Envelope: 1 up to recall 1/3, 2/3 up to recall 2/3,
    # 0 beyond. AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9.
    truth = [[gt(0, 0, 10, 10), gt(20, 0, 30, 10), gt(40, 0, 50, 10)]]
    predictions = [[pred(0, 0, 10, 10, 0.9), far(0.8), pred(20, 0, 30, 10, 0.7),
                    far(0.6), far(0.5)]]
    assert average_precision(truth, predictions, "Nodule") == pytest.approx(5 / 9)


def test_ap_uses_the_precision_envelope():
    # Two GT boxes; predictions FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
    # The envelope lifts precision at recall 1/2 to 2/3, so AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3
    # (without interpolation it would be 1/2 * 1/2 + 1/2 * 2/3 = 7/12).
    truth = [[gt(0, 0, 10, 10)], [gt(0, 0, 10, 10)]]
    predictions = [[far(0.9), pred(0, 0, 10, 10, 0.8)], [pred(0, 0, 10, 10, 0.7)]]
    assert average_precision(truth, predictions, "Nodule") == pytest.approx(2 / 3)


def test_iou_045_counts_at_04_but_not_at_05():
    # The prediction covers the lower 45% of the GT box: IoU 45 / 100 = 0.45.
    truth = [[gt(0, 0, 10, 10)]]
    predictions = [[pred(0, 0, 10, 4.5, 0.9)]]
    assert average_precision(truth, predictions, "Nodule", 0.4) == 1.0
    assert average_precision(truth, predictions, "Nodule", 0.5) == 0.0
    assert froc(truth, predictions)["sensitivity_at"]["0.5"] == 1.0  # FROC default IoU 0.4


def test_duplicate_detection_is_a_false_positive():
    # GT A and B; predictions A (0.9), A again (0.8), B (0.7) -> TP, FP, TP.
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Were the duplicate a TP, AP would be 1.
    truth = [[gt(0, 0, 10, 10), gt(20, 0, 30, 10)]]
    predictions = [[pred(0, 0, 10, 10, 0.9), pred(0, 0, 10, 10, 0.8),
                    pred(20, 0, 30, 10, 0.7)]]
    assert average_precision(truth, predictions, "Nodule") == pytest.approx(5 / 6)
    # FROC: the duplicate is the one false positive on the one image.
    result = froc(truth, predictions, fppi_points=(1,))
    np.testing.assert_allclose(result["fppi"], [0, 0, 1, 1])
    np.testing.assert_allclose(result["sensitivity"], [0, 0.5, 0.5, 1])


def test_a_prediction_takes_the_best_unmatched_box():
    # GT A = [0,0,10,10], B = [2,0,12,10]. The first prediction is A itself. The second,
    # [0.5,0,10.5,10], overlaps A best (95 / 105 = 0.905) but A is taken, so it takes B
    # (85 / 115 = 0.739 >= 0.5): two TPs, AP 1. (VOC's rule would call it FP: AP 1/2.)
    truth = [[gt(0, 0, 10, 10), gt(2, 0, 12, 10)]]
    predictions = [[pred(0, 0, 10, 10, 0.9), pred(0.5, 0, 10.5, 10, 0.8)]]
    assert average_precision(truth, predictions, "Nodule") == 1.0


def test_a_label_without_ground_truth_is_nan_and_left_out_of_map():
    # Nodule: one GT, found -> AP 1. Mass: one GT, only a far prediction -> AP 0.
    # Effusion: no GT -> NaN, so mAP = (1 + 0) / 2.
    truth = [[gt(0, 0, 10, 10), gt(20, 0, 30, 10, "Mass")]]
    predictions = [[pred(0, 0, 10, 10, 0.9), far(0.8, "Mass"), far(0.7, "Effusion")]]
    value, per_label = mean_average_precision(truth, predictions, ["Nodule", "Mass", "Effusion"])
    assert value == 0.5
    assert per_label["Nodule"] == 1.0 and per_label["Mass"] == 0.0
    assert math.isnan(per_label["Effusion"])


def test_a_box_of_another_label_does_not_match():
    truth = [[gt(0, 0, 10, 10)]]
    predictions = [[pred(0, 0, 10, 10, 0.9, "Mass")]]
    assert average_precision(truth, predictions, "Nodule") == 0.0


# --- image-level rates, Wilson, ROC, AUC -----------------------------------------------------

def test_acceptance_case_3tp_1fn_2tn_1fp():
    # Positives score 0.9, 0.8, 0.7 (TP) and 0.2 (FN); negatives 0.1, 0.3 (TN) and 0.6 (FP).
    # Sensitivity 3 / 4 = 0.75, specificity 2 / 3 = 0.667.
    scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.6]
    positives = [True, True, True, True, False, False, False]
    result = sensitivity_specificity(scores, positives, threshold=0.5)
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (3, 1, 2, 1)
    assert result["sensitivity"] == 0.75
    assert result["specificity"] == pytest.approx(0.667, abs=5e-4)
    assert result["sensitivity_ci"] == wilson_interval(3, 4)
    assert result["specificity_ci"] == wilson_interval(2, 3)


def test_a_score_equal_to_the_threshold_is_a_positive_call():
    result = sensitivity_specificity([0.5, 0.5], [1, 0], threshold=0.5)
    assert (result["tp"], result["fp"]) == (1, 1)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # Independent check: the Wilson bounds are the two roots p of
    # (p_hat - p)^2 = z^2 p (1 - p) / n, with p_hat = 0.8, n = 10, z = 1.959963984540054.
    for bound in (low, high):
        assert (0.8 - bound) ** 2 == pytest.approx(Z95 ** 2 * bound * (1 - bound) / 10)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes 11"):
        wilson_interval(11, 10)


@pytest.mark.parametrize(("scores", "expected"), [
    ([0.9, 0.8, 0.2, 0.1], 1.0),   # every positive above every negative
    ([0.8, 0.2, 0.6, 0.4], 0.5),   # 0.8 beats both negatives, 0.2 neither: 2 / 4
    ([0.1, 0.2, 0.8, 0.9], 0.0),   # every positive below every negative
    ([0.8, 0.5, 0.5, 0.2], 0.875),  # pairs 1 + 1 + 1/2 (tie 0.5 vs 0.5) + 1 = 3.5 / 4
])
def test_auc_is_the_mann_whitney_probability(scores, expected):
    assert auc(scores, [1, 1, 0, 0]) == expected


def test_auc_is_nan_with_one_class():
    assert math.isnan(auc([0.3, 0.7], [True, True]))


def test_roc_curve_of_the_tie_case():
    # Positives 0.8, 0.5; negatives 0.5, 0.2. Thresholds inf, 0.8, 0.5, 0.2 give
    # TPR 0, 1/2, 1, 1 and FPR 0, 0, 1/2, 1; the trapezoid area 1/2 * 3/4 + 1/2 * 1 = 0.875
    # equals the Mann-Whitney AUC with the tie counted 1/2.
    fpr, tpr, thresholds = roc_curve([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.5, 0.2])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == 0.875


def test_roc_points_keep_both_ends_and_at_most_the_points_asked_for():
    rng = np.random.default_rng(0)
    positives = np.arange(500) % 3 == 0
    scores = rng.random(500) + positives * 0.5  # 500 distinct scores: 501 curve points

    kept = roc_points(scores, positives, max_points=20)
    fpr, tpr, _ = roc_curve(scores, positives)

    assert len(kept["fpr"]) == len(kept["tpr"]) <= 20
    assert (kept["fpr"][0], kept["tpr"][0]) == (0, 0)
    assert (kept["fpr"][-1], kept["tpr"][-1]) == (1, 1)
    assert kept["fpr"] == sorted(kept["fpr"]) and kept["tpr"] == sorted(kept["tpr"])
    # Every kept point lies on the full curve (to the 4 decimals stored).
    on_curve = {(round(x, 4), round(y, 4)) for x, y in zip(fpr, tpr, strict=True)}
    assert set(zip(kept["fpr"], kept["tpr"], strict=True)) <= on_curve
    assert roc_points([0.8, 0.5, 0.5, 0.2], [1, 1, 0, 0]) == {
        "fpr": [0, 0, 0.5, 1], "tpr": [0, 0.5, 1, 1]}  # short curves kept whole
    assert roc_points([0.3, 0.7], [True, True]) is None  # one class: no curve


def test_threshold_for_sensitivity_keeps_specificity_and_leaves_room_below():
    # Ten positives scoring 0.9 ... 0.1 and 0.05; negatives 0.85, 0.35 and 0.02.
    # 90% sensitivity needs 9 of 10 positives called: the 9th highest positive score, 0.1.
    # The highest negative below 0.1 is 0.02, so any threshold in (0.02, 0.1] has the same
    # specificity (1 of 3): the midpoint 0.06 is chosen; sensitivity there is still 0.9.
    positive_scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    scores = positive_scores + [0.85, 0.35, 0.02]
    positives = [True] * 10 + [False] * 3
    assert threshold_for_sensitivity(scores, positives, 0.9) == pytest.approx(0.06)
    at_threshold = sensitivity_specificity(scores, positives, 0.06)
    assert at_threshold["sensitivity"] == 0.9
    assert at_threshold["specificity"] == sensitivity_specificity(scores, positives, 0.1)[
        "specificity"] == pytest.approx(1 / 3)
    assert sensitivity_specificity(scores, positives, 0.2)["sensitivity"] == 0.8
    # 70% needs 7 of 10 -> highest 0.3; no negative in (0, 0.3) except 0.02 -> (0.02+0.3)/2.
    assert threshold_for_sensitivity(scores, positives, 0.7) == pytest.approx(0.16)
    # 100% needs all -> the lowest positive, 0.05; gap down to 0.02 -> 0.035.
    assert threshold_for_sensitivity(scores, positives, 1.0) == pytest.approx(0.035)
    # Perfectly separated (negatives all below): the threshold sits inside the gap.
    assert threshold_for_sensitivity([0.9, 0.8, 0.3, 0.1], [True, True, False, False],
                                     0.9) == pytest.approx(0.55)


def test_operating_point_takes_the_widest_margin_over_both_targets():
    # Ten positives; 40 negatives, two of them among the positives' scores.
    positive_scores = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.3]
    scores = positive_scores + [0.4, 0.2] + [0.05] * 38
    positives = [True] * 10 + [False] * 40
    # Sensitivity alone stops at the 9th positive (0.5): 0.9 exactly, no room below it.
    assert threshold_for_sensitivity(scores, positives, 0.9) == pytest.approx(0.45)
    # Calling from 0.3 down gives sensitivity 1.0 (1.05 standard errors above 0.9 with 10
    # positives) at specificity 0.975 (1.58 above 0.9 with 40 negatives); from 0.2 the
    # specificity margin falls to 1.05, so 0.3 is kept, midway down to 0.2.
    threshold = threshold_for_operating_point(scores, positives, 0.9, 0.9)
    assert threshold == pytest.approx(0.25)
    rates = sensitivity_specificity(scores, positives, threshold)
    assert (rates["sensitivity"], rates["specificity"]) == (1.0, 0.975)


def test_operating_point_falls_back_to_sensitivity_when_both_targets_cannot_hold():
    # Half the negatives score above every positive: no threshold has specificity 0.9 and
    # sensitivity 0.9 together, so sensitivity comes first.
    scores = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.3] + [0.95] * 5 + [0.05] * 5
    positives = [True] * 10 + [False] * 10
    assert threshold_for_operating_point(scores, positives, 0.9, 0.9) == pytest.approx(
        threshold_for_sensitivity(scores, positives, 0.9)) == pytest.approx(0.275)
    with pytest.raises(ValueError, match="target_specificity"):
        threshold_for_operating_point(scores, positives, 0.9, 1.0)


# --- FROC ----------------------------------------------------------------------------------

def test_froc_on_a_small_case():
    # Two images, three lesions. By score: 0.9 hit, 0.8 FP, 0.7 FP, 0.6 hit, 0.2 FP, 0.15 hit.
    # After each: (FP / 2 images, hits / 3) = (0, 1/3), (0.5, 1/3), (1, 1/3), (1, 2/3),
    # (1.5, 2/3), (1.5, 1). Best sensitivity with FPPI <= 0.5: 1/3; <= 1: 2/3; <= 2, 4: 1.
    truth = [[gt(0, 0, 10, 10), gt(20, 20, 30, 30)], [gt(0, 0, 10, 10)]]
    predictions = [[pred(0, 0, 10, 10, 0.9), far(0.8), pred(20, 20, 30, 30, 0.15)],
                   [far(0.7), pred(0, 0, 10, 10, 0.6), far(0.2)]]
    result = froc(truth, predictions)
    assert result["sensitivity_at"] == pytest.approx({"0.5": 1 / 3, "1": 2 / 3, "2": 1, "4": 1})
    np.testing.assert_allclose(result["fppi"], [0, 0, 0.5, 1, 1, 1.5, 1.5])
    np.testing.assert_allclose(result["sensitivity"] * 3, [0, 1, 1, 1, 2, 2, 3])
    assert result["lesions"] == 3


def test_froc_pools_labels_but_matches_like_to_like():
    # One image, a Nodule at A and an Effusion at E. Predictions: Nodule at A 0.9 (hit),
    # Effusion at A 0.8 (FP: wrong place for an effusion), Effusion at E 0.7 (hit).
    # Pooled: (0, 1/2), (1, 1/2), (1, 1) -> at FPPI 0.5: 1/2, at 1: 1.
    # Effusion only: (1, 0), (1, 1) -> at 0.5: 0, at 1: 1.
    truth = [[gt(0, 0, 10, 10), gt(50, 50, 90, 90, "Effusion")]]
    predictions = [[pred(0, 0, 10, 10, 0.9), pred(0, 0, 10, 10, 0.8, "Effusion"),
                    pred(50, 50, 90, 90, 0.7, "Effusion")]]
    assert froc(truth, predictions, fppi_points=(0.5, 1))["sensitivity_at"] == {
        "0.5": 0.5, "1": 1.0}
    assert froc(truth, predictions, "Effusion", fppi_points=(0.5, 1))["sensitivity_at"] == {
        "0.5": 0.0, "1": 1.0}


# --- the report ----------------------------------------------------------------------------

def test_evaluate_report_is_json_and_has_the_agreed_keys():
    # Images 0-3 have a Nodule; 4-6 are normal. Nodule image scores as in the acceptance case
    # (0.9, 0.8, 0.7, 0.2 | 0.1, 0.3, 0.6), threshold 0.5 -> TP 3, FN 1, TN 2, FP 1.
    # Nodule AUC: 0.9, 0.8, 0.7 beat all three negatives, 0.2 beats only 0.1 -> 10 / 12.
    # Nodule AP: by score TP TP TP FP FP TP FP; precision at recall 3/4 is 1, and the envelope
    # at recall 1 is 4/6 -> AP = 3/4 + 1/4 * 2/3 = 11/12, and mAP is the Nodule AP (Effusion
    # has no GT). An Effusion prediction (0.4 < its threshold 0.5) on image 4 raises that
    # image's any-finding score to 0.4, so any-finding AUC = (3 + 3 + 3 + 0) / 12 = 0.75; the
    # any-finding calls are the Nodule calls, so the counts are again 3, 1, 2, 1.
    box = (0, 0, 10, 10)
    truth = [[gt(*box)] for _ in range(4)] + [[] for _ in range(3)]
    nodule_scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.6]
    predictions = [[pred(*box, s) if i < 4 else far(s)] for i, s in enumerate(nodule_scores)]
    predictions[4].append(far(0.4, "Effusion"))
    labels = ["Nodule", "Effusion"]
    report = evaluate(truth, predictions, labels, {"Nodule": 0.5, "Effusion": 0.5})

    json.dumps(report, allow_nan=False)
    assert report["images"] == 7
    assert report["map50"] == pytest.approx(11 / 12) and report["map40"] == pytest.approx(11 / 12)
    nodule = report["per_finding"]["Nodule"]
    assert set(nodule) >= {"sensitivity", "specificity", "sensitivity_ci", "specificity_ci",
                           "auc", "ap50", "ap40", "froc", "threshold", "tp", "fn", "tn", "fp"}
    assert (nodule["tp"], nodule["fn"], nodule["tn"], nodule["fp"]) == (3, 1, 2, 1)
    assert nodule["sensitivity"] == 0.75 and nodule["specificity"] == pytest.approx(2 / 3)
    assert nodule["sensitivity_ci"] == list(wilson_interval(3, 4))
    assert nodule["auc"] == pytest.approx(10 / 12) and nodule["threshold"] == 0.5
    assert nodule["roc"] == roc_points(nodule_scores, [1, 1, 1, 1, 0, 0, 0])
    assert set(nodule["froc"]) == {"0.5", "1", "2", "4"}
    effusion = report["per_finding"]["Effusion"]  # no GT: NaN written as None
    assert effusion["ap50"] is None and effusion["auc"] is None and effusion["roc"] is None
    assert effusion["sensitivity"] is None and effusion["sensitivity_ci"] == [None, None]
    assert effusion["specificity"] == 1.0
    anything = report["any_finding"]
    assert (anything["tp"], anything["fn"], anything["tn"], anything["fp"]) == (3, 1, 2, 1)
    assert set(anything) >= {"sensitivity", "specificity", "sensitivity_ci", "specificity_ci"}
    assert anything["auc"] == pytest.approx(0.75)


def test_sensitivity_by_size_bands_the_positives_by_their_largest_box_in_mm():
    # Longer side in mm = max(width x column spacing, height x row spacing), largest box:
    # 8 px at 1 mm -> 8 (<10); 15 -> 15 (10-20); 10 wide x 25 high at (row 0.5, column 2.0)
    # mm -> max(20, 12.5) = 20 (20-30: bands include their lower edge); boxes of 5 and 40 px
    # -> 40 (>=30); unknown spacing and the normal image are left out.
    truth = [[gt(0, 0, 8, 8)], [gt(0, 0, 15, 15)], [gt(0, 0, 10, 25)],
             [gt(0, 0, 5, 5), gt(50, 50, 90, 90)], [gt(0, 0, 50, 50)], []]
    spacing = [(1.0, 1.0), (1.0, 1.0), (0.5, 2.0), (1.0, 1.0), None, (1.0, 1.0)]
    sizes = largest_box_mm(truth, "Nodule", spacing)
    assert sizes[:4].tolist() == [8.0, 15.0, 20.0, 40.0] and np.isnan(sizes[4:]).all()

    bands = sensitivity_by_size([0.2, 0.7, 0.6, 0.4, 0.9, 0.8], sizes, 0.5)

    assert {name: (b["found"], b["positives"]) for name, b in bands.items()} == {
        "<10 mm": (0, 1), "10-20 mm": (1, 1), "20-30 mm": (1, 1), ">=30 mm": (0, 1)}
    assert bands["10-20 mm"]["sensitivity"] == 1.0
    assert bands["10-20 mm"]["sensitivity_ci"] == wilson_interval(1, 1)
    empty = sensitivity_by_size([0.9], [math.nan], 0.5)["<10 mm"]
    assert empty["positives"] == 0 and math.isnan(empty["sensitivity"])
    report = evaluate(truth, [[] for _ in truth], ["Nodule"], {"Nodule": 0.5}, spacing)
    assert report["per_finding"]["Nodule"]["sensitivity_by_size"][">=30 mm"] == {
        "positives": 1, "found": 0, "sensitivity": 0.0,
        "sensitivity_ci": list(wilson_interval(0, 1))}


# --- validation ----------------------------------------------------------------------------

def test_mismatched_image_counts_name_both_lengths():
    truth = [[], []]
    predictions = [[], [], []]
    message = "ground_truth has 2 images but predictions has 3"
    with pytest.raises(ValueError, match=message):
        average_precision(truth, predictions, "Nodule")
    with pytest.raises(ValueError, match=message):
        froc(truth, predictions)
    with pytest.raises(ValueError, match=message):
        evaluate(truth, predictions, ["Nodule"], {"Nodule": 0.5})


def test_bad_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="x1 < x2"):
        gt(10, 0, 0, 10)
    with pytest.raises(ValueError, match="score 1.5"):
        pred(0, 0, 10, 10, 1.5)
    with pytest.raises(ValueError, match='label "Mass"'):
        evaluate([[gt(0, 0, 1, 1, "Mass")]], [[]], ["Nodule"], {"Nodule": 0.5})
    with pytest.raises(ValueError, match="thresholds"):
        evaluate([[]], [[]], ["Nodule", "Mass"], {"Nodule": 0.5})
    with pytest.raises(TypeError, match=r"predictions\[0\] holds"):
        average_precision([[gt(0, 0, 1, 1)]], [[gt(0, 0, 1, 1)]], "Nodule")
