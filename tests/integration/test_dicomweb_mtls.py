"""Mutual TLS for DICOMweb, against a real `cxr-node serve` with certificates from openssl.

What a site checks: a peer known by its client certificate stores by STOW-RS with no
token; no certificate (and no token), a certificate of the right CA that no peer has, or
one of another CA is refused, audited where the request got that far, and nothing is
stored; the console still opens over HTTPS in a browser that has no certificate; and our
own results reach such a node when the destination has our client certificate, while
without it the dead letter says what is missing.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
import requests
from sqlalchemy import update

from config.settings import Settings
from node.sender import Sender
from storage.audit import AuditEventId
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import Job, ResultObject, Study, Transfer, TransferState, utcnow
from tests.certificates import Pki, make_pki
from tests.conftest import unavailable
from tests.factories import write_dx
from tests.integration import ohif
from tests.integration.conftest import audit_events
from tests.integration.test_stow import CONTENT_TYPE, multipart, stored_rows
from tests.peers import REPO, require_tool

SCREENSHOTS = REPO / "var" / "test-output" / "dicomweb-mtls"


@pytest.fixture
def pki(tmp_path, tool) -> Pki:
    return make_pki(tool, tmp_path / "pki")


@pytest.fixture
def node(start_node, pki):
    """`cxr-node serve` over HTTPS, asking for client certificates of pki's CA; the peer
    "modality" is known by the certificate ``client``."""
    return start_node(
        web={"tls": {"enabled": True, "certificate": str(pki.crt("server")),
                     "private_key": str(pki.key("server")),
                     "client_ca_certificates": str(pki.crt("ca"))}},
        dicomweb={"peers": [{"name": "modality", "certificate_sha256": pki.sha256("client")}]})


def curl_stow(node, pki: Pki, body: bytes, tmp_path: Path,
              certificate: str | None = None) -> subprocess.CompletedProcess:
    """POST ``body`` with curl, trusting pki's CA, presenting ``certificate`` if given;
    stdout ends with the HTTP status (000 when no answer came)."""
    request_file = tmp_path / "body"
    request_file.write_bytes(body)
    command = [require_tool("curl"), "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
               "--cacert", str(pki.crt("ca")), "--data-binary", f"@{request_file}",
               "-H", f"Content-Type: {CONTENT_TYPE}"]
    if certificate is not None:
        command += ["--cert", str(pki.crt(certificate)), "--key", str(pki.key(certificate))]
    return subprocess.run([*command, f"https://127.0.0.1:{node.web_port}/dicomweb/studies"],
                          capture_output=True, text=True, timeout=60)


def status(result: subprocess.CompletedProcess) -> int:
    return int(result.stdout.rpartition("\n")[2])


def test_a_peer_known_by_its_client_certificate_stores_without_a_token(node, pki, tmp_path):
    sent = write_dx(tmp_path / "a.dcm")

    result = curl_stow(node, pki, multipart([sent.read_bytes()]), tmp_path, "client")

    assert status(result) == 200, result.stdout + result.stderr
    uid = str(pydicom.dcmread(sent).SOPInstanceUID)
    row = stored_rows(node)[uid]
    assert (node.data_dir / row.path).read_bytes() == sent.read_bytes()
    assert row.calling_ae_title == "modality"
    [request] = audit_events(node, "stow-request")
    assert request.calling_ae_title == "modality" and "answered 200" in request.message
    assert audit_events(node, "dicomweb-unauthorised") == []


def test_no_certificate_an_unknown_one_or_another_cas_is_refused_and_nothing_stored(
        node, pki, tmp_path):
    body = multipart([write_dx(tmp_path / "a.dcm").read_bytes()])

    without = curl_stow(node, pki, body, tmp_path)
    stranger = curl_stow(node, pki, body, tmp_path, "stranger")  # same CA, no peer's
    outsider = curl_stow(node, pki, body, tmp_path, "outsider")  # another CA

    assert (status(without), status(stranger)) == (401, 401)
    assert without.stdout.startswith("no client certificate or Authorization header")
    assert pki.sha256("stranger") in stranger.stdout
    # The handshake ends: curl gets no HTTP answer at all. Under TLS 1.3 the server refuses
    # the certificate after curl has sent its request, so curl reports a TLS (35), send
    # (55) or receive (56) failure, or an empty reply (52), as the timing falls.
    assert status(outsider) == 0 and outsider.returncode in (35, 52, 55, 56), outsider.stderr
    alerts = audit_events(node, "dicomweb-unauthorised")
    assert [(a.event_id, a.peer_address) for a in alerts] == [
        (AuditEventId.SECURITY_ALERT, "127.0.0.1")] * 2  # the outsider never got in
    assert "no client certificate or Authorization header" in alerts[0].message
    assert (f"the client certificate (SHA-256 {pki.sha256('stranger')}) is not a peer's"
            in alerts[1].message)
    assert stored_rows(node) == {}


def test_the_console_opens_over_https_in_a_browser_without_a_certificate(node, pki):
    missing = ohif.browser_missing()
    if missing:
        unavailable(missing)
    url = f"https://127.0.0.1:{node.web_port}/login"
    answer = requests.get(url, verify=str(pki.crt("ca")), timeout=30)
    assert answer.status_code == 200 and 'name="password"' in answer.text

    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=ohif.CHROMIUM, headless=True,
                                             args=ohif.CHROMIUM_ARGS)
        try:
            # The server's certificate is from the test CA, which Chromium does not know.
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(url)
            page.screenshot(path=str(SCREENSHOTS / "login-without-client-certificate.png"))
            visible = page.get_by_role("button", name="Log in").is_visible()
        finally:
            browser.close()
    assert visible


def _queue_result(db: Database, store: DicomFileStore, destination: str, seed: int) -> str:
    """A result file in the sender's store and its transfer to ``destination``; its UID."""
    path = f"results/{seed}.dcm"
    store.absolute(path).parent.mkdir(parents=True, exist_ok=True)
    written = pydicom.dcmread(write_dx(store.absolute(path), seed=seed))
    with db.session() as session:
        study = Study(study_uid=str(written.StudyInstanceUID))
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, study_generation=1)
        session.add(job)
        session.flush()
        session.add(Transfer(destination=destination, result=ResultObject(
            job_id=job.id, study_id=study.id, kind="sc", sop_class_uid=written.SOPClassUID,
            sop_instance_uid=written.SOPInstanceUID,
            series_instance_uid=written.SeriesInstanceUID, path=path)))
    return str(written.SOPInstanceUID)


def test_results_reach_a_node_that_knows_us_by_certificate_and_without_it_dead_letter(
        node, pki, tmp_path):
    url = f"https://127.0.0.1:{node.web_port}/dicomweb"
    settings = Settings.model_validate({
        "destinations": [
            {"name": "MTLS", "kind": "dicomweb", "url": url, "ca_file": str(pki.crt("ca")),
             "client_certificate": str(pki.crt("client")),
             "client_private_key": str(pki.key("client"))},
            {"name": "NOCERT", "kind": "dicomweb", "url": url, "ca_file": str(pki.crt("ca"))}],
        "sending": {"max_age_seconds": 60}})
    db = Database.connect(f"sqlite:///{tmp_path / 'sender.sqlite3'}")
    store = DicomFileStore(tmp_path / "sender-data")
    delivered = _queue_result(db, store, "MTLS", seed=1)
    refused = _queue_result(db, store, "NOCERT", seed=2)
    with db.session() as session:  # older than max_age_seconds: one failure is final
        session.execute(update(Transfer).where(Transfer.destination == "NOCERT")
                        .values(queued_at=utcnow() - timedelta(hours=1)))

    Sender(settings, db, store).send_due()

    with db.session() as session:
        transfers = {t.destination: (t.state, t.last_error)
                     for t in session.query(Transfer).all()}
    db.dispose()
    assert transfers["MTLS"] == (TransferState.SENT, None)
    assert transfers["NOCERT"] == (TransferState.DEAD, (
        f"NOCERT ({url}): HTTP 401 Unauthorized: no client certificate or Authorization "
        "header (a peer's certificate or bearer token is required)"))
    stored = stored_rows(node)
    assert set(stored) == {delivered} and refused not in stored
    assert stored[delivered].calling_ae_title == "modality"
