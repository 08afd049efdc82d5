"""``cxr-node demo``: what a newcomer runs first must work and say what it did."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request

import pydicom
import pytest

from node.viewer import DEFAULT_OHIF_DIST, ViewerUnavailable, check_viewer
from tests.conftest import unavailable
from tests.peers import CXR_NODE, REPO

# The whole loop with Orthanc and the bundled model: a limit of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_sends_studies_and_shows_results_latency_previews_and_viewer(tmp_path, tool):
    tool("Orthanc")  # the demo's PACS when installed, as in CI
    try:
        check_viewer(DEFAULT_OHIF_DIST)
    except ViewerUnavailable as exc:
        unavailable(str(exc))
    out = tmp_path / "demo"

    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        demo = subprocess.Popen([*CXR_NODE, "demo", "--out", str(out), "--viewer"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    while not lines or "Ctrl-C stops" not in lines[-1]:
        line = demo.stdout.readline()
        assert line, f"the demo ended early: {''.join(lines)}{errors.read_text()}"
        lines.append(line)
    urls = re.findall(r"http://127\.0\.0\.1:\d+/viewer\?StudyInstanceUIDs=[\d.]+", "".join(lines))
    root = urls[0].split("/viewer")[0]
    with urllib.request.urlopen(urls[0], timeout=10) as page:
        assert b"app-config.js" in page.read()  # OHIF's page, which loads our configuration
    with urllib.request.urlopen(f"{root}/app-config.js", timeout=10) as config:
        assert b"qidoRoot" in config.read()
    with urllib.request.urlopen(f"{root}/dicom-web/studies", timeout=10) as answer:
        studies = json.loads(answer.read())
    demo.send_signal(signal.SIGINT)  # as the newcomer's Ctrl-C
    stdout, _ = demo.communicate(timeout=60)

    assert demo.returncode == 0, "".join(lines) + stdout + errors.read_text()
    lines = [line.rstrip("\n") for line in lines]
    summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    assert len(urls) == summary["studies_sent"]
    # Each study in the viewer's PACS holds its image and the node's SR, GSPS and SC.
    assert len(studies) == summary["studies_sent"]
    assert all(study["00201208"]["Value"][0] == 4 for study in studies), studies
    assert summary["studies_sent"] >= 7
    assert summary["studies_with_results"] == summary["studies_sent"]
    assert summary["objects_received"] >= 3 * summary["studies_sent"]
    assert 0 < summary["latency_p95_s"] < 60
    assert "PACS: Orthanc" in lines[0]
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
