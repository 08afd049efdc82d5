"""``cxr-node demo``: what a newcomer runs first must work and say what it did.

With ``--viewer`` the node stays up and is the only server: a person logs in with the
account the demo printed, opens a study at the address it printed, tracks the node's
findings and sees each by name and probability in OHIF served by the node, each box drawn
(the screenshot in ``var/test-output/demo-viewer/``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pydicom
import pytest

from tests.integration import ohif
from tests.integration.test_viewer import findings_in, shows
from tests.peers import CXR_NODE, REPO

# The whole loop with the bundled model, then OHIF in Chromium: a limit of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SCREENSHOTS = REPO / "var" / "test-output" / "demo-viewer"
STUDY_URL = re.compile(r"^  (.+?) +(http://127\.0\.0\.1:\d+/viewer/viewer\?StudyInstanceUIDs="
                       r"([\d.]+))$")


def test_demo_sends_studies_and_shows_results_latency_previews_and_viewer(tmp_path):
    ohif.require_viewer()
    out = tmp_path / "demo"
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:
        demo = subprocess.Popen([*CXR_NODE, "demo", "--out", str(out), "--viewer"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    try:
        while not lines or "Ctrl-C stops" not in lines[-1]:
            line = demo.stdout.readline()
            assert line, f"the demo ended early: {''.join(lines)}{errors.read_text()}"
            lines.append(line)
        ready = time.monotonic()
        lines = [line.rstrip("\n") for line in lines]
        text = "\n".join(lines)
        summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        studies = [STUDY_URL.match(line).groups() for line in lines if STUDY_URL.match(line)]
        root = re.search(r"(http://127\.0\.0\.1:\d+)/viewer/ \(the study list\)",
                         text).group(1)
        name, password = re.search(r"^Log in as (\S+) \(viewer role\), password (\S+)$",
                                   text, re.MULTILINE).groups()
        # a study with findings; not the real CR, which OHIF draws black (docs/viewer.md)
        description, url, uid = next(study for study in studies
                                     if study[0].startswith("synthetic ")
                                     and _findings_received(out, study[2]))
        expected = _findings_received(out, uid)
        with ohif.chromium_page(SCREENSHOTS) as page:
            try:
                page.page.goto(url)  # the login first, then back to the same study
                page.page.fill("#name", name)
                page.page.fill("#password", password)
                page.page.get_by_role("button", name="Log in").click()
                page.page.get_by_text("Skip all").click()  # OHIF's tour, once the image is up
                page.open_series(ohif.SR_TITLE)
                # Tracked, as a radiologist keeps them: tracked, OHIF lists each finding and
                # draws each box (labelled with its statistics). The names on the previewed
                # boxes, which a slowed OHIF draws only once the image is redrawn
                # (ohif.OhifPage.overlay_labels), are test_viewer.py's and
                # test_dicomweb_read.py's to check.
                panel = page.track_measurements(len(expected))
                boxes = page.overlay_labels(len(expected))
                print(f"\n{description}, opened from the demo's address: {panel!r}  "
                      f"({page.shot('study-sr-tracked')})")
                # what OHIF read: the node's own QIDO-RS, with the viewer account's login
                held = page.page.request.get(f"{root}/dicomweb/studies",
                                             headers={"Accept": "application/dicom+json"}
                                             ).json()
            except Exception:
                print(f"\nwhat the browser showed: {page.shot('failed')}\nbrowser console:\n"
                      + "\n".join(page.console[-30:]))
                raise
        print(f"the viewer part took {time.monotonic() - ready:.1f} s")
    finally:
        demo.send_signal(signal.SIGINT)  # as the newcomer's Ctrl-C
        try:
            stdout, _ = demo.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise

    assert demo.returncode == 0, "\n".join(lines) + stdout + errors.read_text()
    assert f"Measurements ({len(expected)})" in panel
    for finding, percent in expected:
        assert shows([panel], finding, percent), f"{finding} {percent} not listed: {panel}"
    assert len(boxes) >= len(expected), boxes
    assert len(studies) == summary["studies_sent"]
    # The node holds each study's image and its own SR, GSPS and SC, and serves them.
    assert sorted(study["0020000D"]["Value"][0] for study in held) == sorted(
        study[2] for study in studies)
    assert all(study["00201208"]["Value"][0] == 4 for study in held), held
    assert all({"SR", "PR", "OT"} <= set(study["00080061"]["Value"]) for study in held), held
    assert "setup/" not in errors.read_text()  # the account exists: no first-admin link
    assert summary["studies_sent"] >= 7
    assert summary["studies_with_results"] == summary["studies_sent"]
    assert summary["objects_received"] >= 3 * summary["studies_sent"]
    assert 0 < summary["latency_p95_s"] < 60
    assert "PACS: pynetdicom store SCP" in lines[0]  # no Orthanc with --viewer
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


def _findings_received(out, study_uid: str) -> list[tuple[str, float]]:  # noqa: ANN001
    """(finding, percent) in the SR that the demo's PACS received for the study."""
    reports = sorted((out / "received" / study_uid).glob("SR-*.dcm"))
    return findings_in(pydicom.dcmread(reports[0])) if reports else []
