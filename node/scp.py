"""The DICOM listener: C-ECHO and C-STORE SCP on pynetdicom, hardened for a hospital network.

pynetdicom provides the protocol; three small subclasses of its acceptor classes add
what a production node needs and pynetdicom leaves to the application:

* :class:`_GuardedSocket` refuses a PDU that declares more bytes than we announced,
  before anything is read or allocated, and reads PDUs with ``recv_into`` in one buffer.
* :class:`_PeerCheckingACSE` rejects unknown calling AE titles, known ones from the wrong
  address, a wrong called AE title, and new associations over the limits, and audits it.
* :class:`_StreamingDIMSE` moves each C-STORE data set to disk as its PDUs arrive (hashed
  and written back on the way), so memory stays bounded and the fsync before the
  success status has little left to do.

No inference runs here: the C-STORE handler only stores, registers and answers.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import struct
import threading
import time
import uuid

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.acse import ACSE
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from config.settings import Settings
from node import statuses
from node.ingest import ActiveStudies, Ingest, StoreRequest
from node.statuses import Rejection, StoreStatus
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore, IncomingFile, InvalidUID, validate_uid

LOGGER = logging.getLogger("cxr_node.scp")

IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'cxr-node implementation').int}"
IMPLEMENTATION_VERSION_NAME = "CXRNODE_010"
# PDUs other than P-DATA (association negotiation) are small; this bounds them.
_MAX_CONTROL_PDU_BYTES = 1024 * 1024
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3: A-ASSOCIATE-RQ .. A-ABORT
_A_ASSOCIATE_RQ = 0x01
# A-ABORT PDU (PS3.8 9.3.8): source 2 (service provider), reason 2 (unexpected PDU).
_A_ABORT_UNEXPECTED_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x02])
# A C-STORE-RQ command set is about 200 bytes (PS3.7 9.3.1.1); fragments past this bound
# are a sender that never sets the "last fragment" bit, not a command.
MAX_COMMAND_SET_BYTES = 16 * 1024
# Data set bytes we keep in memory: before any command (a protocol error) or for a message
# other than C-STORE (C-ECHO has none; other services are not offered). C-STORE data sets
# go to disk as they arrive and are bounded by max_instance_bytes instead.
MAX_BUFFERED_DATA_BYTES = 64 * 1024
_NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1)
_C_STORE_RQ = 0x0001

# The order in which we accept transfer syntaxes when a sender offers several for one
# presentation context (pynetdicom picks the first of ours the sender proposed):
# lossless compressed first (a sender offers them when it holds the data so, and fewer
# bytes cross the network and the disk), then deflated and the uncompressed ones, and
# lossy syntaxes last, so a lossy copy is taken only when the sender offers nothing better.
PREFERRED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (lossy)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (lossy)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy)
    "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy)
]


def accepted_transfer_syntaxes() -> list[str]:
    """Our preference order, followed by every other syntax pynetdicom knows (video, JPIP...)."""
    rest = [uid for uid in ALL_TRANSFER_SYNTAXES if uid not in PREFERRED_TRANSFER_SYNTAXES]
    return PREFERRED_TRANSFER_SYNTAXES + rest


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


class PendingConnections:
    """Connections per address that have not yet sent a whole A-ASSOCIATE-RQ.

    They hold no association slot (``max_associations`` is for peers that asked for one),
    so a separate, per-address bound stops one host from holding many threads that way.
    """

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        with self._lock:
            count = self._counts.get(address, 0)
            if count >= self.per_address:
                return False
            self._counts[address] = count + 1
            return True

    def leave(self, address: str) -> None:
        with self._lock:
            count = self._counts.get(address, 0) - 1
            if count > 0:
                self._counts[address] = count
            else:
                self._counts.pop(address, None)


class _GuardedSocket(AssociationSocket):
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
            self._listener.audit_closed(event_type, problem, self.assoc.requestor.address,
                                        calling)
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise OSError(problem)


class _PeerCheckingACSE(ACSE):
    """ACSE that applies the node's peer table and limits before negotiating contexts."""

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener
        # Set only by our hook: if pynetdicom stops calling it, the handlers see False.
        self.peer_checked = False

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = self.assoc.requestor.address
        rejection = self._listener.check_association(calling, called, address)
        if rejection is None:
            self.peer_checked = True
            super()._negotiate_as_acceptor()
            return
        self.requestor.ae_title = calling
        self.send_reject(rejection.result, rejection.source, rejection.reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class _RefusedStore:
    """A C-STORE-RQ whose command we refused: its data set is drained, then we answer."""

    def __init__(self, context_id: int, message_id: int, sop_class_uid: str | None,
                 status: StoreStatus, reason: str) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.status = status
        self.reason = reason


def _command_refusal(command: Dataset) -> tuple[StoreStatus, str] | None:
    """The status for a C-STORE-RQ command whose UIDs we cannot use (PS3.4 B.2.3), or None.

    pynetdicom itself aborts the association for a UID over 64 characters and passes an
    empty one on; both are the sender's error, answered with a status it can act on.
    """
    if command.get("CommandField") != _C_STORE_RQ:
        return None
    for keyword, name in (("AffectedSOPClassUID", "Affected SOP Class UID"),
                          ("AffectedSOPInstanceUID", "Affected SOP Instance UID")):
        value = str(command.get(keyword) or "").strip("\0 ")
        if not value:
            return StoreStatus.UID_MISSING, f"{name} is missing"
        if len(value) > 64:
            return StoreStatus.UID_INVALID, f"{name} has {len(value)} characters, over 64"
        try:
            validate_uid(value, name)
        except InvalidUID as exc:
            return StoreStatus.UID_INVALID, str(exc)
    return None


class _StreamingDIMSE(DIMSEServiceProvider):
    """DIMSE provider that bounds what it buffers and drains each C-STORE data set to disk.

    Fragments are handed to pynetdicom one PDV at a time, so that the command set and any
    data kept in memory are checked against small bounds before they grow, and a C-STORE
    command is checked before its data set opens a file. It also carries the
    association's own state: the studies it holds open, and whether it ended with a release.
    """

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener
        self._pending: dict[int, IncomingFile] = {}
        self._refused: _RefusedStore | None = None
        self._stray_data_bytes = 0
        self._aborting = False
        self.held_studies: set[str] = set()
        self.established = False
        self.released = False

    def receive_primitive(self, primitive) -> None:  # noqa: ANN001 - P_DATA
        for context_id, data in primitive.presentation_data_value_list:
            if self._aborting:
                return
            try:
                self._receive_fragment(context_id, data)
            except Exception as exc:  # noqa: BLE001 - an undecodable stream from the peer
                # pynetdicom lets a broken command set escape and kill its DUL thread, which
                # would leave the connection hanging; abort it as for an invalid PDU.
                self._abort(f"undecodable DIMSE message ({type(exc).__name__}: {exc})")

    def _receive_fragment(self, context_id: int, data: bytes) -> None:
        if not data:
            self._abort("empty presentation data value")
            return
        control = data[0]
        is_command, is_last = bool(control & 0x01), bool(control & 0x02)
        if self._refused is not None:
            if is_command:
                self._abort("a command arrived before the data set of the last one ended")
            elif is_last:
                self._answer_refused()
            return
        message = self.message
        command_done = message is not None and message.context_id is not None
        if is_command:
            if command_done:
                self._abort("a command arrived before the data set of the last one ended")
                return
            buffered = message.encoded_command_set.tell() if message is not None else 0
            if buffered + len(data) - 1 > MAX_COMMAND_SET_BYTES:
                self._abort(f"command set fragments exceed {MAX_COMMAND_SET_BYTES} bytes "
                            f"without a last fragment")
                return
            if is_last and self._refuse_command(context_id, data, message):
                return
        elif not command_done:
            self._stray_data_bytes += len(data) - 1
            if self._stray_data_bytes > MAX_BUFFERED_DATA_BYTES:
                self._abort(f"more than {MAX_BUFFERED_DATA_BYTES} bytes of data set fragments "
                            f"before any command")
                return
        elif (not isinstance(message, C_STORE_RQ)
              and message.data_set.tell() + len(data) - 1 > MAX_BUFFERED_DATA_BYTES):
            self._abort(f"a data set of more than {MAX_BUFFERED_DATA_BYTES} bytes for a "
                        f"message that is not a C-STORE")
            return
        single = P_DATA()
        single.presentation_data_value_list = [[context_id, data]]
        super().receive_primitive(single)
        if is_command and is_last:
            self._stray_data_bytes = 0
        self._stream_to_disk()

    def _refuse_command(self, context_id: int, data: bytes, message) -> bool:  # noqa: ANN001
        """Check a complete C-STORE command before pynetdicom takes it; True if refused."""
        encoded = message.encoded_command_set.getvalue() if message is not None else b""
        command = decode(io.BytesIO(encoded + bytes(data[1:])), True, True)
        refusal = _command_refusal(command)
        if refusal is None:
            return False
        status, reason = refusal
        sop_class = str(command.get("AffectedSOPClassUID") or "").strip("\0 ")
        try:
            sop_class = validate_uid(sop_class, "Affected SOP Class UID")
        except InvalidUID:
            sop_class = None
        self.message = None
        self._stray_data_bytes = 0
        self._refused = _RefusedStore(context_id, int(command.MessageID), sop_class, status,
                                      reason)
        self._listener.audit_store_refused(
            status, reason, self.assoc,
            str(command.get("AffectedSOPInstanceUID") or "").strip("\0 ")[:64] or None)
        if command.get("CommandDataSetType") == _NO_DATA_SET:
            self._answer_refused()
        return True

    def _answer_refused(self) -> None:
        """Send the refused C-STORE's response; its data set was dropped as it came."""
        refused, self._refused = self._refused, None
        response = C_STORE()
        response.MessageIDBeingRespondedTo = refused.message_id
        response.AffectedSOPClassUID = refused.sop_class_uid
        response.Status = int(refused.status)
        # PS3.7 C.4: Error Comment, at most 64 characters, tells the sender why.
        response.ErrorComment = refused.reason[:64]
        self.send_msg(response, refused.context_id)

    def _stream_to_disk(self) -> None:
        message = self.message
        if not isinstance(message, C_STORE_RQ) or message.context_id is None:
            return
        buffer = message.data_set.getbuffer()
        if len(buffer) == 0:
            del buffer
            return
        message_id = int(message.command_set.MessageID)
        incoming = self._pending.get(message_id)
        if incoming is None:
            cs = message.command_set
            [context] = [cx for cx in self.assoc.accepted_contexts
                         if cx.context_id == message.context_id]
            transfer_syntax = context.transfer_syntax[0]
            incoming = self._listener.new_incoming(
                str(cs.AffectedSOPClassUID), str(cs.AffectedSOPInstanceUID), transfer_syntax,
                self.assoc.requestor.ae_title)
            self._pending[message_id] = incoming
        incoming.write(buffer)
        del buffer
        message.data_set = io.BytesIO()

    def _abort(self, problem: str) -> None:
        """A-ABORT the association (as for an invalid PDU, Evt19), audited once."""
        if self._aborting:
            return
        self._aborting = True
        self.message = None
        self._refused = None
        self.discard_pending()
        self._listener.audit_security_alert(
            "protocol-violation", f"{problem}: association aborted",
            self.assoc.requestor.address, str(self.assoc.requestor.ae_title or "").strip())
        sock = self.dul.socket
        if isinstance(sock, _GuardedSocket):
            sock.close_after_abort(problem)
        self.dul.event_queue.put("Evt19")

    def take_pending(self, message_id: int) -> IncomingFile | None:
        return self._pending.pop(message_id, None)

    def discard_pending(self) -> None:
        """Delete data sets that never completed (the association ended mid-transfer)."""
        for incoming in self._pending.values():
            incoming.discard()
        self._pending.clear()


class _RequestHandler(RequestHandler):
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
            listener.audit_closed(
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
                listener.audit_closed(request.event_type, request.problem, peer)
            return
        self._first_pdu = request.pdu
        # pynetdicom's own handle(), with a check between creating and starting.
        assoc = self._create_association()
        if not isinstance(assoc.dul.socket, _GuardedSocket):
            self.server.shutdown_request(self.request)
            listener.audit_security_alert(
                "adapter-missing", "listener adapters missing: guarded socket "
                "(RequestHandler._create_association was not called): association aborted",
                peer)
            return
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _create_association(self):  # noqa: ANN202
        assoc = super()._create_association()
        listener: Listener = self.server.cxr_listener
        _GuardedSocket.adopt(assoc.dul.socket, listener, self._first_pdu)
        assoc.acse = _PeerCheckingACSE(assoc, listener)
        assoc.dimse = _StreamingDIMSE(assoc, listener)
        return assoc


class _AssociationServer(ThreadedAssociationServer):
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


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.dicom.tls
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    context.load_verify_locations(str(tls.ca_certificates))
    return context


class Listener:
    """The C-ECHO/C-STORE SCP of the node, started and stopped by ``cxr-node serve``."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 ingest: Ingest, active: ActiveStudies) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.ingest = ingest
        self.active = active
        self.pending = PendingConnections(settings.dicom.max_pending_connections_per_address)
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._ae = self._make_ae()

    def _make_ae(self) -> AE:
        dicom = self.settings.dicom
        ae = AE(ae_title=dicom.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = dicom.max_pdu_bytes
        # Our ACSE enforces (and audits) the limit; pynetdicom's own count would include
        # connections that closed before negotiating, so its limit is only a backstop.
        ae.maximum_associations = 4 * dicom.max_associations + 16
        ae.acse_timeout = dicom.acse_timeout_seconds
        ae.dimse_timeout = dicom.dimse_timeout_seconds
        ae.network_timeout = dicom.network_timeout_seconds
        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(Verification, syntaxes)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        return ae

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        dicom = self.settings.dicom
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        self._server = self._ae.make_server(
            (dicom.bind_address, dicom.port),
            evt_handlers=handlers,
            ssl_context=_tls_context(self.settings),
            server_class=_AssociationServer,
            request_handler=_RequestHandler,
        )
        self._server.cxr_listener = self
        self._ae._servers.append(self._server)  # as AE.start_server does, for shutdown()
        self._thread = threading.Thread(target=self._server.serve_forever, name="dicom-listener",
                                        daemon=True)
        self._thread.start()
        LOGGER.info("listening as %s on %s:%s%s", dicom.ae_title, dicom.bind_address, self.port,
                    " (TLS)" if dicom.tls.enabled else "")

    @property
    def port(self) -> int:
        if self._server is None:
            return self.settings.dicom.port
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for assoc in list(self._ae.active_associations):
            assoc.abort()

    # -- association policy ------------------------------------------------------------

    def check_association(self, calling: str, called: str, address: str) -> Rejection | None:
        """The rejection for this association request, or None to negotiate it (audited)."""
        dicom = self.settings.dicom
        peer = dicom.peer(calling)
        rejection: Rejection | None = None
        detail = ""
        if peer is None:
            rejection, detail = statuses.CALLING_AE_NOT_RECOGNISED, "unknown calling AE title"
        elif not peer.allows(address):
            rejection = statuses.CALLING_AE_NOT_RECOGNISED
            detail = f"{calling} is not allowed from {address}"
        elif called != dicom.ae_title:
            rejection = statuses.CALLED_AE_NOT_RECOGNISED
            detail = f"called AE title {called!r} is not {dicom.ae_title!r}"
        elif self._acceptor_count() > dicom.max_associations:
            rejection = statuses.LOCAL_LIMIT_EXCEEDED
            detail = f"already serving max_associations={dicom.max_associations}"
        elif self.store.free_bytes() < dicom.min_free_disk_bytes:
            rejection = statuses.TEMPORARY_CONGESTION
            detail = "free disk space on the data volume is below min_free_disk_bytes"
        if rejection is None:
            return None
        security = rejection in (statuses.CALLING_AE_NOT_RECOGNISED,
                                 statuses.CALLED_AE_NOT_RECOGNISED)
        with self.db.session() as session:
            audit.record(session,
                         AuditEventId.SECURITY_ALERT if security
                         else AuditEventId.APPLICATION_ACTIVITY,
                         "association-rejected", Outcome.MINOR_FAILURE,
                         f"association rejected ({rejection.text}): {detail}",
                         calling_ae_title=calling[:16], called_ae_title=called[:16],
                         peer_address=address)
        return rejection

    def _acceptor_count(self) -> int:
        """Associations being served: those whose peer has sent an A-ASSOCIATE-RQ.

        A bare TCP connection (a health check, a port scan) leaves pynetdicom's thread
        waiting out the ACSE timeout; it must not use up the limit meant for senders.
        """
        return sum(1 for assoc in self._ae.active_associations
                   if assoc.is_acceptor and assoc.dul.is_alive()
                   and assoc.requestor.primitive is not None)

    def audit_security_alert(self, event_type: str, message: str, address: str,
                             calling_ae_title: str | None = None) -> None:
        LOGGER.warning("%s from %s: %s", event_type, address, message)
        with self.db.session() as session:
            audit.record(session, AuditEventId.SECURITY_ALERT, event_type, Outcome.SERIOUS_FAILURE,
                         message, peer_address=address,
                         calling_ae_title=calling_ae_title[:16] if calling_ae_title else None)

    def audit_closed(self, event_type: str, message: str, address: str,
                     calling_ae_title: str | None = None) -> None:
        """One audit row and one log line for a connection we closed (timeout, limit, garbage)."""
        self.audit_security_alert(event_type, message, address, calling_ae_title)

    def audit_store_refused(self, status: StoreStatus, reason: str, assoc,  # noqa: ANN001
                            sop_instance_uid: str | None) -> None:
        """Audit a C-STORE refused for its command (as ingest audits one refused for its data)."""
        LOGGER.warning("C-STORE from %s refused with 0x%04X: %s", assoc.requestor.address,
                       status, reason)
        with self.db.session() as session:
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-refused",
                         Outcome.SERIOUS_FAILURE, f"C-STORE status 0x{status:04X}: {reason}",
                         calling_ae_title=str(assoc.requestor.ae_title).strip()[:16] or None,
                         called_ae_title=str(assoc.acceptor.ae_title).strip()[:16] or None,
                         peer_address=assoc.requestor.address, sop_instance_uid=sop_instance_uid)

    # -- receiving ---------------------------------------------------------------------

    def new_incoming(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     calling_ae_title: str) -> IncomingFile:
        """Start a DICOM file (preamble and File Meta Information, PS3.10 7.1) for a C-STORE."""
        dicom = self.settings.dicom
        low_disk = self.store.free_bytes() < dicom.min_free_disk_bytes
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid[:64])
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid[:64])
        meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        meta.SourceApplicationEntityTitle = calling_ae_title.strip()[:16]
        header = io.BytesIO()
        header.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(header, meta, enforce_standard=True)
        # Opened only once the header is built: a failure above leaves no file behind.
        incoming = self.store.new_incoming(0 if low_disk else dicom.max_instance_bytes + 1024)
        try:
            incoming.write(header.getbuffer())
        except BaseException:
            incoming.discard()
            raise
        return incoming

    def _guards_missing(self, assoc) -> str | None:  # noqa: ANN001
        """Which of our adapters this association lacks, or None when all are in place.

        They sit on private pynetdicom hooks; if an upgrade renames one, pynetdicom runs
        its own code instead and nothing else would notice. The handlers then refuse to
        serve (fail closed) rather than skip the peer check or the bounds.
        """
        missing = []
        if not isinstance(assoc.dul.socket, _GuardedSocket):
            missing.append("guarded socket (RequestHandler._create_association)")
        if not isinstance(assoc.acse, _PeerCheckingACSE):
            missing.append("peer-checking ACSE")
        elif not assoc.acse.peer_checked:
            missing.append("peer check (ACSE._negotiate_as_acceptor was not called)")
        if not isinstance(assoc.dimse, _StreamingDIMSE):
            missing.append("streaming DIMSE")
        if not missing:
            return None
        return "listener adapters missing: " + ", ".join(missing)

    def _refuse_unguarded(self, assoc) -> bool:  # noqa: ANN001
        """Abort and audit an association our adapters do not guard; True if so."""
        problem = self._guards_missing(assoc)
        if problem is None:
            return False
        LOGGER.error("%s: association aborted (is pynetdicom at a version we support?)",
                     problem)
        self.audit_security_alert("adapter-missing", f"{problem}: association aborted",
                                  assoc.requestor.address,
                                  str(assoc.requestor.ae_title or "").strip() or None)
        assoc.abort(block=False)
        return True

    def _on_echo(self, event: evt.Event) -> int:
        if self._refuse_unguarded(event.assoc):
            return int(StoreStatus.HANDLER_FAILED)
        return 0x0000

    def _on_store(self, event: evt.Event) -> Dataset:
        assoc = event.assoc
        if self._refuse_unguarded(assoc):
            status = Dataset()
            status.Status = int(StoreStatus.HANDLER_FAILED)
            return status
        dimse: _StreamingDIMSE = assoc.dimse
        request = event.request
        incoming = dimse.take_pending(int(request.MessageID))
        try:
            if incoming is None:  # the whole data set arrived in one PDU
                incoming = self.new_incoming(str(request.AffectedSOPClassUID),
                                             str(request.AffectedSOPInstanceUID),
                                             event.context.transfer_syntax,
                                             assoc.requestor.ae_title)
            incoming.write(request.DataSet.getbuffer())
        except BaseException:
            if incoming is not None:
                incoming.discard()
            raise
        result = self.ingest.store_instance(
            incoming,
            StoreRequest(
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                calling_ae_title=assoc.requestor.ae_title.strip(),
                called_ae_title=assoc.acceptor.ae_title.strip(),
                peer_address=assoc.requestor.address,
            ),
            dimse.held_studies,
        )
        status = Dataset()
        status.Status = int(result.status)
        if result.status != StoreStatus.SUCCESS:
            # PS3.7 C.4: Error Comment, at most 64 characters, tells the sender why.
            status.ErrorComment = result.message[:64]
        return status

    def _on_established(self, event: evt.Event) -> None:
        assoc = event.assoc
        if self._refuse_unguarded(assoc):
            return
        assoc.dimse.established = True
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "association-accepted",
                         Outcome.SUCCESS, f"{len(assoc.accepted_contexts)} presentation contexts",
                         calling_ae_title=assoc.requestor.ae_title.strip(),
                         called_ae_title=assoc.acceptor.ae_title.strip(),
                         peer_address=assoc.requestor.address)

    def _on_released(self, event: evt.Event) -> None:
        dimse = event.assoc.dimse
        if isinstance(dimse, _StreamingDIMSE):
            dimse.released = True

    def _on_closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        dimse = assoc.dimse
        if not isinstance(dimse, _StreamingDIMSE):
            return
        dimse.discard_pending()
        for study_uid in dimse.held_studies:
            self.active.release(study_uid)
        dimse.held_studies.clear()
        if dimse.established and not dimse.released:
            with self.db.session() as session:
                audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "association-aborted",
                             Outcome.MINOR_FAILURE,
                             "association ended without a release (aborted or connection lost)",
                             calling_ae_title=assoc.requestor.ae_title.strip()[:16] or None,
                             peer_address=assoc.requestor.address)
