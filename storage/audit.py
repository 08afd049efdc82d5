"""The audit trail: rows coded as IHE ATNA / DICOM PS3.15 A.5 audit messages.

Every security-relevant or data-handling event (associations, instances, duplicates,
rejections, protocol violations) is written here and to the log, so an admin can answer
"what happened to this study" and "who tried to connect" from one place.
"""

from __future__ import annotations

import logging
from enum import IntEnum, StrEnum

from sqlalchemy.orm import Session

from storage.models import AuditEvent

LOGGER = logging.getLogger("cxr_node.audit")


class AuditEventId(StrEnum):
    """DCM codes of PS3.15 A.5.3 (Event ID of the audit message)."""

    APPLICATION_ACTIVITY = "110100"
    INSTANCES_ACCESSED = "110103"  # images read by the detector
    INSTANCES_TRANSFERRED = "110104"
    SECURITY_ALERT = "110113"


class Outcome(IntEnum):
    """PS3.15 A.5.3.1 Event Outcome Indicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


def record(
    session: Session,
    event_id: AuditEventId,
    event_type: str,
    outcome: Outcome,
    message: str = "",
    *,
    calling_ae_title: str | None = None,
    called_ae_title: str | None = None,
    peer_address: str | None = None,
    study_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> AuditEvent:
    """Add one audit row to ``session`` (committed with the caller's transaction) and log it."""
    level = logging.INFO if outcome == Outcome.SUCCESS else logging.WARNING
    LOGGER.log(level, "%s %s: %s (calling %s from %s, study %s, instance %s)", event_id,
               event_type, message, calling_ae_title, peer_address, study_uid, sop_instance_uid)
    row = AuditEvent(
        event_id=str(event_id),
        event_type=event_type,
        outcome=int(outcome),
        message=message[:4000],
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        peer_address=peer_address,
        study_uid=study_uid,
        sop_instance_uid=sop_instance_uid,
    )
    session.add(row)
    return row
