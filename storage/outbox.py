"""The outbox: result objects waiting to be sent, one row per object and destination.

A transfer is claimed under a lease like a job, so several sender processes can share
the outbox and a sender that dies loses nothing. A failure schedules the next attempt
with exponential back-off; past the maximum age the transfer becomes a dead letter,
which an admin lists and re-queues (``cxr-node transfers``, ``cxr-node transfers retry``).
The file and its SOP Instance UID never change, so a retry sends the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.leases import claim
from storage.models import ResultObject, Transfer, TransferState, utcnow


@dataclass(frozen=True)
class BackOff:
    """When to try again: first delay, growth factor, ceiling, and when to give up."""

    first_delay_seconds: float
    factor: float
    max_delay_seconds: float
    max_age_seconds: float

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure (1-based)."""
        return min(self.first_delay_seconds * self.factor ** (attempts - 1),
                   self.max_delay_seconds)


def queue_transfer(session: Session, result: ResultObject, destination: str) -> Transfer:
    transfer = Transfer(result=result, destination=destination, state=TransferState.PENDING)
    session.add(transfer)
    return transfer


def _due(now: datetime):  # noqa: ANN202 - SQL expression
    pending = and_(Transfer.state == TransferState.PENDING, Transfer.next_attempt_at <= now)
    abandoned = and_(Transfer.state == TransferState.SENDING, Transfer.lease_expires_at < now)
    return or_(pending, abandoned)


def claim_transfers(db: Database, owner: str, destinations: list[str], lease_seconds: float,
                    limit: int) -> dict[str, list[int]]:
    """Claim due transfers, at most ``limit`` per destination; {destination: [ids]}."""
    claimed: dict[str, list[int]] = {}
    now = utcnow()
    with db.session() as session:
        for destination in destinations:
            ids = claim(session, db.is_sqlite, Transfer,
                        and_(Transfer.destination == destination, _due(now)),
                        (Transfer.next_attempt_at, Transfer.id), limit,
                        {"state": TransferState.SENDING, "lease_owner": owner,
                         "lease_expires_at": now + timedelta(seconds=lease_seconds)})
            if ids:
                claimed[destination] = sorted(ids)
    return claimed


def mark_sent(session: Session, transfer_id: int, owner: str) -> bool:
    now = utcnow()
    changed = session.execute(
        update(Transfer)
        .where(Transfer.id == transfer_id, Transfer.lease_owner == owner,
               Transfer.state == TransferState.SENDING)
        .values(state=TransferState.SENT, sent_at=now, last_attempt_at=now,
                attempts=Transfer.attempts + 1, last_error=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def mark_failed(session: Session, transfer_id: int, owner: str, error: str,
                backoff: BackOff) -> TransferState | None:
    """Record a failed attempt: pending again after the back-off delay, or dead when too old."""
    transfer = session.get(Transfer, transfer_id)
    if transfer is None or transfer.lease_owner != owner \
            or transfer.state != TransferState.SENDING:
        return None
    now = utcnow()
    transfer.attempts += 1
    transfer.last_attempt_at = now
    transfer.last_error = error[:4000]
    transfer.lease_expires_at = None
    next_attempt = now + timedelta(seconds=backoff.delay_after(transfer.attempts))
    age_limit = transfer.queued_at + timedelta(seconds=backoff.max_age_seconds)
    if now >= age_limit:
        transfer.state = TransferState.DEAD
    else:
        transfer.state = TransferState.PENDING
        transfer.next_attempt_at = min(next_attempt, age_limit)
    return transfer.state


def retry_dead(session: Session, transfer_ids: list[int] | None = None) -> int:
    """Queue dead letters again (all, or the given ids) with a fresh age; return how many."""
    now = utcnow()
    statement = update(Transfer).where(Transfer.state == TransferState.DEAD)
    if transfer_ids:
        statement = statement.where(Transfer.id.in_(transfer_ids))
    return session.execute(
        statement.values(state=TransferState.PENDING, queued_at=now, next_attempt_at=now,
                         lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
