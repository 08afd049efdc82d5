"""`cxr-node evaluate` writes the report a reviewer reads: JSON, Markdown and plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model.card import ModelCard
from tests.model.conftest import write_model
from tests.peers import REPO


@pytest.mark.timeout(300)  # slow (tests/conftest.py): a CLI over 48 images
def test_evaluate_command_writes_metrics_summary_and_plots(squares, tmp_path):
    # What is checked is the report, not the model: an untrained one at 128 px (a quarter
    # of the pixels of 256) reads the 48 images fastest.
    write_model(tmp_path / "model", image_size=128)
    out = tmp_path / "report"

    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "evaluate", "--data", str(squares),
         "--model", str(tmp_path / "model"), "--out", str(out), "--device", "cpu",
         "--record-in-card", "squares"],
        cwd=REPO, capture_output=True, text=True, timeout=280)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP@0.5" in result.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert {"map50", "map40", "per_finding", "any_finding"} <= set(report)
    mass = report["per_finding"]["Mass"]
    assert {"sensitivity", "specificity", "auc", "ap50", "sensitivity_ci", "froc"} <= set(mass)
    assert mass["tp"] + mass["fn"] == 32  # the squares set has 32 images with a Mass
    assert report["per_finding"]["Nodule"]["sensitivity"] is None  # no Nodule in the set
    by_size = mass["sensitivity_by_size"]  # squares of 15-39.5 mm (30-79 px at 0.5 mm)
    assert list(by_size) == ["<10 mm", "10-20 mm", "20-30 mm", ">=30 mm"]
    assert by_size["<10 mm"]["positives"] == 0
    assert sum(band["positives"] for band in by_size.values()) == 32
    assert sum(band["found"] for band in by_size.values()) == mass["tp"]
    summary = (out / "summary.md").read_text()
    assert "| Mass |" in summary and "any finding" in summary
    assert "Sensitivity by size" in summary
    recorded = ModelCard.load(tmp_path / "model").metrics["squares"]
    assert recorded["dataset"]["images"] == 48
    assert recorded["values"]["map50"] == report["map50"]
    for plot in ("roc.png", "froc.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
