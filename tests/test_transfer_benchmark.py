"""benchmarks/transfer.py: issue 15's figures on findings drawn into a real radiograph."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.transfer import (
    above_thresholds,
    card_seeds,
    false_positives,
    held_out_style,
    lesions_found,
    measure,
    table,
)
from model.card import ModelCard
from tests.model.conftest import write_model
from tests.peers import REPO
from training.metrics import GroundTruthBox, PredictedBox

ISSUE_KEYS = ["onto_mass_nodule_sens", "onto_atel_infil_sens", "onto_fp_per_image",
              "synthetic_map50", "findings_at_target"]


def test_bundled_card_names_its_training_and_held_out_seeds():
    training, held_out, sizes = card_seeds(ModelCard.load(REPO / "model" / "bundled"))

    assert (training, held_out, sizes) == ({1}, 2, (768, 1280))


def test_the_held_out_set_is_drawn_in_the_style_its_card_names(tmp_path):
    text = "cxr-node synth --count 300 --seed 22 --style radiograph (seed not used in training)"
    radiograph = write_model(tmp_path / "r", metrics={
        "held_out_synthetic": {"dataset": {"generated_by": text}}})
    classic = write_model(tmp_path / "c", metrics={
        "held_out_synthetic": {"dataset": {"generated_by": text.replace(" --style radiograph",
                                                                        "")}}})

    assert held_out_style(radiograph) == "radiograph"
    assert held_out_style(classic) == "classic"
    assert card_seeds(radiograph)[1] == 22


def test_every_training_seed_and_range_a_card_names_is_a_training_seed(tmp_path):
    card = write_model(tmp_path, metrics={"validation": {"dataset": {"generated_by": (
        "cxr-node synth --count 800 --seed 21 --style radiograph; cxr-node synth --count 250 "
        "--seed 1; cxr-node synth --onto BG --count 4 --seed 100..103 --style radiograph")}}})

    assert card_seeds(card)[0] == {1, 21, 100, 101, 102, 103}


def test_a_lesion_is_found_only_by_its_own_finding_above_threshold_at_iou_04():
    truth = [[GroundTruthBox(0, 0, 100, 100, "Mass"), GroundTruthBox(200, 200, 240, 240, "Nodule")],
             [GroundTruthBox(0, 0, 100, 100, "Atelectasis")]]
    predictions = [
        [PredictedBox(0, 0, 100, 160, "Mass", score=0.9),       # IoU 0.625: found
         PredictedBox(0, 0, 100, 100, "Mass", score=0.8),       # duplicate: a false positive
         PredictedBox(200, 200, 240, 240, "Mass", score=0.9),   # the nodule, wrong finding
         PredictedBox(200, 200, 240, 240, "Nodule", score=0.1)],  # below threshold
        [PredictedBox(0, 0, 100, 300, "Atelectasis", score=0.9)]]  # IoU 0.33: a miss
    thresholds = {"Mass": 0.5, "Nodule": 0.5, "Atelectasis": 0.5}
    calls = above_thresholds(predictions, thresholds)

    assert lesions_found(truth, calls, ("Mass", "Nodule")) == (1, 2)
    assert lesions_found(truth, calls, ("Atelectasis", "Infiltration")) == (0, 1)
    assert false_positives(truth, calls) == 3


def test_tiny_run_prints_the_issue_keys_in_range(chest_cr, tmp_path):
    model_dir = tmp_path / "model"
    # Untrained, at 128 px (the smallest EfficientDet input), and no seeds on its card.
    labels = write_model(model_dir, image_size=128, preprocessing={
        "image_size": 128, "low_percentile": 0.5, "high_percentile": 99.5}).labels

    result = measure(model_dir, chest_cr["RG1_UNCR.dcm"], (7303, 11), cases=2,
                     synthetic_cases=4, work_dir=tmp_path / "sets")

    assert list(result)[:5] == ISSUE_KEYS
    for key in ("onto_mass_nodule_sens", "onto_atel_infil_sens"):
        found, lesions = result[key.replace("_sens", "_found_lesions")]
        assert 0 <= found <= lesions
        assert result[key] == (found / lesions if lesions else None)
    assert result["onto_fp_per_image"] == result["onto_fp_boxes"] / 4 >= 0
    assert result["synthetic_map50"] is None or 0 <= result["synthetic_map50"] <= 1
    assert result["findings_at_target"] in range(len(labels) + 1)
    assert (result["onto_images"], result["synthetic_images"]) == (4, 4)
    assert (result["synthetic_seed"], result["synthetic_sizes"]) == (2, [128, 213])
    assert len(list((tmp_path / "sets" / "onto-11-classic" / "images").iterdir())) == 2
    assert "findings_at_target:" in table(result)

    kept = tmp_path / "sets" / "onto-11-classic" / "labels.csv"
    written = kept.stat().st_mtime_ns
    again = measure(model_dir, chest_cr["RG1_UNCR.dcm"], (7303, 11), cases=2,
                    synthetic_cases=4, work_dir=tmp_path / "sets")
    assert kept.stat().st_mtime_ns == written  # the kept set is reused, not drawn again
    assert {k: again[k] for k in ISSUE_KEYS} == {k: result[k] for k in ISSUE_KEYS}


def test_a_training_seed_is_refused(chest_cr, tmp_path):
    with pytest.raises(ValueError, match=r"onto seed\(s\) \[1\] were used to train"):
        measure(Path(REPO / "model" / "bundled"), chest_cr["RG1_UNCR.dcm"], (7303, 1),
                cases=2, synthetic_cases=4, work_dir=tmp_path)
    assert not list(tmp_path.iterdir())
