"""STOW-RS in, against a real `cxr-node serve`: dicomweb-client and curl as the senders.

What a site checks: instances arrive byte for byte and are analysed like C-STOREd ones,
with their results sent on; a body with one bad part stores the rest and says which part
failed and why; a sender without a valid token is refused and audited; a broken body is
400 with a reason; and a gigabyte that is not DICOM is refused early, the node's memory
unmoved.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid
from requests import HTTPError
from sqlalchemy import select

from node.web.dicomweb.peers import token_sha256
from storage.audit import AuditEventId
from storage.models import Instance, Job, JobState, ResultObject, Study
from tests.factories import write_chest, write_dx
from tests.integration.conftest import audit_events, query, wait_until
from tests.peers import StorescpProcess, require_tool

TOKEN = secrets.token_urlsafe(32)
PEERS = {"peers": [{"name": "ris", "token_sha256": token_sha256(TOKEN)}]}
BOUNDARY = "cxr-node-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


def url(node, path: str = "") -> str:
    return f"http://127.0.0.1:{node.web_port}/dicomweb{path}"


def multipart(parts: list[bytes], content_types: list[str] | None = None) -> bytes:
    """A multipart/related body as RFC 2046 writes it, with a preamble and an epilogue."""
    body = io.BytesIO()
    body.write(b"a preamble, which the receiver ignores\r\n")
    for index, part in enumerate(parts):
        kind = content_types[index] if content_types else "application/dicom"
        body.write(f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode())
        body.write(part)
        body.write(b"\r\n")
    body.write(f"--{BOUNDARY}--\r\nan epilogue\r\n".encode())
    return body.getvalue()


def curl(node, body: bytes, tmp_path: Path, *, path: str = "/studies",
         content_type: str = CONTENT_TYPE, token: str | None = TOKEN) -> tuple[int, str, str]:
    """POST ``body`` with curl from a file; (HTTP status, response headers, response body)."""
    request_file = tmp_path / f"body-{secrets.token_hex(4)}"
    request_file.write_bytes(body)
    headers_file = tmp_path / "headers.txt"
    command = [require_tool("curl"), "-sS", "-o", "-", "-D", str(headers_file),
               "-w", "\n%{http_code}", "-X", "POST", "--data-binary", f"@{request_file}",
               "-H", f"Content-Type: {content_type}", "-H", "Accept: application/dicom+json"]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    result = subprocess.run([*command, url(node, path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    answer, _, status = result.stdout.rpartition("\n")
    return int(status), headers_file.read_text(), answer


def stored_rows(node) -> dict[str, Instance]:
    return {row.sop_instance_uid: row for (row,) in query(node, select(Instance))}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A small untrained model (128 px): the test is about the path, not the findings."""
    from tests.model.conftest import write_model  # torch, only for the analysis test

    folder = tmp_path_factory.mktemp("small-model")
    write_model(folder, image_size=128)
    return str(folder)


@pytest.mark.timeout(300)
def test_dicomweb_client_stores_byte_for_byte_and_the_study_is_analysed_and_sent(
        start_node, tmp_path, small_model):
    storescp = StorescpProcess(tmp_path)
    with storescp:
        node = start_node(dicomweb=PEERS, worker={"run_in_serve": True, "device": "cpu",
                                                  "model_dir": small_model},
                          destinations=[{"name": "PACS", "ae_title": "STORESCP",
                                         "host": "127.0.0.1", "port": storescp.port}])
        source = pydicom.dcmread(write_chest(tmp_path / "in", 21, 1))
        sent = io.BytesIO()
        pydicom.dcmwrite(sent, source)  # what dicomweb-client encodes and sends
        client = DICOMwebClient(url(node), headers={"Authorization": f"Bearer {TOKEN}"})

        response = client.store_instances([source])
        again = client.store_instances([source])

        [item] = response.ReferencedSOPSequence
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert item.ReferencedSOPClassUID == source.SOPClassUID
        # The URL is built from the request's Host header, which dicomweb-client 0.61 sends
        # without the port (it sets Host itself for bodies under its chunk size).
        assert urlsplit(item.RetrieveURL).path == (
            f"/dicomweb/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
            f"/instances/{source.SOPInstanceUID}")
        assert "FailedSOPSequence" not in response
        # The same instance again: acknowledged, not stored twice (the duplicates policy).
        assert [i.ReferencedSOPInstanceUID for i in again.ReferencedSOPSequence] == [
            source.SOPInstanceUID]
        row = stored_rows(node)[source.SOPInstanceUID]
        on_disk = (node.data_dir / row.path).read_bytes()
        assert sha256(on_disk) == sha256(sent.getvalue()) == row.sha256
        assert row.calling_ae_title == "ris"
        [received] = audit_events(node, "instance-received")
        assert (received.calling_ae_title, received.peer_address) == ("ris", "127.0.0.1")
        assert len(audit_events(node, "instance-duplicate")) == 1

        def analysed_and_sent() -> bool:
            jobs = query(node, select(Job.state))
            results = {uid for (uid,) in query(node, select(ResultObject.sop_instance_uid))}
            arrived = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID)
                       for p in storescp.output.iterdir() if p.is_file()}
            return (jobs == [(JobState.DONE,)] and len(results) == 3
                    and arrived == {SR_3D, GSPS, SC})

        wait_until(analysed_and_sent, timeout=180, interval=0.5)
    [(state,)] = query(node, select(Study.state))
    assert state == "complete"


def test_curl_mixed_body_stores_the_good_part_and_names_each_failure(start_node, tmp_path):
    node = start_node(dicomweb=PEERS)
    good = write_dx(tmp_path / "good.dcm", seed=1).read_bytes()
    # A well-formed DICOM file of a SOP class that is no storage class.
    odd = pydicom.dcmread(write_dx(tmp_path / "odd.dcm", seed=2))
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.1.99"
    odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    not_dicom = b"%PDF-1.4 this is a report, not an image\n" * 100

    status, headers, answer = curl(node, multipart(
        [good, not_dicom, (tmp_path / "odd.dcm").read_bytes(), b'{"00100010": {}}'],
        ["application/dicom", "application/dicom", "application/dicom",
         "application/dicom+json"]), tmp_path)

    assert status == 202, answer
    assert "content-type: application/dicom+json" in headers.lower()
    response = pydicom.Dataset.from_json(json.loads(answer))
    [stored] = response.ReferencedSOPSequence
    good_uid = pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    assert stored.ReferencedSOPInstanceUID == good_uid
    row = stored_rows(node)[good_uid]
    assert sha256((node.data_dir / row.path).read_bytes()) == sha256(good)
    failures = [(int(f.FailureReason), f.get("ReferencedSOPInstanceUID"), f.ErrorComment)
                for f in response.FailedSOPSequence]
    assert [(code, uid) for code, uid, _ in failures] == [
        (0xC000, None), (0x0122, odd.SOPInstanceUID), (0xC000, None)]
    assert "cannot be decoded" in failures[0][2]
    assert "not a storage SOP class" in failures[1][2]
    assert "application/dicom+json" in failures[2][2]
    refused = audit_events(node, "instance-refused")
    assert [e.message.split(":")[0] for e in refused] == [
        "STOW-RS status 0xC000", "STOW-RS status 0x0122", "STOW-RS status 0xC000"]
    assert {(e.calling_ae_title, e.peer_address) for e in refused} == {("ris", "127.0.0.1")}
    assert not list((node.data_dir / "incoming").iterdir())


def test_an_instance_of_another_study_is_refused_when_posted_to_a_study(start_node, tmp_path):
    node = start_node(dicomweb=PEERS)
    study = generate_uid()
    ours = write_dx(tmp_path / "ours.dcm", seed=3, study_uid=study).read_bytes()
    theirs = write_dx(tmp_path / "theirs.dcm", seed=4).read_bytes()

    status, _, answer = curl(node, multipart([ours, theirs]), tmp_path,
                             path=f"/studies/{study}")
    only_theirs, _, _ = curl(node, multipart([theirs]), tmp_path, path=f"/studies/{study}")

    assert (status, only_theirs) == (202, 409)
    response = pydicom.Dataset.from_json(json.loads(answer))
    assert response.RetrieveURL == url(node, f"/studies/{study}")
    [failed] = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(theirs)).SOPInstanceUID
    assert int(failed.FailureReason) == 0xA901
    assert set(stored_rows(node)) == {pydicom.dcmread(io.BytesIO(ours)).SOPInstanceUID}


def test_missing_or_unknown_token_is_401_and_audited_as_a_security_alert(start_node, tmp_path):
    node = start_node(dicomweb=PEERS)
    body = multipart([write_dx(tmp_path / "a.dcm").read_bytes()])

    without, headers, _ = curl(node, body, tmp_path, token=None)
    wrong, _, _ = curl(node, body, tmp_path, token=secrets.token_urlsafe(32))
    client = DICOMwebClient(url(node), headers={"Authorization": "Bearer not-a-peer-token"})
    with pytest.raises(HTTPError) as refused:
        client.store_instances([pydicom.dcmread(tmp_path / "a.dcm")])

    assert (without, wrong, refused.value.response.status_code) == (401, 401, 401)
    assert "www-authenticate: bearer" in headers.lower()
    alerts = audit_events(node, "dicomweb-unauthorised")
    assert [(e.event_id, e.peer_address) for e in alerts] == [
        (AuditEventId.SECURITY_ALERT, "127.0.0.1")] * 3
    assert "no Authorization header" in alerts[0].message
    assert "unknown bearer token" in alerts[1].message
    assert stored_rows(node) == {}


def test_a_body_that_is_not_multipart_is_400_with_a_reason(start_node, tmp_path):
    node = start_node(dicomweb=PEERS)
    good = write_dx(tmp_path / "a.dcm").read_bytes()
    truncated = multipart([good])[:-40]  # the closing delimiter never comes

    cut, _, cut_reason = curl(node, truncated, tmp_path)
    garbled, _, garbled_reason = curl(node, f"--{BOUNDARY}junk\r\n".encode() + good, tmp_path)
    no_boundary, _, no_boundary_reason = curl(
        node, good, tmp_path, content_type='multipart/related; type="application/dicom"')
    wrong_type, _, _ = curl(node, good, tmp_path, content_type="application/dicom")

    assert (cut, garbled, no_boundary, wrong_type) == (400, 400, 400, 415)
    assert "before the closing boundary" in cut_reason
    assert "1 instance(s) before that were stored" not in cut_reason
    assert "followed by text" in garbled_reason
    assert "no boundary parameter" in no_boundary_reason
    assert stored_rows(node) == {}
    assert not list((node.data_dir / "incoming").iterdir())


def test_a_gigabyte_that_is_not_dicom_is_refused_early_and_memory_stays_flat(start_node):
    max_instance = 32 * 1024 * 1024
    node = start_node(dicomweb=PEERS, dicom={"max_instance_bytes": max_instance})
    pid = node.process.pid
    gigabyte = 1024**3
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    chunk = bytes(range(256)) * 4096  # 1 MiB that is not DICOM, made once

    def body():  # a generator: the test never holds more than one chunk either
        yield head
        for _ in range(gigabyte // len(chunk)):
            yield chunk
        yield tail

    before = vm_rss_bytes(pid)
    started = time.monotonic()
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", node.web_port), timeout=30) as sock:
        sock.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                      f"Content-Length: {len(head) + gigabyte + len(tail)}\r\n\r\n").encode())
        try:
            for piece in body():
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered and closed: the rest is never read
        try:
            while data := sock.recv(65536):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    elapsed = time.monotonic() - started
    after = vm_rss_bytes(pid)

    print(f"sent {sent / 2**20:.0f} MiB of 1024 in {elapsed:.1f} s; node VmRSS "
          f"{before / 2**20:.0f} -> {after / 2**20:.0f} MiB; answer {answer[:12]!r}")
    assert sent < 4 * max_instance, f"the node read {sent} bytes of a part over its bound"
    assert after - before < 100 * 2**20
    [refused] = wait_until(lambda: audit_events(node, "instance-refused"))
    assert refused.message.startswith("STOW-RS status 0xA700")
    assert "exceeds max_instance_bytes" in refused.message
    if answer:  # the answer arrives unless the close overtook it
        assert answer.startswith(b"HTTP/1.1 409"), answer[:200]
        assert b"[42752]" in answer  # Failure Reason 0xA700, out of resources
    assert stored_rows(node) == {}
    assert not list((node.data_dir / "incoming").iterdir())


def test_a_sender_that_stalls_mid_part_is_dropped_and_its_file_removed(start_node):
    node = start_node(dicomweb={**PEERS, "read_timeout_seconds": 1})
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    with socket.create_connection(("127.0.0.1", node.web_port), timeout=30) as sock:
        sock.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                      f"Content-Length: {10 * 2**20}\r\n\r\n").encode() + head + b"\0" * 65536)
        wait_until(lambda: list((node.data_dir / "incoming").iterdir()), timeout=10)
        started = time.monotonic()
        answer = b""
        while data := sock.recv(65536):  # then nothing more: the node must give up
            answer += data
        waited = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"no bytes of the body for 1 s" in answer
    assert waited < 10
    assert not list((node.data_dir / "incoming").iterdir())
    [request] = audit_events(node, "stow-request")
    assert request.message.startswith("STOW-RS request answered 408: 0 stored")


def test_below_the_disk_floor_every_part_is_refused_as_out_of_resources(start_node, tmp_path):
    node = start_node(dicomweb=PEERS, dicom={"min_free_disk_bytes": 2**62})
    files = [write_dx(tmp_path / f"{i}.dcm", seed=i).read_bytes() for i in range(2)]

    status, _, answer = curl(node, multipart(files), tmp_path)

    assert status == 409, answer
    response = pydicom.Dataset.from_json(json.loads(answer))
    assert [int(f.FailureReason) for f in response.FailedSOPSequence] == [0xA700]
    assert "free disk space" in response.FailedSOPSequence[0].ErrorComment
    assert stored_rows(node) == {}
    assert not list((node.data_dir / "incoming").iterdir())
