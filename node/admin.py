"""Admin commands that read and change the node's state: ``studies``, ``transfers``."""

from __future__ import annotations

from sqlalchemy import func, select

from config.settings import Settings
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.models import (
    FindingRecord,
    Instance,
    Job,
    ResultObject,
    Series,
    Study,
    Transfer,
    TransferState,
)
from storage.outbox import retry_dead


def _database(settings: Settings) -> Database:
    return Database.connect(settings.storage.resolved_database_url(),
                            settings.storage.sqlite_busy_timeout_seconds)


def list_studies(settings: Settings, limit: int) -> int:
    """Recent studies: instances, completion, the latest job and its finding count."""
    db = _database(settings)
    with db.session() as session:
        instances = (select(func.count(Instance.id)).join(Series)
                     .where(Series.study_id == Study.id).scalar_subquery())
        latest_job = (select(func.max(Job.id)).where(Job.study_id == Study.id)
                      .scalar_subquery())
        studies = session.execute(
            select(Study.study_uid, Study.patient_id, instances, Study.state, Study.generation,
                   Study.last_instance_at, latest_job)
            .order_by(Study.last_instance_at.desc()).limit(limit)).all()
        job_ids = [row[-1] for row in studies if row[-1] is not None]
        states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids))).all())
        found = dict(session.execute(
            select(FindingRecord.job_id, func.count(FindingRecord.id))
            .where(FindingRecord.job_id.in_(job_ids)).group_by(FindingRecord.job_id)).all())
        rows = [(*row[:-1], states.get(row[-1]), found.get(row[-1], 0)) for row in studies]
    db.dispose()
    print(f"{'study':<64}  {'patient':<12} {'inst':>4}  {'state':<9} {'gen':>3}  "
          f"{'last instance (UTC)':<19}  {'job':<7} findings")
    for uid, patient, count, state, generation, last, job, found in rows:
        print(f"{uid:<64}  {(patient or '-')[:12]:<12} {count:>4}  {state:<9} {generation:>3}  "
              f"{last:%Y-%m-%d %H:%M:%S}  {job or '-':<7} {found if job == 'done' else '-'}")
    return 0


def list_transfers(settings: Settings, limit: int, include_sent: bool) -> int:
    """Transfers not yet sent (and dead letters first), with their last error."""
    db = _database(settings)
    with db.session() as session:
        query = (select(Transfer, ResultObject.kind, ResultObject.sop_instance_uid,
                        Study.study_uid)
                 .join(ResultObject, ResultObject.id == Transfer.result_id)
                 .join(Study, Study.id == ResultObject.study_id))
        if not include_sent:
            query = query.where(Transfer.state != TransferState.SENT)
        order = (Transfer.state != TransferState.DEAD, Transfer.id.desc())
        rows = session.execute(query.order_by(*order).limit(limit)).all()
        counts = dict(session.execute(
            select(Transfer.state, func.count(Transfer.id)).group_by(Transfer.state)).all())
    db.dispose()
    print("transfers: " + ", ".join(f"{state} {counts.get(state, 0)}" for state in TransferState))
    print(f"{'id':>6}  {'state':<8} {'destination':<12} {'kind':<15} {'tries':>5}  "
          f"{'next attempt (UTC)':<19}  study / object / last error")
    for transfer, kind, sop_uid, study_uid in rows:
        next_at = (f"{transfer.next_attempt_at:%Y-%m-%d %H:%M:%S}"
                   if transfer.state == TransferState.PENDING else "-")
        print(f"{transfer.id:>6}  {transfer.state:<8} {transfer.destination[:12]:<12} "
              f"{kind:<15} {transfer.attempts:>5}  {next_at:<19}  {study_uid} / {sop_uid}")
        if transfer.last_error:
            print(f"{'':>8}last error: {transfer.last_error}")
    return 0


def retry_transfers(settings: Settings, transfer_ids: list[int]) -> int:
    """Queue dead letters again (the given ids, or all), audited."""
    db = _database(settings)
    with db.session() as session:
        count = retry_dead(session, transfer_ids or None)
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "transfers-requeued",
                     Outcome.SUCCESS, f"{count} dead letters queued again"
                     + (f" (ids {transfer_ids})" if transfer_ids else ""))
    db.dispose()
    print(f"queued {count} dead letters again")
    return 0
