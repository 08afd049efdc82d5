"""The job queue and the outbox: leases, take-over after a crash, back-off, dead letters."""

from __future__ import annotations

import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from storage.db import Database
from storage.jobs import claim_jobs, fail_abandoned_jobs, finish_job, release_failed_job
from storage.leases import expire_leases_of_dead_local_processes
from storage.models import Job, JobState, ResultObject, Study, Transfer, TransferState, utcnow
from storage.outbox import BackOff, claim_transfers, mark_failed, mark_sent, retry_dead

LEASE = 60.0


def add_jobs(db: Database, count: int) -> list[int]:
    with db.session() as session:
        jobs = []
        for _ in range(count):
            study = Study(study_uid=f"2.25.{uuid.uuid4().int}")
            session.add(study)
            session.flush()
            jobs.append(Job(study_id=study.id, study_generation=1))
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def job(db: Database, job_id: int) -> Job:
    with db.session() as session:
        return session.get(Job, job_id)


def expire_lease(db: Database, job_id: int) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claims_oldest_jobs_once(database):
    ids = add_jobs(database, 5)

    first = claim_jobs(database, "a", LEASE, limit=3, max_attempts=3)
    second = claim_jobs(database, "b", LEASE, limit=3, max_attempts=3)

    assert first == ids[:3]
    assert second == ids[3:]
    assert claim_jobs(database, "c", LEASE, limit=3, max_attempts=3) == []
    assert job(database, ids[0]).lease_owner == "a"
    assert job(database, ids[0]).attempts == 1


def test_concurrent_claimers_never_share_a_job(database):
    ids = add_jobs(database, 40)

    def claim_all(owner: str) -> list[int]:
        mine = []
        while batch := claim_jobs(database, owner, LEASE, limit=2, max_attempts=3):
            mine += batch
        return mine

    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(claim_all, ["w1", "w2", "w3", "w4"]))

    every = [job_id for mine in claimed for job_id in mine]
    assert sorted(every) == ids  # each job claimed exactly once


def test_expired_lease_is_taken_over_and_the_first_worker_cannot_finish(database):
    [job_id] = add_jobs(database, 1)
    assert claim_jobs(database, "dead-worker", LEASE, 1, max_attempts=3) == [job_id]
    assert claim_jobs(database, "other", LEASE, 1, max_attempts=3) == []  # lease still valid

    expire_lease(database, job_id)
    assert claim_jobs(database, "other", LEASE, 1, max_attempts=3) == [job_id]

    with database.session() as session:
        assert not finish_job(session, job_id, "dead-worker")
    with database.session() as session:
        assert finish_job(session, job_id, "other")
    finished = job(database, job_id)
    assert (finished.state, finished.attempts) == (JobState.DONE, 2)


def test_leases_of_killed_local_processes_are_expired_and_others_kept(database):
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    owners = [f"{host}:{gone.pid}:worker:a", f"{host}:{running.pid}:worker:b",
              f"elsewhere:{gone.pid}:worker:c"]
    try:
        ids = add_jobs(database, 3)
        for owner in owners:
            claim_jobs(database, owner, LEASE, limit=1, max_attempts=3)

        with database.session() as session:
            assert expire_leases_of_dead_local_processes(session, Job) == [owners[0]]

        assert claim_jobs(database, "restarted", LEASE, limit=3, max_attempts=3) == [ids[0]]
        assert job(database, ids[1]).lease_owner == owners[1]
        assert job(database, ids[2]).lease_owner == owners[2]
    finally:
        running.kill()
        running.wait()


def test_failed_job_is_retried_then_marked_failed(database):
    [job_id] = add_jobs(database, 1)
    states = []
    for _ in range(2):
        assert claim_jobs(database, "w", LEASE, 1, max_attempts=2) == [job_id]
        with database.session() as session:
            states.append(release_failed_job(session, job_id, "w", "decoder crashed", 2))

    assert states == [JobState.QUEUED, JobState.FAILED]
    assert job(database, job_id).error == "decoder crashed"
    assert claim_jobs(database, "w", LEASE, 1, max_attempts=2) == []


def test_job_abandoned_too_often_is_failed(database):
    [job_id] = add_jobs(database, 1)
    claim_jobs(database, "w", LEASE, 1, max_attempts=1)
    expire_lease(database, job_id)

    assert claim_jobs(database, "x", LEASE, 1, max_attempts=1) == []
    with database.session() as session:
        failed = fail_abandoned_jobs(session, max_attempts=1)
    assert [j.id for j in failed] == [job_id]
    assert "abandoned" in job(database, job_id).error


BACKOFF = BackOff(first_delay_seconds=10, factor=2, max_delay_seconds=30, max_age_seconds=3600)


def add_transfer(db: Database, destination: str = "PACS") -> int:
    [job_id] = add_jobs(db, 1)
    with db.session() as session:
        study_id = session.get(Job, job_id).study_id
        result = ResultObject(job_id=job_id, study_id=study_id, kind="sr",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                              sop_instance_uid=f"1.2.826.0.1.3680043.9.{job_id}",
                              series_instance_uid="1.2.826.0.1.3680043.8", path="results/x.dcm")
        transfer = Transfer(result=result, destination=destination)
        session.add(transfer)
        session.flush()
        return transfer.id


def transfer(db: Database, transfer_id: int) -> Transfer:
    with db.session() as session:
        return session.get(Transfer, transfer_id)


def test_backoff_grows_to_its_ceiling():
    assert [BACKOFF.delay_after(n) for n in (1, 2, 3, 4)] == [10, 20, 30, 30]


def test_failed_transfer_waits_its_back_off_then_is_sent(database):
    transfer_id = add_transfer(database)
    assert claim_transfers(database, "s", ["PACS"], LEASE, 10) == {"PACS": [transfer_id]}
    with database.session() as session:
        assert mark_failed(session, transfer_id, "s", "connection refused", BACKOFF) \
            == TransferState.PENDING

    waiting = transfer(database, transfer_id)
    delay = (waiting.next_attempt_at - waiting.last_attempt_at).total_seconds()
    assert delay == pytest.approx(10, abs=0.01)
    assert claim_transfers(database, "s", ["PACS"], LEASE, 10) == {}  # not due yet

    with database.session() as session:
        session.execute(update(Transfer).values(next_attempt_at=utcnow()))
    assert claim_transfers(database, "s", ["PACS"], LEASE, 10) == {"PACS": [transfer_id]}
    with database.session() as session:
        assert mark_sent(session, transfer_id, "s")
    sent = transfer(database, transfer_id)
    assert (sent.state, sent.attempts, sent.last_error) == (TransferState.SENT, 2, None)


def test_transfer_too_old_becomes_dead_letter_and_retry_requeues_it(database):
    transfer_id = add_transfer(database)
    with database.session() as session:
        session.execute(update(Transfer).values(queued_at=utcnow() - timedelta(hours=2)))
    claim_transfers(database, "s", ["PACS"], LEASE, 10)
    with database.session() as session:
        assert mark_failed(session, transfer_id, "s", "0xA700", BACKOFF) == TransferState.DEAD

    assert claim_transfers(database, "s", ["PACS"], LEASE, 10) == {}
    with database.session() as session:
        assert retry_dead(session) == 1
    assert claim_transfers(database, "s", ["PACS"], LEASE, 10) == {"PACS": [transfer_id]}


def test_transfers_are_claimed_per_destination(database):
    pacs, viewer = add_transfer(database, "PACS"), add_transfer(database, "VIEWER")

    claimed = claim_transfers(database, "s", ["PACS", "VIEWER"], LEASE, 10)

    assert claimed == {"PACS": [pacs], "VIEWER": [viewer]}
    with database.session() as session:
        states = set(session.scalars(select(Transfer.state)))
    assert states == {TransferState.SENDING}
