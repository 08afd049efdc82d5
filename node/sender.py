"""The sender: result objects from the outbox to their destinations, over C-STORE or STOW-RS.

Per destination, the due transfers (at most ``max_objects_per_association``) go over one
association with a presentation context per SOP class, or, for a ``kind: dicomweb``
destination, as one STOW-RS request per study (node.dicomweb_send). Success or a warning
(PS3.4 B.2.3; a STOW-RS Warning Reason) marks a transfer sent; anything else, and a
destination that does not answer, schedules a retry with back-off (storage.outbox), until
the transfer is too old and becomes a dead letter. Every outcome is audited. Only the
transport differs between the two kinds: the outbox, its leases and the files are shared.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

import pydicom
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from config.settings import Destination, DestinationKind, Settings
from node import dicomweb_send
from node.loop import PollingThread
from node.metrics import NodeMetrics
from node.scp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.leases import lease_owner
from storage.models import ResultObject, Study, Transfer, TransferState
from storage.outbox import BackOff, claim_transfers, mark_failed, mark_sent

LOGGER = logging.getLogger("cxr_node.sender")
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# PS3.4 B.2.3: 0xB000, 0xB007 and 0xB006 are warnings; the object was stored.
_STORED_WITH_WARNING = frozenset({0xB000, 0xB006, 0xB007})


def backoff_from(settings: Settings) -> BackOff:
    sending = settings.sending
    return BackOff(sending.first_retry_delay_seconds, sending.backoff_factor,
                   sending.max_retry_delay_seconds, sending.max_age_seconds)


def client_tls(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    tls = destination.tls
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(str(tls.ca_certificates))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context, destination.host


def _why_not_established(association, where: str,  # noqa: ANN001 - pynetdicom
                         connected: bool) -> str:
    if not connected:
        return f"cannot connect to {where} (connection refused or timed out)"
    if association.is_rejected:
        return f"{where} rejected the association (check its AE title and our calling AE)"
    if association.is_aborted:
        return f"{where} aborted the association"
    return f"no association with {where} (no answer within the ACSE timeout)"


class Sender:
    """Sends what is due in the outbox; ``send_due`` is one pass, ``SenderThread`` loops it."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.metrics = metrics or NodeMetrics()
        for destination in settings.destinations:  # each series exists from the start, at zero
            self.metrics.results_sent.labels(destination=destination.name)
            self.metrics.send_failures.labels(destination=destination.name)
        self.backoff = backoff_from(settings)
        self.owner = lease_owner("sender")
        for destination in settings.destinations:
            if destination.kind != DestinationKind.DICOMWEB:
                continue
            if destination.url.startswith("http:") and (destination.token
                                                        or destination.username):
                LOGGER.warning("destination %s sends its credentials unencrypted over "
                               "http://; use https:// outside a trusted network",
                               destination.name)
            if not destination.verify_tls:
                LOGGER.warning("destination %s: verify_tls is false, so any server can "
                               "pose as it; give its CA as ca_file instead", destination.name)

    def send_due(self) -> int:
        """Send every due transfer once; return how many were sent."""
        sending = self.settings.sending
        claimed = claim_transfers(self.db, self.owner,
                                  [d.name for d in self.settings.destinations],
                                  sending.lease_seconds, sending.max_objects_per_association)
        sent = 0
        for name, transfer_ids in claimed.items():
            destination = self.settings.destination(name)
            started = time.perf_counter()
            sent += self._send_batch(destination, transfer_ids)
            self.metrics.stage_seconds.labels(stage="send").observe(time.perf_counter() - started)
        return sent

    def _rows(self, transfer_ids: list[int]) -> list[tuple[int, str, str]]:
        """(transfer id, absolute file path, study UID) for each claimed transfer."""
        with self.db.session() as session:
            rows = session.execute(
                select(Transfer.id, ResultObject.path, Study.study_uid)
                .join(ResultObject, ResultObject.id == Transfer.result_id)
                .join(Study, Study.id == ResultObject.study_id)
                .where(Transfer.id.in_(transfer_ids))
                .order_by(Transfer.id)
            ).all()
        return [(transfer_id, str(self.store.absolute(path)), study_uid)
                for transfer_id, path, study_uid in rows]

    def _load(self, transfer_ids: list[int]) -> list[tuple[int, pydicom.Dataset | None, str]]:
        """(transfer id, dataset or None, study UID) for each claimed transfer."""
        loaded = []
        for transfer_id, path, study_uid in self._rows(transfer_ids):
            try:
                loaded.append((transfer_id, pydicom.dcmread(path), study_uid))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                LOGGER.error("result file %s unreadable: %s", path, exc)
                loaded.append((transfer_id, None, study_uid))
        return loaded

    def _send_batch(self, destination: Destination, transfer_ids: list[int]) -> int:
        if destination.kind == DestinationKind.DICOMWEB:
            return self._send_stow(destination, transfer_ids)
        items = self._load(transfer_ids)
        ae = AE(ae_title=self.settings.dicom.ae_title)
        # The node names itself as the listener does, not as the pynetdicom release.
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = self.settings.dicom.acse_timeout_seconds
        ae.dimse_timeout = self.settings.dicom.dimse_timeout_seconds
        ae.network_timeout = self.settings.dicom.network_timeout_seconds
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds, _ in items if ds is not None}):
            ae.add_requested_context(sop_class, [EXPLICIT_VR_LITTLE_ENDIAN,
                                                 IMPLICIT_VR_LITTLE_ENDIAN])
        if not ae.requested_contexts:
            ae.add_requested_context(Verification)
        where = destination.where
        connected = threading.Event()
        try:
            association = ae.associate(destination.host, destination.port,
                                       ae_title=destination.ae_title,
                                       max_pdu=self.settings.dicom.max_pdu_bytes,
                                       tls_args=client_tls(destination),
                                       evt_handlers=[(evt.EVT_CONN_OPEN,
                                                      lambda _: connected.set())])
        except (OSError, ssl.SSLError, ValueError) as exc:
            association, failure = None, f"cannot connect to {where}: {exc}"
        else:
            failure = _why_not_established(association, where, connected.is_set())
        if association is None or not association.is_established:
            for transfer_id, _, study_uid in items:
                self._failed(transfer_id, study_uid, destination, failure)
            return 0
        sent = 0
        try:
            for position, (transfer_id, ds, study_uid) in enumerate(items):
                if not association.is_established:
                    for rest_id, _, rest_study in items[position:]:
                        self._failed(rest_id, rest_study, destination,
                                     f"association with {where} ended early")
                    break
                if ds is None:
                    self._failed(transfer_id, study_uid, destination, "result file unreadable")
                    continue
                error = self._store_one(association, ds)
                if error:
                    self._failed(transfer_id, study_uid, destination, f"{where}: {error}", ds)
                else:
                    self._sent(transfer_id, study_uid, destination, ds)
                    sent += 1
        finally:
            if association.is_established:
                association.release()
        return sent

    def _send_stow(self, destination: Destination, transfer_ids: list[int]) -> int:
        """One STOW-RS request per study, of the files as stored (node.dicomweb_send)."""
        by_study: dict[str, list[tuple[int, str, bytes, pydicom.Dataset, str]]] = {}
        for transfer_id, path, study_uid in self._rows(transfer_ids):
            try:
                with open(path, "rb") as file:
                    data = file.read()
                header = pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True)
                target_study, sop_uid = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
            except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
                LOGGER.error("result file %s unreadable: %s", path, exc)
                self._failed(transfer_id, study_uid, destination, "result file unreadable")
                continue
            by_study.setdefault(target_study, []).append(
                (transfer_id, sop_uid, data, header, study_uid))
        sent = 0
        with dicomweb_send.open_session(destination) as session:
            for target_study, items in by_study.items():
                outcome = dicomweb_send.store_study(session, destination, target_study,
                                                    [(uid, data) for _, uid, data, _, _ in items])
                for transfer_id, sop_uid, _, header, study_uid in items:
                    error = outcome[sop_uid]
                    if error:
                        self._failed(transfer_id, study_uid, destination, error, header)
                    else:
                        self._sent(transfer_id, study_uid, destination, header)
                        sent += 1
        return sent

    @staticmethod
    def _store_one(association, ds: pydicom.Dataset) -> str:  # noqa: ANN001 - pynetdicom
        """Empty when stored; otherwise what went wrong."""
        try:
            status = association.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:
            return f"not sent: {exc}"
        if not status or "Status" not in status:
            return "no C-STORE response (timeout or abort)"
        code = int(status.Status)
        if code == 0x0000 or code in _STORED_WITH_WARNING:
            return ""
        comment = status.get("ErrorComment", "")
        return f"C-STORE status 0x{code:04X}{f' ({comment})' if comment else ''}"

    def _sent(self, transfer_id: int, study_uid: str, destination: Destination,
              ds: pydicom.Dataset) -> None:
        with self.db.session() as session:
            if not mark_sent(session, transfer_id, self.owner):
                return
            self.metrics.results_sent.labels(destination=destination.name).inc()
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "result-sent",
                         Outcome.SUCCESS, f"{ds.Modality} {ds.SOPClassUID} sent to "
                         f"{destination.name}", called_ae_title=destination.ae_title,
                         peer_address=destination.address, study_uid=study_uid,
                         sop_instance_uid=str(ds.SOPInstanceUID))

    def _failed(self, transfer_id: int, study_uid: str, destination: Destination, error: str,
                ds: pydicom.Dataset | None = None) -> None:
        self.metrics.send_failures.labels(destination=destination.name).inc()
        with self.db.session() as session:
            state = mark_failed(session, transfer_id, self.owner, error, self.backoff)
            if state == TransferState.DEAD:
                audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "transfer-dead-letter",
                             Outcome.SERIOUS_FAILURE,
                             f"transfer {transfer_id} to {destination.name} given up: {error}",
                             called_ae_title=destination.ae_title,
                             peer_address=destination.address, study_uid=study_uid,
                             sop_instance_uid=str(ds.SOPInstanceUID) if ds else None)
        if state == TransferState.PENDING:
            LOGGER.warning("transfer %s to %s failed, will retry: %s", transfer_id,
                           destination.name, error)


class SenderThread(PollingThread):
    """Runs :meth:`Sender.send_due` until stopped; woken early when results are queued."""

    def __init__(self, sender: Sender, poll_interval_seconds: float) -> None:
        super().__init__("sender", poll_interval_seconds)
        self.sender = sender

    def step(self) -> int:
        return self.sender.send_due()
