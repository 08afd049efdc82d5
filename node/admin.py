"""Admin commands that read and change the node's state: studies, transfers, labels, models."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from node.preflight import connect_database
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


@contextmanager
def database(settings: Settings) -> Iterator[Database]:
    """The configured database for one admin command, disposed when it is done."""
    db = connect_database(settings)
    try:
        yield db
    finally:
        db.dispose()


def _attempt(prefix: str, errors: tuple[type[Exception], ...], action: Callable[[], int]) -> int:
    """Run ``action``; an expected refusal is printed after ``prefix`` and exits with 1."""
    try:
        return action()
    except errors as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
        return 1


def list_studies(settings: Settings, limit: int) -> int:
    """Recent studies: instances, completion, the latest job and its finding count."""
    with database(settings) as db, db.session() as session:
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
    print(f"{'study':<64}  {'patient':<12} {'inst':>4}  {'state':<9} {'gen':>3}  "
          f"{'last instance (UTC)':<19}  {'job':<7} findings")
    for uid, patient, count, state, generation, last, job, found in rows:
        print(f"{uid:<64}  {(patient or '-')[:12]:<12} {count:>4}  {state:<9} {generation:>3}  "
              f"{last:%Y-%m-%d %H:%M:%S}  {job or '-':<7} {found if job == 'done' else '-'}")
    return 0


def transfer_rows(session: Session, limit: int, include_sent: bool = False) -> tuple[
        list[tuple[Transfer, str, str, str]], dict[str, int]]:
    """Transfers (dead letters first, then newest) with their object's kind and UID and
    the study UID, and the count of every transfer by state; the CLI and console list these.
    """
    query = (select(Transfer, ResultObject.kind, ResultObject.sop_instance_uid, Study.study_uid)
             .join(ResultObject, ResultObject.id == Transfer.result_id)
             .join(Study, Study.id == ResultObject.study_id))
    if not include_sent:
        query = query.where(Transfer.state != TransferState.SENT)
    order = (Transfer.state != TransferState.DEAD, Transfer.id.desc())
    rows = [tuple(row) for row in session.execute(query.order_by(*order).limit(limit))]
    counts = dict(session.execute(
        select(Transfer.state, func.count(Transfer.id)).group_by(Transfer.state)).all())
    return rows, {str(state): count for state, count in counts.items()}


def list_transfers(settings: Settings, limit: int, include_sent: bool) -> int:
    """Transfers not yet sent (and dead letters first), with their last error."""
    with database(settings) as db, db.session() as session:
        rows, counts = transfer_rows(session, limit, include_sent)
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
    with database(settings) as db, db.session() as session:
        count = retry_dead(session, transfer_ids or None)
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "transfers-requeued",
                     Outcome.SUCCESS, f"{count} dead letters queued again"
                     + (f" (ids {transfer_ids})" if transfer_ids else ""))
    print(f"queued {count} dead letters again")
    return 0


def import_labels(settings: Settings, path: Path, fmt: str) -> int:
    """``cxr-node labels import``: the console's Labels page calls the same import_file."""
    from node.users import cli_actor
    from storage.files import DicomFileStore
    from training.label_store import import_file
    from training.labels import LabelImportError

    def run() -> int:
        with database(settings) as db:
            summary = import_file(settings, db, DicomFileStore(settings.storage.data_dir),
                                  path, fmt, user_name=cli_actor())
        print(f"imported {summary.text()}")
        return 0

    return _attempt(f"nothing imported from {path}:\n", (LabelImportError,), run)


def retrain(settings: Settings, from_scratch: bool, epochs: int | None, image_size: int | None,
            device: str, init_backbone: Path | None = None,
            processes: int | None = None) -> int:
    from storage.files import DicomFileStore
    from training.retrain import RetrainError
    from training.retrain import retrain as run_retrain

    def run() -> int:
        with database(settings) as db:
            return _print_candidate(run_retrain(
                settings, db, DicomFileStore(settings.storage.data_dir),
                from_scratch=from_scratch, epochs=epochs, image_size=image_size, device=device,
                init_backbone=init_backbone, processes=processes))

    return _attempt("retrain: ", (RetrainError,), run)


def _print_candidate(outcome) -> int:  # noqa: ANN001 - training.retrain.RetrainOutcome
    print(f"candidate {outcome.candidate_version} (id {outcome.candidate_id}), judged on "
          f"snapshot {outcome.snapshot_id}\n{outcome.gate.text()}")
    if outcome.promoted:
        print("promoted: it is the active model now")
    elif outcome.gate.passed:
        print(f"promote it with: cxr-node models promote {outcome.candidate_id}")
    return 0


def register_model(settings: Settings, model_dir: Path, device: str) -> int:
    from model.card import CardError
    from storage.files import DicomFileStore
    from training.registry import RegistryError
    from training.retrain import RetrainError, judge_external

    def run() -> int:
        with database(settings) as db:
            return _print_candidate(judge_external(
                settings, db, DicomFileStore(settings.storage.data_dir), model_dir, device))

    return _attempt("models register: ", (RetrainError, RegistryError, CardError), run)


def list_models(settings: Settings) -> int:
    from training.registry import list_versions

    with database(settings) as db, db.session() as session:
        versions = list_versions(session)
        parents = {v.id: f"{v.name} {v.version}" for v in versions}
        print(f"{'id':>4}  {'name':<22} {'version':<10} {'state':<9} {'parent':<28} "
              f"{'activated (UTC)':<19}  test set")
        for v in versions:
            figures = json.loads(v.test_metrics) if v.test_metrics else {}
            test = (f"{figures['test_images']} images, gate "
                    f"{'passed' if figures.get('gate_passed') else 'refused'}"
                    if figures else "-")
            activated = f"{v.activated_at:%Y-%m-%d %H:%M:%S}" if v.activated_at else "-"
            print(f"{v.id:>4}  {v.name[:22]:<22} {v.version[:10]:<10} {v.state:<9} "
                  f"{parents.get(v.parent_id, '-')[:28]:<28} {activated:<19}  {test}")
    return 0


def cli_actor() -> str:
    """The person running a command, as the audit trail names them: ``cli:<os user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (e.g. a bare container)
        return "cli:unknown"


def promote_model(settings: Settings, version_id: int, override_reason: str | None = None) -> int:
    """Activate a version; the registry refuses a candidate that failed the gate (exit 2).

    ``override_reason`` (``--override``) activates it anyway; the registry audits the
    reason, the checks it failed and the user who ran the command.
    """
    from training.registry import PromotionRefused, RegistryError, promote

    actor = cli_actor()
    why = f"promoted by {actor.removeprefix('cli:')} (cxr-node models promote)"
    with database(settings) as db, db.session() as session:
        try:
            version = promote(session, version_id, why, override_reason=override_reason,
                              user_name=actor)
        except PromotionRefused as exc:
            print(f"models promote: {exc} (--override REASON)", file=sys.stderr)
            return 2
        except RegistryError as exc:
            print(f"models promote: {exc}", file=sys.stderr)
            return 1
        print(f"{version.name} {version.version} is the active model; workers switch to "
              "it within seconds")
    return 0


def rollback_model(settings: Settings) -> int:
    from training.registry import RegistryError, rollback

    def run() -> int:
        with database(settings) as db, db.session() as session:
            restored = rollback(session, "cxr-node models rollback", user_name=cli_actor())
            print(f"{restored.name} {restored.version} is the active model again")
        return 0

    return _attempt("models rollback: ", (RegistryError,), run)
