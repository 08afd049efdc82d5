"""The label intake queue: stored reports waiting to be read for labels.

The same lease pattern as the analysis jobs (storage.jobs, storage.leases): any process
may claim rows; a process that dies leaves a lease that expires, and the row is claimed
again, up to ``max_attempts`` times.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.leases import claim_queued, fail_abandoned
from storage.models import Instance, JobState, LabelIntakeJob, utcnow


def queue_label_intake(session: Session, instance: Instance,
                       calling_ae_title: str) -> LabelIntakeJob:
    """Queue ``instance`` (flushed, so it has an id) for the label intake."""
    job = LabelIntakeJob(instance_id=instance.id, calling_ae_title=calling_ae_title[:16],
                         state=JobState.QUEUED)
    session.add(job)
    return job


def claim_label_intakes(db: Database, owner: str, lease_seconds: float, limit: int,
                        max_attempts: int) -> list[int]:
    """Claim up to ``limit`` queued reports (oldest first) for ``owner``; their ids."""
    return claim_queued(db, LabelIntakeJob, owner, lease_seconds, limit, max_attempts)


def end_label_intake(session: Session, job_id: int, owner: str, state: JobState,
                     error: str | None = None) -> bool:
    """Mark a claimed row done, failed or queued again, if its lease is still ``owner``'s."""
    values: dict = {"state": state, "lease_expires_at": None,
                    "error": error[:4000] if error else None}
    if state == JobState.QUEUED:
        values["lease_owner"] = None
    else:
        values["finished_at"] = utcnow()
    changed = session.execute(
        update(LabelIntakeJob)
        .where(LabelIntakeJob.id == job_id, LabelIntakeJob.lease_owner == owner,
               LabelIntakeJob.state == JobState.RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def fail_abandoned_label_intakes(session: Session, max_attempts: int) -> list[LabelIntakeJob]:
    """Rows whose readers died ``max_attempts`` times: mark them failed, return them."""
    return fail_abandoned(session, LabelIntakeJob, max_attempts)
