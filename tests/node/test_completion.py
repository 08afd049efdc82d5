"""Study completion: one job per quiet study generation, never for a study still being sent."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from node.completion import complete_quiet_studies
from storage.models import Job, Study, StudyState, utcnow

QUIET_SECONDS = 60.0
STUDY_UID = "1.2.826.0.1.3680043.1"


def add_study(db, seconds_since_last_instance: float, generation: int = 1) -> None:
    with db.session() as session:
        session.add(Study(
            study_uid=STUDY_UID, state=StudyState.RECEIVING, generation=generation,
            last_instance_at=utcnow() - timedelta(seconds=seconds_since_last_instance),
        ))


def jobs(db) -> list[tuple[int, str]]:
    with db.session() as session:
        return session.execute(
            select(Job.study_generation, Job.state).order_by(Job.study_generation)).all()


def study(db) -> Study:
    with db.session() as session:
        return session.scalars(select(Study).where(Study.study_uid == STUDY_UID)).one()


def test_quiet_study_gets_exactly_one_job(database):
    add_study(database, seconds_since_last_instance=2 * QUIET_SECONDS)

    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset()) == [STUDY_UID]
    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset()) == []

    assert jobs(database) == [(1, "queued")]
    completed = study(database)
    assert completed.state == StudyState.COMPLETE
    assert completed.completed_at is not None


def test_recent_study_gets_no_job(database):
    add_study(database, seconds_since_last_instance=QUIET_SECONDS / 2)

    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset()) == []

    assert jobs(database) == []
    assert study(database).state == StudyState.RECEIVING


def test_busy_study_waits_until_released(database):
    add_study(database, seconds_since_last_instance=2 * QUIET_SECONDS)

    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset({STUDY_UID})) == []
    assert jobs(database) == []
    assert study(database).state == StudyState.RECEIVING

    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset()) == [STUDY_UID]
    assert jobs(database) == [(1, "queued")]


def test_reopened_study_gets_a_job_for_its_new_generation(database):
    add_study(database, seconds_since_last_instance=2 * QUIET_SECONDS)
    complete_quiet_studies(database, QUIET_SECONDS, frozenset())
    with database.session() as session:
        reopened = session.scalars(select(Study)).one()
        reopened.generation = 2
        reopened.state = StudyState.RECEIVING
        reopened.last_instance_at = utcnow() - timedelta(seconds=2 * QUIET_SECONDS)

    assert complete_quiet_studies(database, QUIET_SECONDS, frozenset()) == [STUDY_UID]

    assert jobs(database) == [(1, "queued"), (2, "queued")]
    assert study(database).state == StudyState.COMPLETE
