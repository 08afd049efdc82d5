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
    AUDIT_LOG_USED = "110101"  # the audit trail exported from the console
    INSTANCES_ACCESSED = "110103"  # images read by the detector, or by a viewer (WADO-RS)
    INSTANCES_TRANSFERRED = "110104"
    QUERY = "110112"  # a QIDO-RS search of the node's studies
    SECURITY_ALERT = "110113"
    USER_AUTHENTICATION = "110114"  # console login, failed login, logout, lockout


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
    user_name: str | None = None,
) -> AuditEvent:
    """Add one audit row to ``session`` (committed with the caller's transaction) and log it.

    ``user_name`` is the person acting (PS3.15 A.5.3.2 UserID of the requesting
    ActiveParticipant): a console account, or ``cli:<os user>`` for a command.
    """
    level = logging.INFO if outcome == Outcome.SUCCESS else logging.WARNING
    if user_name is not None:
        LOGGER.log(level, "%s %s: %s (user %s%s)", event_id, event_type, message, user_name,
                   f" from {peer_address}" if peer_address else "")
    else:
        LOGGER.log(level, "%s %s: %s (calling %s from %s, study %s, instance %s)", event_id,
                   event_type, message, calling_ae_title, peer_address, study_uid,
                   sop_instance_uid)
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
        user_name=user_name[:80] if user_name is not None else None,
    )
    session.add(row)
    return row
