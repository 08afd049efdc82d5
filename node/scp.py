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
import uuid
from collections.abc import Callable

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.acse import ACSE
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
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
from storage.files import DicomFileStore, IncomingFile

LOGGER = logging.getLogger("cxr_node.scp")

IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'cxr-node implementation').int}"
IMPLEMENTATION_VERSION_NAME = "CXRNODE_010"
# PDUs other than P-DATA (association negotiation) are small; this bounds them.
_MAX_CONTROL_PDU_BYTES = 1024 * 1024
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3: A-ASSOCIATE-RQ .. A-ABORT

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


class _GuardedSocket(AssociationSocket):
    """An association socket that will not read a PDU larger than the node accepts."""

    _max_pdu_bytes: int
    _on_violation: Callable[[str], None]
    _pdu_type: int | None
    _violation: str | None

    @classmethod
    def adopt(cls, sock: AssociationSocket, max_pdu_bytes: int,
              on_violation: Callable[[str], None]) -> None:
        """Turn the socket pynetdicom made for this connection into a guarded one.

        The socket is converted in place rather than replaced: creating a second one
        would announce the connection to the state machine twice.
        """
        sock.__class__ = cls
        sock._max_pdu_bytes = max_pdu_bytes
        sock._on_violation = on_violation
        sock._pdu_type = None
        sock._violation = None

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom's DUL reads a PDU as recv(6) for type and length, then recv(length).
        if self._violation:
            raise OSError(self._violation)
        if nr_bytes == 6 and self._pdu_type is None:
            header = self._recv_exactly(6)
            if len(header) == 6:
                self._pdu_type = header[0]
                length = struct.unpack(">L", header[2:6])[0]
                limit = (self._max_pdu_bytes if self._pdu_type == _P_DATA_TF
                         else _MAX_CONTROL_PDU_BYTES)
                problem = None
                if self._pdu_type not in _PDU_TYPES:
                    problem = f"peer sent an unknown PDU type 0x{header[0]:02X} (not DICOM)"
                elif length > limit:
                    problem = (f"peer declared a PDU (type 0x{header[0]:02X}) of {length} bytes; "
                               f"this node accepts at most {limit}")
                if problem:
                    self._refuse(problem)
            return header
        self._pdu_type = None
        return self._recv_exactly(nr_bytes)

    def _refuse(self, problem: str) -> None:
        """Audit once, close the connection, and make every later read fail at once."""
        first = self._violation is None
        self._violation = problem
        self._pdu_type = None
        if first:
            self._on_violation(f"{problem}: association aborted")
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise OSError(problem)

    def _recv_exactly(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        raw = self.socket
        while received < nr_bytes:
            count = raw.recv_into(view[received:])
            if count == 0:
                del view
                return buffer[:received]
            received += count
        return buffer


class _PeerCheckingACSE(ACSE):
    """ACSE that applies the node's peer table and limits before negotiating contexts."""

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = self.assoc.requestor.address
        rejection = self._listener.check_association(calling, called, address)
        if rejection is None:
            super()._negotiate_as_acceptor()
            return
        self.requestor.ae_title = calling
        self.send_reject(rejection.result, rejection.source, rejection.reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class _StreamingDIMSE(DIMSEServiceProvider):
    """DIMSE provider that drains each C-STORE data set into an :class:`IncomingFile`.

    It also carries the association's own state: the studies it holds open, and
    whether it ended with a release.
    """

    def __init__(self, assoc, listener: Listener) -> None:  # noqa: ANN001
        super().__init__(assoc)
        self._listener = listener
        self._pending: dict[int, IncomingFile] = {}
        self.held_studies: set[str] = set()
        self.established = False
        self.released = False

    def receive_primitive(self, primitive) -> None:  # noqa: ANN001 - P_DATA
        try:
            super().receive_primitive(primitive)
        except Exception as exc:  # noqa: BLE001 - an undecodable stream from the peer
            # pynetdicom lets a broken command set escape and kill its DUL thread, which
            # would leave the connection hanging; abort it as for an invalid PDU (Evt19).
            self.message = None
            self.discard_pending()
            self._listener.audit_security_alert(
                "protocol-violation",
                f"undecodable DIMSE message ({type(exc).__name__}: {exc}): association aborted",
                self.assoc.requestor.address, self.assoc.requestor.ae_title.strip())
            self.dul.event_queue.put("Evt19")
            return
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

    def take_pending(self, message_id: int) -> IncomingFile | None:
        return self._pending.pop(message_id, None)

    def discard_pending(self) -> None:
        """Delete data sets that never completed (the association ended mid-transfer)."""
        for incoming in self._pending.values():
            incoming.discard()
        self._pending.clear()


class _RequestHandler(RequestHandler):
    """Installs the guarded socket, the peer-checking ACSE and the streaming DIMSE provider."""

    def _create_association(self):  # noqa: ANN202
        assoc = super()._create_association()
        listener: Listener = self.server.cxr_listener
        peer = self.client_address[0]
        _GuardedSocket.adopt(
            assoc.dul.socket, listener.settings.dicom.max_pdu_bytes,
            lambda message: listener.audit_security_alert("protocol-violation", message, peer))
        assoc.acse = _PeerCheckingACSE(assoc, listener)
        assoc.dimse = _StreamingDIMSE(assoc, listener)
        return assoc


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
            server_class=ThreadedAssociationServer,
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
        with self.db.session() as session:
            audit.record(session, AuditEventId.SECURITY_ALERT, event_type, Outcome.SERIOUS_FAILURE,
                         message, peer_address=address, calling_ae_title=calling_ae_title)

    # -- receiving ---------------------------------------------------------------------

    def new_incoming(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     calling_ae_title: str) -> IncomingFile:
        """Start a DICOM file (preamble and File Meta Information, PS3.10 7.1) for a C-STORE."""
        dicom = self.settings.dicom
        low_disk = self.store.free_bytes() < dicom.min_free_disk_bytes
        incoming = self.store.new_incoming(0 if low_disk else dicom.max_instance_bytes + 1024)
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
        incoming.write(header.getbuffer())
        return incoming

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> Dataset:
        assoc = event.assoc
        dimse: _StreamingDIMSE = assoc.dimse
        request = event.request
        incoming = dimse.take_pending(int(request.MessageID))
        if incoming is None:  # the whole data set arrived in one PDU
            incoming = self.new_incoming(str(request.AffectedSOPClassUID),
                                         str(request.AffectedSOPInstanceUID),
                                         event.context.transfer_syntax, assoc.requestor.ae_title)
        incoming.write(request.DataSet.getbuffer())
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
        if isinstance(assoc.dimse, _StreamingDIMSE):
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
