"""What a radiologist sees of the node's results in OHIF, the most used open web viewer.

The whole path with real parts: Orthanc (with its DICOMweb plugin) is the PACS and routes
a generated chest radiograph to ``cxr-node serve``; the node returns its SR, GSPS and SC to
Orthanc; OHIF (``@ohif/app``, prebuilt, served with a same-origin proxy by node.viewer)
opens the study in Debian's Chromium. The assertions are on what the page shows: each
finding's name and probability on its box, each finding in the measurement panel after
tracking, and the burned-in Secondary Capture. Screenshots are kept in
``var/test-output/viewer/`` (see the test's output for the paths).
"""

from __future__ import annotations

import re
import subprocess
import time

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from node.viewer import (
    DEFAULT_OHIF_DIST,
    DICOMWEB_CONFIG,
    ViewerServer,
    ViewerUnavailable,
    check_viewer,
)
from tests.conftest import unavailable
from tests.integration import ohif
from tests.integration.conftest import wait_until
from tests.peers import REPO, OrthancProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
WORKER = {"run_in_serve": True, "device": "cpu"}
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"}
SCREENSHOTS = REPO / "var" / "test-output" / "viewer"
RAW_CODE = re.compile(r"\b\d{5,}\b")  # a SNOMED or DCM code value shown as it is


@pytest.fixture
def viewer_parts(tool):
    tool("Orthanc")
    try:
        check_viewer(DEFAULT_OHIF_DIST)
    except ViewerUnavailable as exc:
        unavailable(str(exc))
    missing = ohif.browser_missing()
    if missing:
        unavailable(missing)


def findings_in(sr: pydicom.Dataset) -> list[tuple[str, float]]:
    """(finding name, probability in percent) for each TID 1410 group of ``sr``, read from
    the Finding row (DCM 121071) and the group's NUM, as any SR consumer would."""
    found = []
    for item in _walk(sr):
        if item.get("ValueType") != "CONTAINER" or "ContentSequence" not in item:
            continue
        rows = item.ContentSequence
        name = next((r.ConceptCodeSequence[0].CodeMeaning for r in rows
                     if r.ValueType == "CODE"
                     and r.ConceptNameCodeSequence[0].CodeValue == "121071"), None)
        value = next((float(r.MeasuredValueSequence[0].NumericValue) for r in rows
                      if r.ValueType == "NUM"), None)
        if name is not None and value is not None:
            found.append((name, value))
    return found


def shows(texts: list[str], name: str, percent: float) -> bool:
    """Whether one of ``texts`` names ``name`` with ``percent`` (as written, or rounded)."""
    pattern = re.compile(rf"{re.escape(name)}\W+(\d+(?:\.\d+)?) ?%")
    return any(abs(float(m.group(1)) - percent) <= 0.5
               for text in texts for m in pattern.finditer(text))


def verify(ds: pydicom.Dataset, folder, dciodvfy: str) -> str:
    """dciodvfy's verdict on ``ds``: its lines that say Error fail the test; the rest is
    returned for the output."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                            timeout=60).stderr.strip()
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    return " / ".join(report.splitlines())


def _walk(item):
    yield item
    for child in item.get("ContentSequence", []):
        yield from _walk(child)


def test_radiologist_sees_each_finding_by_name_and_probability_in_ohif(start_node, tmp_path,
                                                                      viewer_parts, tool):
    from model.phantom import synthesize_case

    started = time.monotonic()
    node_port = free_port()
    case = synthesize_case(2, 2, size_range=(1500, 2200))  # the demo's Mass/Nodule/PTX study
    source = tmp_path / "chest.dcm"
    case.dataset.save_as(source, enforce_file_format=True)
    with OrthancProcess(tmp_path, modalities={
            "cxrnode": {"AET": "CXRNODE", "Host": "127.0.0.1", "Port": node_port}},
            extra_config=DICOMWEB_CONFIG) as orthanc:
        start_node(port=node_port, worker=WORKER,
                   peers=[{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}],
                   destinations=[{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                  "port": orthanc.dicom_port},
                                 # the same report as Comprehensive SR, as for a PACS
                                 # without 3D SR: OHIF must read both alike
                                 {"name": "PACS-2D", "ae_title": "ORTHANC",
                                  "host": "127.0.0.1", "port": orthanc.dicom_port,
                                  "sr_storage": "comprehensive", "send_gsps": False,
                                  "send_secondary_capture": False}])
        instance = orthanc.upload(source)
        study = orthanc.get(f"/instances/{instance}/study")["ID"]
        orthanc.post("/modalities/cxrnode/store", {"Resources": [instance]})
        wait_until(lambda: len(orthanc.get(f"/studies/{study}/instances")) >= 5, timeout=90,
                   interval=0.5)
        objects = [pydicom.dcmread(DicomBytesIO(orthanc.download(i["ID"])))
                   for i in orthanc.get(f"/studies/{study}/instances")]
        for ds in objects:  # what the viewer is given is valid, as sent
            if ds.SOPInstanceUID != case.dataset.SOPInstanceUID:
                print(f"\ndciodvfy {ds.Modality}: {verify(ds, tmp_path, tool('dciodvfy'))}")
        reports = [ds for ds in objects if ds.SOPClassUID in SR_CLASSES]
        assert {ds.SOPClassUID for ds in reports} == SR_CLASSES
        expected = findings_in(reports[0])
        assert findings_in(reports[1]) == expected
        assert len(expected) >= 3, f"the bundled model should find several: {expected}"
        print(f"\nfindings in the SR: {expected}")

        viewer = ViewerServer(DEFAULT_OHIF_DIST, orthanc.http_port).start()
        try:
            with ohif.chromium_page(SCREENSHOTS) as page:
                page.open_study(viewer.study_url(str(case.dataset.StudyInstanceUID)))
                for number in (1, 0):  # one is Comprehensive SR, the other 3D SR
                    page.open_series(str(case.dataset.SeriesDescription))
                    page.wait_for_no_labels()  # the image alone, before the next report
                    page.open_series(ohif.SR_TITLE, number)
                    labels = page.overlay_labels(len(expected))
                    print(f"labels on the image before tracking: {labels}  "
                          f"({page.shot(f'1-sr-{number}-before-tracking')})")
                    for name, percent in expected:
                        assert shows(labels, name, percent), f"no {name} {percent}: {labels}"
                    assert not [label for label in labels if RAW_CODE.search(label)], labels

                panel = page.track_measurements(len(expected))
                print(f"measurement panel after tracking: {panel!r}  "
                      f"({page.shot('2-sr-tracked')})")
                assert f"Measurements ({len(expected)})" in panel
                for name, percent in expected:
                    assert shows([panel], name, percent), f"{name} {percent} not listed: {panel}"
                assert not [c for c in page.console if "Unable to generate tool state" in c]

                page.open_series(ohif.SC_TITLE)
                corner = page.wait_for_viewport_series(ohif.SC_TITLE)
                print(f"secondary capture in the viewport ({corner!r}): "
                      f"{page.shot('3-secondary-capture')}")
        finally:
            viewer.stop()
    print(f"viewer test took {time.monotonic() - started:.1f} s")
