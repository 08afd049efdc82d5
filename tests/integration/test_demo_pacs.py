"""The demo's receiving PACS, both kinds: Orthanc (``cxr-node demo`` where it is installed)
and the store SCP (elsewhere, and with ``--viewer``) answer which objects arrived, and when.

``tests/integration/test_demo.py`` runs the demo with ``--viewer``, on the store SCP; this
keeps the plain demo's Orthanc path tested without a second run of the whole demo.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from node.demo import DemoStudy, send_study
from node.demo_pacs import InboxPacs, OrthancPacs
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["store SCP", "Orthanc"])
def test_an_object_sent_to_the_pacs_is_seen_once_with_the_time_it_arrived(kind, tmp_path, tool):
    if kind == "Orthanc":
        tool("Orthanc")
    pacs = InboxPacs() if kind == "store SCP" else OrthancPacs(tmp_path / "pacs")
    source = Path(get_testdata_file("CT_small.dcm"))
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    study = DemoStudy(source, uid, "CT_small", "unknown")
    pacs.start()
    try:
        empty = pacs.arrivals()
        before = time.time()
        send_study(study, pacs.port, pacs.ae_title)  # as the node's sender would
        arrivals = wait_until(pacs.arrivals, timeout=30)
        again = pacs.arrivals()
    finally:
        pacs.stop()

    assert empty == []
    [arrival] = arrivals
    assert arrival.dataset.SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert str(arrival.dataset.StudyInstanceUID) == uid
    assert before <= arrival.at <= time.time()
    assert again == arrivals  # seen once, its time kept
