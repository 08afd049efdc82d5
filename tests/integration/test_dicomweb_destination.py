"""Results to a DICOMweb archive over STOW-RS: Orthanc with its DICOMweb plugin as the archive.

What a site checks: the SR, GSPS and SC of a study sent to the node arrive in the archive
as the node stored them (same bytes, same SOP Instance UIDs), read back with QIDO-RS by
``dicomweb-client``; an archive that is down gets retries, then dead letters that an admin
re-queues once it is back, and each object then arrives once; wrong credentials show as
HTTP 401 on the console's Transfers page while the back-off spaces the tries.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from sqlalchemy import func, select

from storage.models import AuditEvent, ResultObject, Transfer, TransferState
from tests.conftest import unavailable
from tests.factories import write_chest
from tests.integration.conftest import audit_events, query, wait_until
from tests.peers import CXR_NODE, REPO, NodeProcess, OrthancProcess, storescu

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ORTHANC_USER, ORTHANC_PASSWORD = "cxr", "archive-pass-1"


class DicomwebOrthanc(OrthancProcess):
    """Orthanc with the DICOMweb plugin at /dicom-web/, optionally behind HTTP basic auth."""

    def __init__(self, workdir: Path, *, basic_auth: bool = False) -> None:
        extra = {"Plugins": [str(DICOMWEB_PLUGIN)],
                 "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        if basic_auth:
            extra |= {"AuthenticationEnabled": True,
                      "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD}}
        super().__init__(workdir, extra_config=extra)
        self.basic_auth = basic_auth

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _get(self, path: str, raw: bool = False):  # noqa: ANN202 - JSON or bytes
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if self.basic_auth:
            pair = f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()
            request.add_header("Authorization", f"Basic {base64.b64encode(pair).decode()}")
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read()
        return body if raw else json.loads(body)

    def qido_instances(self) -> list[dict]:
        """Every instance Orthanc holds, as QIDO-RS lists it to any DICOMweb client."""
        session = (create_session_from_user_pass(ORTHANC_USER, ORTHANC_PASSWORD)
                   if self.basic_auth else None)
        return DICOMwebClient(self.url, session=session).search_for_instances()


@pytest.fixture
def archive_tool(tool):
    tool("Orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        unavailable(f"{DICOMWEB_PLUGIN} is missing: install Debian's orthanc-dicomweb")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A small untrained model (128 px): these tests are about the objects' way out, not
    their findings (as in test_results_flow)."""
    from tests.model.conftest import write_model  # torch, only for these tests

    folder = tmp_path_factory.mktemp("small-model")
    write_model(folder, image_size=128)
    return str(folder)


@pytest.fixture
def worker(small_model) -> dict:
    return {"run_in_serve": True, "device": "cpu", "model_dir": small_model}


def archive(orthanc: DicomwebOrthanc, **keys: object) -> list[dict]:
    return [{"name": "ARCHIVE", "kind": "dicomweb", "url": orthanc.url, **keys}]


def fast_retries(**keys: float) -> dict:
    return {"first_retry_delay_seconds": 0.5, "backoff_factor": 1.5,
            "max_retry_delay_seconds": 1, "max_age_seconds": 600,
            "poll_interval_seconds": 0.1, **keys}


def transfer_states(node) -> dict[str, int]:
    return dict(query(node, select(Transfer.state, func.count(Transfer.id))
                      .group_by(Transfer.state)))


def results_on_disk(node) -> dict[str, bytes]:
    """{SOP Instance UID: the file as the node stored it} for every result object."""
    return {uid: (node.data_dir / path).read_bytes()
            for uid, path in query(node, select(ResultObject.sop_instance_uid,
                                                ResultObject.path))}


def sop_uids(instances: list[dict]) -> list[str]:
    return sorted(instance["00080018"]["Value"][0] for instance in instances)


def cxr_node(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CXR_NODE, "--config", str(node.config_path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_sr_gsps_and_sc_arrive_over_stow_rs_as_the_node_stored_them(start_node, tmp_path,
                                                                   worker, archive_tool):
    with DicomwebOrthanc(tmp_path, basic_auth=True) as orthanc:
        node = start_node(worker=worker, sending=fast_retries(), destinations=archive(
            orthanc, username=ORTHANC_USER, password=ORTHANC_PASSWORD))
        source = pydicom.dcmread(write_chest(tmp_path / "in", 17, 1))
        assert storescu(node.port, [tmp_path / "in" / "chest-17-1.dcm"]).returncode == 0

        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=90,
                   interval=0.3)
        listed = orthanc.qido_instances()
        stored = {instance["ID"]: orthanc.download(instance["ID"])
                  for instance in orthanc.get("/instances?expand")}

    ours = results_on_disk(node)
    assert sop_uids(listed) == sorted(ours)
    assert sorted(stored.values()) == sorted(ours.values())  # byte for byte
    objects = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)) for data in ours.values()]
    assert sorted(str(ds.SOPClassUID) for ds in objects) == sorted([SR_3D, GSPS,
                                                                    SECONDARY_CAPTURE])
    assert {ds.StudyInstanceUID for ds in objects} == {source.StudyInstanceUID}
    sent = audit_events(node, "result-sent")
    assert len(sent) == 3
    assert {(e.peer_address, e.called_ae_title) for e in sent} == {("127.0.0.1", None)}
    assert all("sent to ARCHIVE" in e.message for e in sent)


def test_archive_down_dead_letters_then_requeued_after_restart_are_delivered_once(
        start_node, tmp_path, worker, archive_tool):
    orthanc = DicomwebOrthanc(tmp_path)
    earlier = write_chest(tmp_path / "earlier", 17, 9)
    with orthanc:  # up once, so that the restart below finds its storage as it left it
        orthanc.upload(earlier)
    node = start_node(worker=worker, destinations=archive(orthanc),
                      sending=fast_retries(max_age_seconds=3))
    assert storescu(node.port, [write_chest(tmp_path / "in", 17, 2)]).returncode == 0

    wait_until(lambda: transfer_states(node) == {TransferState.DEAD: 3}, timeout=90,
               interval=0.3)
    failures = query(node, select(Transfer.attempts, Transfer.last_error))
    assert all(attempts >= 2 for attempts, _ in failures), failures  # retried, then gave up
    assert {error for _, error in failures} == {
        f"cannot connect to ARCHIVE ({orthanc.url}) (connection refused)"}
    listing = cxr_node(node, "transfers")
    assert listing.returncode == 0 and "dead 3" in listing.stdout
    assert f"last error: cannot connect to ARCHIVE ({orthanc.url})" in listing.stdout

    with orthanc:
        retry = cxr_node(node, "transfers", "retry")
        assert retry.returncode == 0 and "queued 3 dead letters again" in retry.stdout
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=30,
                   interval=0.3)
        listed = orthanc.qido_instances()
        statistics = orthanc.get("/statistics")

    ours = results_on_disk(node)
    assert sop_uids(listed) == sorted([*ours, str(pydicom.dcmread(earlier).SOPInstanceUID)])
    assert statistics["CountInstances"] == 4  # the earlier image and one copy of each result
    assert len(audit_events(node, "result-sent")) == 3
    assert len(audit_events(node, "transfer-dead-letter")) == 3


def test_wrong_password_shows_401_on_the_transfers_page_and_backs_off(start_node, tmp_path,
                                                                      worker, archive_tool):
    from argon2 import PasswordHasher

    from storage.accounts import Passwords, add_user
    from tests.integration.conftest import node_database
    from tests.integration.console import PASSWORD, Browser

    sending = {"first_retry_delay_seconds": 1.0, "backoff_factor": 2.0,
               "max_retry_delay_seconds": 30, "max_age_seconds": 600,
               "poll_interval_seconds": 0.1}
    with DicomwebOrthanc(tmp_path, basic_auth=True) as orthanc:
        node = start_node(worker=worker, sending=sending, destinations=archive(
            orthanc, username=ORTHANC_USER, password="not-the-password"))
        db = node_database(node)
        with db.session() as session:
            add_user(session, Passwords(PasswordHasher(memory_cost=8192)), "vera", "viewer",
                     PASSWORD)
        db.dispose()
        assert storescu(node.port, [write_chest(tmp_path / "in", 17, 3)]).returncode == 0

        tried_twice = select(Transfer).where(Transfer.attempts >= 2)
        rows = wait_until(lambda: len(query(node, tried_twice)) == 3 and query(node, select(
            Transfer.state, Transfer.attempts, Transfer.last_attempt_at,
            Transfer.next_attempt_at, Transfer.last_error)), timeout=90, interval=0.3)
        held = orthanc.get("/instances")
        browser = Browser(f"http://127.0.0.1:{node.web_port}")
        browser.logged_in_as("vera", "viewer")
        page = browser.get("/console/transfers")

    assert held == []
    for state, attempts, last_attempt, next_attempt, error in rows:
        assert error == f"ARCHIVE ({orthanc.url}): HTTP 401 Unauthorized"
        # The back-off holds after each refusal: 1 s after the first, 2 s after the second.
        assert state == TransferState.PENDING and attempts in (2, 3)
        assert next_attempt - last_attempt == timedelta(seconds=2.0 ** (attempts - 1))
    assert page.status == 200
    assert page.body.count(f"ARCHIVE ({orthanc.url}): HTTP 401 Unauthorized") == 3
    assert ORTHANC_PASSWORD not in page.body and "not-the-password" not in page.body
    assert not query(node, select(AuditEvent.id).where(AuditEvent.event_type == "result-sent"))


def test_echo_checks_each_configured_destination_the_way_the_sender_reaches_it(
        tmp_path, archive_tool, dcmtk):
    with DicomwebOrthanc(tmp_path, basic_auth=True) as orthanc:
        node = NodeProcess(tmp_path / "node", destinations=[
            *archive(orthanc, username=ORTHANC_USER, password=ORTHANC_PASSWORD),
            {"name": "WRONGPASS", "kind": "dicomweb", "url": orthanc.url,
             "username": ORTHANC_USER, "password": "not-the-password"},
            {"name": "PACS", "ae_title": orthanc.aet, "host": "127.0.0.1",
             "port": orthanc.dicom_port}])  # configured, not started: echo reads the file
        answers = {name: cxr_node(node, "echo", "--destination", name)
                   for name in ("ARCHIVE", "WRONGPASS", "PACS", "NOSUCH")}

    assert answers["ARCHIVE"].returncode == 0
    assert answers["ARCHIVE"].stdout == f"QIDO-RS to ARCHIVE ({orthanc.url}): HTTP 200 OK\n"
    assert answers["WRONGPASS"].returncode == 1
    assert answers["WRONGPASS"].stdout == (f"QIDO-RS to WRONGPASS ({orthanc.url}): "
                                           "HTTP 401 Unauthorized\n")
    assert answers["PACS"].returncode == 0
    assert answers["PACS"].stdout.endswith("status 0x0000\n")
    assert answers["NOSUCH"].returncode == 2
    assert answers["NOSUCH"].stderr.splitlines() == [
        "cxr-node echo: error: --destination NOSUCH: no such destination (configured: "
        "ARCHIVE, WRONGPASS, PACS)"]
