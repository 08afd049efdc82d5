"""Hostile and broken input: a clear status or an abort, an audit row, and the node keeps serving.

The senders here are pynetdicom (for C-STORE requests a polite SCU would never send) and
a raw socket that sends exactly the bytes each test needs.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, DigitalXRayImageStorageForPresentation

from node.statuses import StoreStatus
from tests.factories import write_dx
from tests.integration.conftest import audit_events, wait_until
from tests.peers import echoscu

DX = str(DigitalXRayImageStorageForPresentation)


def c_store(port: int, data: bytes, sop_class: str, sop_instance: str):
    """Send one C-STORE whose request and data set say exactly what the test wants."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    assert assoc.is_established
    response = send_c_store(assoc, data, sop_class, sop_instance)
    assoc.release()
    return response


def send_c_store(assoc, data: bytes, sop_class: str, sop_instance: str):  # noqa: ANN001
    """One C-STORE on ``assoc`` with ``sop_instance`` sent as it is; the response or None."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.Priority = 2
    request.DataSet = io.BytesIO(data)
    # Bypass the primitive's own UID validation: a hostile sender does not run it.
    request._affected_sop_instance_uid = pydicom.uid.UID(sop_instance)
    # Pause the requestor's reactor, as pynetdicom's own send_c_* methods do, so the
    # response comes to us rather than to the reactor.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    return response


def encoded(ds: pydicom.Dataset) -> bytes:
    return encode(ds, is_implicit_vr=False, is_little_endian=True)


def dx(tmp_path: Path, **kwargs) -> pydicom.Dataset:
    return pydicom.dcmread(write_dx(tmp_path / "dx.dcm", **kwargs))


def assert_still_serving(node) -> None:
    assert echoscu(node.port).returncode == 0, "the node stopped answering C-ECHO"
    assert not list((node.data_dir / "incoming").iterdir()), "a partial file was left behind"


def stored_files(node) -> list[Path]:
    return [p for p in (node.data_dir / "dicom").rglob("*") if p.is_file()]


@pytest.fixture
def lenient_writing(monkeypatch):
    """Allow building the invalid values a hostile sender would send."""
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)


def test_missing_study_uid_is_refused_with_a_named_reason(start_node, tmp_path):
    node = start_node()
    ds = dx(tmp_path)
    del ds.StudyInstanceUID

    response = c_store(node.port, encoded(ds), DX, ds.SOPInstanceUID)

    assert response.Status == StoreStatus.UID_MISSING
    assert "Study Instance UID" in response.ErrorComment
    [event] = audit_events(node, "instance-refused")
    assert "0xC001" in event.message and "Study Instance UID" in event.message
    assert stored_files(node) == []
    assert_still_serving(node)


def test_path_traversal_uid_is_refused_and_touches_no_path(start_node, tmp_path,
                                                           lenient_writing):
    node = start_node()
    ds = dx(tmp_path)
    ds.SeriesInstanceUID = "1.2/../../../../tmp/evil"

    response = c_store(node.port, encoded(ds), DX, ds.SOPInstanceUID)

    assert response.Status == StoreStatus.UID_INVALID
    assert "Series Instance UID" in response.ErrorComment
    assert stored_files(node) == []
    assert not Path("/tmp/evil").exists()
    assert_still_serving(node)


def test_data_set_of_another_sop_class_is_refused_with_a900(start_node, tmp_path):
    node = start_node()
    ds = dx(tmp_path)
    ds.SOPClassUID = CTImageStorage  # the request says DX

    response = c_store(node.port, encoded(ds), DX, ds.SOPInstanceUID)

    assert response.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert stored_files(node) == []
    assert_still_serving(node)


def test_data_set_with_another_instance_uid_than_the_request_is_refused(start_node, tmp_path):
    node = start_node()
    ds = dx(tmp_path)

    response = c_store(node.port, encoded(ds), DX, generate_uid())

    assert response.Status == StoreStatus.UID_DIFFERS_FROM_REQUEST
    assert stored_files(node) == []
    assert_still_serving(node)


def test_undecodable_data_set_is_refused_with_c000(start_node):
    node = start_node()

    # (0008,0016) with the VR "XX", which no DICOM reader can interpret.
    response = c_store(node.port, b"\x08\x00\x16\x00XX\x10\x00" + b"1" * 3000, DX,
                       generate_uid())

    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "cannot be decoded" in response.ErrorComment
    assert stored_files(node) == []
    assert_still_serving(node)


def test_instance_over_the_size_limit_gets_a700_and_leaves_nothing(start_node, tmp_path):
    node = start_node(dicom={"max_instance_bytes": 50_000})
    big = dx(tmp_path, rows=256, columns=256)  # 128 KiB of pixels
    small = pydicom.dcmread(write_dx(tmp_path / "small.dcm", rows=64, columns=64))

    refused = c_store(node.port, encoded(big), DX, big.SOPInstanceUID)
    accepted = c_store(node.port, encoded(small), DX, small.SOPInstanceUID)

    assert refused.Status == StoreStatus.OUT_OF_RESOURCES == 0xA700
    assert "max_instance_bytes" in refused.ErrorComment
    assert accepted.Status == StoreStatus.SUCCESS
    assert [p.name for p in stored_files(node)] == [f"{small.SOPInstanceUID}.dcm"]
    assert_still_serving(node)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("pdu_type", [0x01, 0x04])
def test_pdu_declaring_a_huge_length_is_aborted_without_allocating_it(start_node, pdu_type):
    node = start_node()
    rss_before = _rss_bytes(node.process.pid)

    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, 0xFFFFFFF0) + b"\x00" * 64)
        assert _closed_by_peer(sock), "the node kept the connection open"

    assert _rss_bytes(node.process.pid) - rss_before < 64 * 1024 * 1024
    [alert] = wait_until(lambda: audit_events(node, "protocol-violation"))
    assert str(0xFFFFFFF0) in alert.message and alert.event_id == "110113"
    assert_still_serving(node)


def test_non_dicom_bytes_are_aborted_and_audited(start_node):
    node = start_node()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: cxr-node\r\n\r\n")
        assert _closed_by_peer(sock)
    [alert] = wait_until(lambda: audit_events(node, "protocol-violation"))
    assert "unknown PDU type 0x47" in alert.message
    assert_still_serving(node)


def test_garbage_command_set_inside_an_association_aborts_it(start_node):
    node = start_node()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DX, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    garbage = b"\x00\x00\xff\xff" + b"\xab" * 40
    pdv = struct.pack(">LBB", len(garbage) + 2, context_id, 0x03) + garbage
    assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)

    wait_until(lambda: assoc.is_aborted, timeout=15)
    [alert] = wait_until(lambda: audit_events(node, "protocol-violation"))
    assert alert.calling_ae_title == "PYSCU" and "undecodable DIMSE message" in alert.message
    wait_until(lambda: audit_events(node, "association-aborted"))
    time.sleep(0.2)
    assert_still_serving(node)
