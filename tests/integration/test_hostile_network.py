"""A hostile network: stalled PDUs, connect/close floods, endless fragments, bad command UIDs.

Each test attacks a running ``cxr-node serve`` with a raw socket (or pynetdicom sending
bytes no polite SCU would), then checks what a site would: a modality can still echo
and store, the node's memory, file descriptors and ``incoming/`` are as they were, and
the audit trail says what happened.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from sqlalchemy import make_url

from node.statuses import StoreStatus
from tests.factories import write_dx
from tests.integration.conftest import audit_events, wait_until
from tests.integration.test_bad_input import send_c_store

DX = str(DigitalXRayImageStorageForPresentation)
ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 3.0
SHORT_TIMEOUTS = {"acse_timeout_seconds": ACSE_TIMEOUT,
                  "network_timeout_seconds": NETWORK_TIMEOUT,
                  "dimse_timeout_seconds": 10.0}


def echo(port: int) -> str:
    """One C-ECHO from an allowed peer: "ok", or what went wrong."""
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    if assoc.is_rejected:
        return f"rejected: {assoc.acceptor.primitive.reason_str}"
    if not assoc.is_established:
        return "no association"
    status = assoc.send_c_echo()
    assoc.release()
    return "ok" if status and status.Status == 0 else f"status {status}"


def echo_within(port: int, seconds: float) -> float:
    """Retry C-ECHO until it succeeds; how long that took (fails past ``seconds``)."""
    start = time.monotonic()
    result = echo(port)
    while result != "ok":
        assert time.monotonic() - start < seconds, f"no echo within {seconds} s: {result}"
        time.sleep(0.2)
        result = echo(port)
    return time.monotonic() - start


def open_files(pid: int) -> Counter:
    """What the process's descriptors point at (``socket:[inode]``, paths), counted."""
    names = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while listed
            names[os.readlink(f"/proc/{pid}/fd/{fd}")] += 1
    return names


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def closed_by_node(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def associate(port: int, sop_class: str = DX):
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    assert assoc.is_established, "the node did not accept the association"
    return assoc


def p_data_tf(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 9.3.5, E.2: control bit 0 command, bit 1 last)."""
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


# -- item 1: every read on an accepted socket has a deadline ------------------------------------

def test_stalled_pdu_headers_from_one_host_do_not_lock_out_senders(start_node):
    node = start_node(dicom={**SHORT_TIMEOUTS, "max_associations": 8,
                             "max_pending_connections_per_address": 4})
    stalled = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", node.port))
        sock.sendall(b"\x01\x00\x00")  # three bytes of an A-ASSOCIATE-RQ header, then nothing
        stalled.append(sock)
    try:
        took = echo_within(node.port, ACSE_TIMEOUT + 2)
        assert all(closed_by_node(sock, ACSE_TIMEOUT + 2) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    assert took < ACSE_TIMEOUT + 2
    events = wait_until(lambda: audit_events(node, "connection-closed"))
    messages = " | ".join(e.message for e in events)
    assert "max_pending_connections_per_address" in messages
    assert f"within acse_timeout_seconds={ACSE_TIMEOUT:g}" in messages
    assert all(e.peer_address == "127.0.0.1" for e in events)


def test_allowed_peer_holding_every_slot_with_truncated_pdus_is_timed_out(start_node):
    node = start_node(dicom={**SHORT_TIMEOUTS, "max_associations": 8})
    held = []
    for _ in range(8):
        assoc = associate(node.port)
        context_id = assoc.accepted_contexts[0].context_id
        pdu = p_data_tf(context_id, 0x03, b"\x00" * 200)
        assoc.dul.socket.socket.sendall(pdu[:60])  # a P-DATA-TF cut short
        held.append(assoc)
    try:
        took = echo_within(node.port, NETWORK_TIMEOUT + 2)
        wait_until(lambda: all(a.is_aborted or not a.is_alive() for a in held), timeout=10)
    finally:
        for assoc in held:
            assoc.abort()
    assert took < NETWORK_TIMEOUT + 2
    events = wait_until(lambda: len(audit_events(node, "connection-closed")) >= 8 and
                        audit_events(node, "connection-closed"))
    assert all(f"network_timeout_seconds={NETWORK_TIMEOUT:g}" in e.message for e in events), [
        e.message for e in events]
    assert all(e.calling_ae_title == "PYSCU" for e in events)


# -- item 2: a closed connection frees its slot at once -----------------------------------------

def test_connect_close_flood_leaves_the_listener_serving_at_once(start_node):
    # A long ACSE timeout: a connection that closed must not wait it out holding a slot.
    node = start_node(dicom={"acse_timeout_seconds": 15.0, "max_associations": 8})
    start = time.monotonic()
    slowest = 0.0
    for _ in range(200):
        before = time.monotonic()
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
        slowest = max(slowest, time.monotonic() - before)
    flood_seconds = time.monotonic() - start

    assert echo(node.port) == "ok"
    assert slowest < 0.9, f"one connect took {slowest * 1000:.0f} ms (SYN backlog overflow)"
    assert flood_seconds < 15, f"200 connects took {flood_seconds:.1f} s"


# -- item 3: bounded buffers for command sets and stray data ------------------------------------

@pytest.mark.parametrize("control", [0x01, 0x00], ids=["command-never-last", "data-before-command"])
def test_fragments_that_never_end_are_aborted_with_bounded_memory(start_node, control):
    node = start_node(dicom=SHORT_TIMEOUTS)
    rss_before = rss_bytes(node.process.pid)
    assoc = associate(node.port)
    raw = assoc.dul.socket.socket
    pdu = p_data_tf(assoc.accepted_contexts[0].context_id, control, b"\xab" * 65_536)
    sent = 0
    try:
        while sent < 256 * 1024 * 1024:  # stops long before this on a bounded node
            raw.sendall(pdu)
            sent += len(pdu)
    except OSError:
        pass

    # What the sender got off its hands before the close reached it is mostly socket buffers;
    # the node itself stopped after a few kilobytes (the bound named in the audit row).
    assert sent < 64 * 1024 * 1024, f"the node took {sent} bytes of fragments without aborting"
    assert rss_bytes(node.process.pid) - rss_before < 50 * 1024 * 1024
    [alert] = wait_until(lambda: audit_events(node, "protocol-violation"))
    assert "association aborted" in alert.message and alert.calling_ae_title == "PYSCU"
    assert "16384 bytes" in alert.message or "65536 bytes" in alert.message
    # Still serving: an allowed echo gets through (retried: under load the first one once
    # timed out at the client's 5 s ACSE timeout while the aborted flood was torn down).
    echo_within(node.port, 15)


# -- items 4 and 5: bad Affected SOP Instance UIDs get a status, and leak nothing --------------

def dx_bytes(tmp_path: Path) -> tuple[bytes, str]:
    ds = pydicom.dcmread(write_dx(tmp_path / "dx.dcm", rows=64, columns=64))
    return encode(ds, is_implicit_vr=False, is_little_endian=True), str(ds.SOPInstanceUID)


def test_empty_affected_sop_instance_uid_gets_c001_and_leaks_nothing(start_node, tmp_path):
    node = start_node(dicom=SHORT_TIMEOUTS)
    data, _ = dx_bytes(tmp_path)
    assert echo(node.port) == "ok"
    pid = node.process.pid
    before = open_files(pid)
    statuses = []
    for _ in range(20):  # 100 attempts, 5 on each association
        assoc = associate(node.port)
        for _ in range(5):
            response = send_c_store(assoc, data, DX, "")
            statuses.append(response.Status if response else None)
        assoc.release()

    assert set(statuses) == {StoreStatus.UID_MISSING}
    assert echo(node.port) == "ok"
    # The database's files aside: SQLAlchemy's pool keeps up to 5 connections open (the
    # file, -wal and -shm each), more of them when more threads write at once on a busy
    # machine, which is how a bound of 5 more descriptors failed in CI. Sockets and other
    # files come back to what they were; a leak stays, so the wait can be long.
    database = make_url(node.database_url).database

    def kept() -> dict[str, int]:
        return {name: count for name, count in (open_files(pid) - before).items()
                if not name.startswith(database)}

    try:
        wait_until(lambda: not kept(), timeout=30)
    except AssertionError:
        raise AssertionError(f"descriptors opened and kept: {kept()}") from None
    now = open_files(pid)
    assert sum(count for name, count in now.items() if name.startswith(database)) <= 3 * 5, now
    assert not [name for name in now if "incoming" in name]
    assert list((node.data_dir / "incoming").iterdir()) == []
    events = audit_events(node, "instance-refused")
    assert len(events) == 100 and "0xC001" in events[0].message


def test_over_long_affected_sop_instance_uid_gets_c002_and_an_audit_row(start_node, tmp_path):
    node = start_node(dicom=SHORT_TIMEOUTS)
    data, sop_instance = dx_bytes(tmp_path)
    assoc = associate(node.port)

    refused = send_c_store(assoc, data, DX, "1.2." + "3" * 70)
    accepted = send_c_store(assoc, data, DX, sop_instance)  # the association stays usable
    assoc.release()

    assert refused is not None and refused.Status == StoreStatus.UID_INVALID
    assert "64" in refused.ErrorComment
    assert accepted is not None and accepted.Status == StoreStatus.SUCCESS
    [event] = wait_until(lambda: audit_events(node, "instance-refused"))
    assert "0xC002" in event.message and event.calling_ae_title == "PYSCU"
    assert list((node.data_dir / "incoming").iterdir()) == []


# -- item 7: the listener's guards fail closed -------------------------------------------------

@pytest.mark.parametrize("lost_hook", ["create_association", "negotiate_as_acceptor"])
def test_a_lost_pynetdicom_hook_aborts_instead_of_serving(tmp_path, monkeypatch, lost_hook):
    """As if a pynetdicom upgrade renamed a hook: the peer check would silently not run."""
    from pynetdicom.transport import RequestHandler

    from config.settings import load_settings
    from node.scp.acse import PeerCheckingACSE
    from node.scp.transport import AcceptorRequestHandler
    from node.server import Node
    from tests.peers import NodeProcess

    if lost_hook == "create_association":
        monkeypatch.setattr(AcceptorRequestHandler, "_create_association",
                            RequestHandler._create_association)
    else:
        monkeypatch.delattr(PeerCheckingACSE, "_negotiate_as_acceptor")
    config = NodeProcess(tmp_path / "node", dicom=SHORT_TIMEOUTS).config_path
    node = Node(load_settings(config, environ={}), analyse=False)
    node.listener.start()
    try:
        assert echo(node.listener.port) != "ok"
    finally:
        node.listener.stop()
    with node.db.session() as session:
        from sqlalchemy import select

        from storage.models import AuditEvent

        [alert] = session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "adapter-missing")).all()
        assert "association aborted" in alert.message
