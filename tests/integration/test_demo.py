"""``cxr-node demo``: what a newcomer runs first must work and say what it did."""

from __future__ import annotations

import json
import subprocess

import pydicom
import pytest

from tests.peers import CXR_NODE, REPO

# The whole loop with Orthanc and the bundled model: a limit of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_sends_studies_and_shows_results_latency_and_previews(tmp_path, tool):
    tool("Orthanc")  # the demo's PACS when installed, as in CI
    out = tmp_path / "demo"

    result = subprocess.run([*CXR_NODE, "demo", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=560)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["studies_sent"] >= 7
    assert summary["studies_with_results"] == summary["studies_sent"]
    assert summary["objects_received"] >= 3 * summary["studies_sent"]
    assert 0 < summary["latency_p95_s"] < 60
    assert "PACS: Orthanc" in result.stdout
    table = "\n".join(lines)
    assert "real CR, pydicom-data RG1_UNCR" in table
    assert len([line for line in lines if line.startswith("synthetic ")]) >= 6
    assert any(" normal " in line for line in lines if line.startswith("synthetic "))

    received = list((out / "received").rglob("*.dcm"))
    assert len(received) == summary["objects_received"]
    modalities = {pydicom.dcmread(path, stop_before_pixels=True).Modality for path in received}
    assert modalities == {"SR", "PR", "OT"}
    previews = list((out / "previews").glob("*.png"))
    assert len(previews) == summary["studies_sent"]  # one burned-in overlay per image
