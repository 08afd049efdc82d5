"""The job queue: one row per study generation to analyse, in the shared database."""

from __future__ import annotations

from sqlalchemy.orm import Session

from storage.models import Job, JobState, Study


def queue_study_job(session: Session, study: Study) -> Job:
    """Queue the analysis of ``study``'s current generation.

    The unique (study, generation) constraint makes a second attempt for the same
    generation fail in the database, which is what keeps "exactly one job" true when
    several processes race.
    """
    job = Job(study_id=study.id, study_generation=study.generation, state=JobState.QUEUED)
    session.add(job)
    return job
