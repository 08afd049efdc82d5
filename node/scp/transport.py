"""Transport: connections, sockets and deadlines (pynetdicom's ``transport`` layer, adapted).

Every read on an accepted socket has a deadline and a bound. The A-ASSOCIATE-RQ is read
here, in the connection's own thread, before pynetdicom creates an association, so a
connection that closes, stalls or sends something else never holds an association slot;
after that, :class:`GuardedSocket` bounds each PDU by size and by time.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.scp.acse import PeerCheckingACSE
from node.scp.dimse import StreamingDIMSE

if TYPE_CHECKING:
    from node.scp.listener import Listener

# PDUs other than P-DATA (association negotiation) are small; this bounds them.
_MAX_CONTROL_PDU_BYTES = 1024 * 1024
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3: A-ASSOCIATE-RQ .. A-ABORT
_A_ASSOCIATE_RQ = 0x01
# A-ABORT PDU (PS3.8 9.3.8): source 2 (service provider), reason 2 (unexpected PDU).
_A_ABORT_UNEXPECTED_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x02])


class _Deadline:
    """Seconds left until a fixed moment, for reads that must finish by then as a whole."""

    def __init__(self, seconds: float, setting: str = "") -> None:
        self.seconds = seconds
        self.setting = setting
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {self.seconds:g} s")
        return left


def _recv_exactly(raw: socket.socket, nr_bytes: int, deadline: _Deadline) -> bytearray:
    """Read ``nr_bytes`` (fewer if the peer closes) by ``deadline``, or raise TimeoutError.

    A blocking ``recv`` with no timeout is how a stalled peer holds a thread forever: a
    per-call timeout alone lets a peer trickle a byte at a time, so the whole read shares
    one deadline.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    try:
        while received < nr_bytes:
            raw.settimeout(deadline.left())
            try:
                count = raw.recv_into(view[received:])
            except TimeoutError:
                raise _PartialRead(received, nr_bytes) from None
            if count == 0:
                return buffer[:received]
            received += count
    finally:
        del view
    return buffer


class _PartialRead(TimeoutError):
    def __init__(self, received: int, wanted: int) -> None:
        super().__init__(f"{received} of {wanted} bytes")
        self.received = received
        self.wanted = wanted


def _pdu_problem(header: bytes, max_pdu_bytes: int) -> str | None:
    """Why a PDU header is refused before its body is read, or None."""
    pdu_type = header[0]
    length = struct.unpack(">L", header[2:6])[0]
    limit = max_pdu_bytes if pdu_type == _P_DATA_TF else _MAX_CONTROL_PDU_BYTES
    if pdu_type not in _PDU_TYPES:
        return f"peer sent an unknown PDU type 0x{pdu_type:02X} (not DICOM)"
    if length > limit:
        return (f"peer declared a PDU (type 0x{pdu_type:02X}) of {length} bytes; "
                f"this node accepts at most {limit}")
    return None


class _AssociationRequest:
    """What a new connection sent before it may have an association thread (PS3.8 Sta2)."""

    def __init__(self, pdu: bytes | None = None, problem: str | None = None,
                 event_type: str = "connection-closed") -> None:
        self.pdu = pdu
        self.problem = problem
        self.event_type = event_type


def read_association_request(raw: socket.socket, acse_timeout: float,
                             max_pdu_bytes: int) -> _AssociationRequest:
    """Read a whole A-ASSOCIATE-RQ PDU within ``acse_timeout`` (the ARTIM timer, PS3.8 9.1.5).

    pynetdicom starts an association thread for each connection and then blocks in
    ``recv`` on whatever it gets; doing this first read here, with a deadline, means
    that a connection which closes, stalls or sends something else never holds an
    association slot. A connection that closes without sending a byte (a port probe, a
    load balancer's health check) is not an event worth an audit row.
    """
    deadline = _Deadline(acse_timeout)
    timed_out = (f"no complete A-ASSOCIATE-RQ within acse_timeout_seconds={acse_timeout:g}"
                 ": connection closed")
    try:
        if isinstance(raw, ssl.SSLSocket):
            raw.settimeout(deadline.left())
            raw.do_handshake()
        header = _recv_exactly(raw, 6, deadline)
        if not header:
            return _AssociationRequest()
        if len(header) < 6:
            return _AssociationRequest(problem=f"connection closed after {len(header)} bytes of "
                                               f"a PDU header, before an A-ASSOCIATE-RQ")
        problem = _pdu_problem(header, max_pdu_bytes)
        if problem:
            return _AssociationRequest(problem=f"{problem}: association aborted",
                                       event_type="protocol-violation")
        if header[0] != _A_ASSOCIATE_RQ:
            raw.sendall(_A_ABORT_UNEXPECTED_PDU)
            return _AssociationRequest(
                problem=f"peer sent a PDU of type 0x{header[0]:02X} before an A-ASSOCIATE-RQ"
                        ": association aborted", event_type="protocol-violation")
        length = struct.unpack(">L", header[2:6])[0]
        body = _recv_exactly(raw, length, deadline)
        if len(body) < length:
            return _AssociationRequest(problem=f"connection closed after {len(body)} of "
                                               f"{length} bytes of an A-ASSOCIATE-RQ")
        return _AssociationRequest(pdu=bytes(header + body))
    except TimeoutError:
        return _AssociationRequest(problem=timed_out)
    except ssl.SSLError as exc:
        return _AssociationRequest(problem=f"TLS handshake failed ({exc.reason or exc})"
                                           ": connection closed")
    except OSError as exc:
        return _AssociationRequest(problem=f"connection failed before an A-ASSOCIATE-RQ "
                                           f"({type(exc).__name__}: {exc})")


class GuardedSocket(AssociationSocket):
    """An association socket whose every read has a deadline and a bound.

    It refuses a PDU that declares more bytes than we announced before anything is
    read, bounds each whole PDU read by the ACSE timeout before the association is
    established and by the network timeout after it (pynetdicom's ARTIM and idle timers
    cannot fire while its reactor blocks in ``recv``), and first hands pynetdicom the
    A-ASSOCIATE-RQ that the request handler already read.
    """

    _listener: Listener
    _pushback: bytes
    _pdu_type: int | None
    _deadline: _Deadline | None
    _violation: str | None

    @classmethod
    def adopt(cls, sock: AssociationSocket, listener: Listener, first_pdu: bytes) -> None:
        """Turn the socket pynetdicom made for this connection into a guarded one.

        The socket is converted in place rather than replaced: creating a second one
        would announce the connection to the state machine twice.
        """
        sock.__class__ = cls
        sock._listener = listener
        sock._pushback = first_pdu
        sock._pdu_type = None
        sock._deadline = None
        sock._violation = None
        # Sends are bounded too: a peer that stops reading cannot hold the thread.
        sock.socket.settimeout(listener.settings.dicom.network_timeout_seconds)

    @property
    def ready(self) -> bool:
        return bool(self._pushback) or AssociationSocket.ready.fget(self)

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom's DUL reads a PDU as recv(6) for type and length, then recv(length).
        if self._violation:
            raise OSError(self._violation)
        if self._pushback:
            data, self._pushback = self._pushback[:nr_bytes], self._pushback[nr_bytes:]
            return bytearray(data)
        if nr_bytes == 6 and self._pdu_type is None:
            self._deadline = self._pdu_deadline()
            header = self._read(6)
            if len(header) == 6:
                self._pdu_type = header[0]
                problem = _pdu_problem(header, self._listener.settings.dicom.max_pdu_bytes)
                if problem:
                    self._refuse("protocol-violation", f"{problem}: association aborted")
            return header
        self._pdu_type = None
        return self._read(nr_bytes)

    def close_after_abort(self, problem: str) -> None:
        """Make the next read fail, so the connection closes once our A-ABORT is sent."""
        self._violation = problem

    def _pdu_deadline(self) -> _Deadline:
        dicom = self._listener.settings.dicom
        if self.assoc.is_established:
            return _Deadline(dicom.network_timeout_seconds, "network_timeout_seconds")
        return _Deadline(dicom.acse_timeout_seconds, "acse_timeout_seconds")

    def _read(self, nr_bytes: int) -> bytearray:
        deadline = self._deadline or self._pdu_deadline()
        try:
            return _recv_exactly(self.socket, nr_bytes, deadline)
        except _PartialRead as stall:
            self._refuse("connection-closed",
                         f"peer sent {stall.received} of {stall.wanted} bytes of a PDU and then "
                         f"nothing within {deadline.setting}={deadline.seconds:g}: "
                         f"association aborted")
        return bytearray()  # not reached: _refuse raises

    def _refuse(self, event_type: str, problem: str) -> None:
        """Audit once, close the connection, and make every later read fail at once."""
        first = self._violation is None
        self._violation = problem
        self._pdu_type = None
        if first:
            calling = str(self.assoc.requestor.ae_title or "").strip() or None
            self._listener.policy.audit_closed(event_type, problem, self.assoc.requestor.address,
                                        calling)
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise OSError(problem)


class AcceptorRequestHandler(RequestHandler):
    """Reads the A-ASSOCIATE-RQ under a deadline, then hands pynetdicom a guarded association.

    Only a connection that sent a whole A-ASSOCIATE-RQ gets an association (and so a
    thread that pynetdicom counts against its limit); the rest are closed here at once.
    """

    _first_pdu: bytes

    def handle(self) -> None:
        listener: Listener = self.server.cxr_listener
        dicom = listener.settings.dicom
        peer = str(self.client_address[0])
        if not listener.pending.admit(peer):
            self.server.shutdown_request(self.request)
            listener.policy.audit_closed(
                "connection-closed",
                f"more than max_pending_connections_per_address="
                f"{dicom.max_pending_connections_per_address} connections from this address "
                f"have not sent an A-ASSOCIATE-RQ: connection closed", peer)
            return
        try:
            request = read_association_request(self.request, dicom.acse_timeout_seconds,
                                               dicom.max_pdu_bytes)
        finally:
            listener.pending.leave(peer)
        if request.pdu is None:
            self.server.shutdown_request(self.request)
            if request.problem:
                listener.policy.audit_closed(request.event_type, request.problem, peer)
            return
        self._first_pdu = request.pdu
        # pynetdicom's own handle(), with a check between creating and starting.
        assoc = self._create_association()
        if not isinstance(assoc.dul.socket, GuardedSocket):
            self.server.shutdown_request(self.request)
            listener.policy.audit_security_alert(
                "adapter-missing", "listener adapters missing: guarded socket "
                "(RequestHandler._create_association was not called): association aborted",
                peer)
            return
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _create_association(self):  # noqa: ANN202
        assoc = super()._create_association()
        listener: Listener = self.server.cxr_listener
        GuardedSocket.adopt(assoc.dul.socket, listener, self._first_pdu)
        assoc.acse = PeerCheckingACSE(assoc, listener)
        assoc.dimse = StreamingDIMSE(assoc, listener)
        return assoc


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, made to accept quickly and to stop without waiting.

    The listen backlog is raised from socketserver's 5 to 1024 (the kernel caps it at
    net.core.somaxconn): a burst of connections that outran the accepting thread filled
    it, and the next connect waited a second for its SYN to be retried. TLS handshakes run in the
    connection's own thread under the ACSE timeout, not in the accepting one; and the
    full garbage collection pynetdicom runs on the accepting thread every 60 connections
    is left to Python's own collector.
    """

    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def service_actions(self) -> None:
        return
