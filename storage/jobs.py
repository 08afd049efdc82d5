"""The job queue: one row per study generation to analyse, in the shared database.

Workers in any number of processes claim jobs under a lease (storage.leases: ``FOR
UPDATE SKIP LOCKED`` on PostgreSQL). A worker that dies leaves a lease that
expires, and the job is claimed again; a worker finishes a job only while its lease is
still its own, in the same transaction that stores the results, so no job completes twice.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.leases import claim_queued, fail_abandoned
from storage.models import Job, JobState, Study, StudyState, utcnow


def queue_study_job(session: Session, study: Study) -> Job:
    """Queue the analysis of ``study``'s current generation.

    The unique (study, generation) constraint makes a second attempt for the same
    generation fail in the database, which is what keeps "exactly one job" true when
    several processes race.
    """
    job = Job(study_id=study.id, study_generation=study.generation, state=JobState.QUEUED)
    session.add(job)
    return job


def claim_jobs(db: Database, owner: str, lease_seconds: float, limit: int,
               max_attempts: int) -> list[int]:
    """Claim up to ``limit`` jobs (oldest first) for ``owner``; return their ids."""
    return claim_queued(db, Job, owner, lease_seconds, limit, max_attempts)


def finish_job(session: Session, job_id: int, owner: str) -> bool:
    """Mark the job done if we still hold it; the caller commits results in the same session.

    Returns False when another worker took the job over (our lease expired): the caller
    must then roll back, so the job's results are stored once.
    """
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
        .values(state=JobState.DONE, finished_at=utcnow(), lease_expires_at=None, error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def release_failed_job(session: Session, job_id: int, owner: str, error: str,
                       max_attempts: int) -> JobState | None:
    """Give a job back after an error: queued again, or failed after ``max_attempts``."""
    job = session.get(Job, job_id)
    if job is None or job.lease_owner != owner or job.state != JobState.RUNNING:
        return None
    job.state = JobState.FAILED if job.attempts >= max_attempts else JobState.QUEUED
    job.error = error[:4000]
    job.lease_expires_at = None
    if job.state == JobState.FAILED:
        job.finished_at = utcnow()
    return job.state


def return_unstarted_job(session: Session, job_id: int, owner: str) -> bool:
    """Put back a job we claimed but never worked on (shutting down); no attempt is counted."""
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
        .values(state=JobState.QUEUED, lease_owner=None, lease_expires_at=None,
                attempts=Job.attempts - 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def fail_abandoned_jobs(session: Session, max_attempts: int) -> list[Job]:
    """Jobs whose workers died ``max_attempts`` times: mark them failed, return them."""
    return fail_abandoned(session, Job, max_attempts)


def queue_study_again(session: Session, study: Study) -> Job | None:
    """Queue a new analysis of a complete study, as a late image would: a new generation.

    The generation is bumped with a compare-and-set, so of two requests at once one
    queues (the other gets None); the job itself is queued through
    :func:`queue_study_job`, the one queueing path, now rather than after a quiet period.
    """
    changed = session.execute(
        update(Study)
        .where(Study.id == study.id, Study.generation == study.generation,
               Study.state == StudyState.COMPLETE)
        .values(generation=Study.generation + 1, completed_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return None
    session.refresh(study)
    return queue_study_job(session, study)
