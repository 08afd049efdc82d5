"""Policy: who may associate, how many at once, and the audit trail of what was refused."""

from __future__ import annotations

import logging
import threading

from config.settings import Settings
from node import statuses
from node.metrics import NodeMetrics
from node.statuses import Rejection, StoreStatus
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore

LOGGER = logging.getLogger("cxr_node.scp")


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


class Policy:
    """The listener's rules and their audit rows, apart from the protocol code that asks."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.metrics = metrics or NodeMetrics()

    def check_association(self, calling: str, called: str, address: str,
                          serving: int) -> Rejection | None:
        """The rejection for this association request, or None to negotiate it (audited).

        ``serving`` counts the associations already being served, this one included.
        """
        dicom = self.settings.dicom
        peer = dicom.peer(calling)
        rejection: Rejection | None = None
        detail = reason = ""
        if peer is None:
            rejection, detail = statuses.CALLING_AE_NOT_RECOGNISED, "unknown calling AE title"
            reason = "unknown-calling-ae-title"
        elif not peer.allows(address):
            rejection = statuses.CALLING_AE_NOT_RECOGNISED
            detail = f"{calling} is not allowed from {address}"
            reason = "calling-ae-title-from-other-address"
        elif called != dicom.ae_title:
            rejection = statuses.CALLED_AE_NOT_RECOGNISED
            detail = f"called AE title {called!r} is not {dicom.ae_title!r}"
            reason = "wrong-called-ae-title"
        elif serving > dicom.max_associations:
            rejection = statuses.LOCAL_LIMIT_EXCEEDED
            detail = f"already serving max_associations={dicom.max_associations}"
            reason = "max-associations"
        elif self.store.free_bytes() < dicom.min_free_disk_bytes:
            rejection = statuses.TEMPORARY_CONGESTION
            detail = "free disk space on the data volume is below min_free_disk_bytes"
            reason = "low-disk"
        if rejection is None:
            return None
        self.metrics.associations_rejected.labels(reason=reason).inc()
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
