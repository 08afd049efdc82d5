"""The listener: C-ECHO and C-STORE SCP on pynetdicom, hardened for a hospital network.

pynetdicom provides the protocol; small subclasses of its acceptor classes, one module per
layer as pynetdicom itself is split, add what a production node needs:

* :mod:`node.scp.transport`: a deadline on every read, the A-ASSOCIATE-RQ read before an
  association exists, a per-address bound on connections still sending one, and PDUs
  bounded by size before anything is read or allocated.
* :mod:`node.scp.acse`: unknown calling AE titles, known ones from the wrong address, a
  wrong called AE title and associations over the limits are rejected and audited.
* :mod:`node.scp.dimse`: command sets and stray data bounded, C-STORE command UIDs checked
  before a file is opened, and each data set moved to disk as its PDUs arrive.
* :mod:`node.scp.policy`: the rules and the audit rows.

Those adapters sit on private pynetdicom hooks (pinned by tests/node/
test_pynetdicom_contract.py); the handlers here check that they are in place and abort
otherwise. No inference runs here: the C-STORE handler only stores, registers and answers.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
import uuid

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from config.settings import Settings
from node.ingest import ActiveStudies, Ingest, StoreRequest
from node.metrics import NodeMetrics
from node.scp.acse import PeerCheckingACSE
from node.scp.dimse import StreamingDIMSE
from node.scp.policy import PendingConnections, Policy
from node.scp.transport import AcceptorRequestHandler, GuardedSocket, ListenerServer
from node.statuses import Rejection, StoreStatus
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore, IncomingFile

LOGGER = logging.getLogger("cxr_node.scp")

IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'cxr-node implementation').int}"
IMPLEMENTATION_VERSION_NAME = "CXRNODE_010"

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
                 ingest: Ingest, active: ActiveStudies,
                 metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.ingest = ingest
        self.active = active
        self.metrics = metrics or NodeMetrics()
        self.policy = Policy(settings, db, store, self.metrics)
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
            server_class=ListenerServer,
            request_handler=AcceptorRequestHandler,
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

    def not_accepting(self) -> str | None:
        """Why the listener cannot accept associations now, or None when it can (readiness).

        Judged from inside (listening socket open, serving thread alive): connecting to the
        port would hold a pending-connection slot for the ACSE timeout.
        """
        server = self._server
        if server is None:
            return "the DICOM listener is not started"
        if server.socket.fileno() < 0:
            return "the DICOM listener's socket is closed"
        if self._thread is None or not self._thread.is_alive():
            return "the DICOM listener's thread has stopped"
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for assoc in list(self._ae.active_associations):
            assoc.abort()

    # -- association policy ------------------------------------------------------------

    def check_association(self, calling: str, called: str, address: str) -> Rejection | None:
        """The policy's verdict on this request, counting the associations being served."""
        return self.policy.check_association(calling, called, address, self._acceptor_count())

    def open_associations(self) -> int:
        """Associations being served now (the console's overview shows it)."""
        return self._acceptor_count()

    def _acceptor_count(self) -> int:
        """Associations being served: those whose peer has sent an A-ASSOCIATE-RQ.

        A bare TCP connection (a health check, a port scan) leaves pynetdicom's thread
        waiting out the ACSE timeout; it must not use up the limit meant for senders.
        """
        return sum(1 for assoc in self._ae.active_associations
                   if assoc.is_acceptor and assoc.dul.is_alive()
                   and assoc.requestor.primitive is not None)


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
        if not isinstance(assoc.dul.socket, GuardedSocket):
            missing.append("guarded socket (RequestHandler._create_association)")
        if not isinstance(assoc.acse, PeerCheckingACSE):
            missing.append("peer-checking ACSE")
        elif not assoc.acse.peer_checked:
            missing.append("peer check (ACSE._negotiate_as_acceptor was not called)")
        if not isinstance(assoc.dimse, StreamingDIMSE):
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
        self.policy.audit_security_alert("adapter-missing", f"{problem}: association aborted",
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
        started = time.perf_counter()
        dimse: StreamingDIMSE = assoc.dimse
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
        self.metrics.store_answered(int(result.status), incoming.size,
                                    time.perf_counter() - started)
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
        self.metrics.associations_accepted.inc()
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "association-accepted",
                         Outcome.SUCCESS, f"{len(assoc.accepted_contexts)} presentation contexts",
                         calling_ae_title=assoc.requestor.ae_title.strip(),
                         called_ae_title=assoc.acceptor.ae_title.strip(),
                         peer_address=assoc.requestor.address)

    def _on_released(self, event: evt.Event) -> None:
        dimse = event.assoc.dimse
        if isinstance(dimse, StreamingDIMSE):
            dimse.released = True

    def _on_closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        dimse = assoc.dimse
        if not isinstance(dimse, StreamingDIMSE):
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
