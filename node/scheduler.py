"""``cxr-node scheduler``: retraining, the audit report and retention on cron schedules.

Each scheduler process builds its schedule from the settings when it starts and keeps it
in memory (APScheduler's ``MemoryJobStore``): APScheduler 3 does not support sharing a
persistent job store between processes, and nothing here needs one. Several scheduler
processes may run (one per host, for availability): every scheduled occurrence of a task
is run once, because running it starts by inserting its ``task_runs`` row, and the unique
(task, scheduled_for) pair lets only one process do that. A retraining also never
overlaps another one still running. An occurrence missed while no scheduler was running
is run at start if it is at most ``misfire_grace_seconds`` old and ``task_runs`` has no
row for it; several missed ones of a task count as one (the latest).

Databases used by earlier versions hold an ``apscheduler_jobs`` table (APScheduler made
it, no migration did); nothing reads or writes it any more, so it is left as it is.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from node.preflight import connect_database
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import (
    DatasetSnapshot,
    DatasetSplit,
    Instance,
    LabelBatch,
    Series,
    TaskRun,
    utcnow,
)

LOGGER = logging.getLogger("cxr_node.scheduler")
TASKS = ("retrain", "report", "retention")
# A retraining still "running" after this long is taken to have died with its process.
RETRAIN_LEASE = timedelta(hours=24)

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """5-field crontab, or 6 fields with seconds first (for compressed test schedules).

    Weekday numbers are crontab's (0 and 7 Sunday); APScheduler 3 counts from Monday, so
    they are passed on as names.
    """
    fields = expression.split()
    second, (minute, hour, day, month, weekday) = ("0", fields) if len(fields) == 5 \
        else (fields[0], fields[1:])
    weekday = re.sub(r"(?<!/)\b[0-7]\b", lambda m: _WEEKDAYS[int(m.group())], weekday)
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=weekday, timezone=timezone)


def _latest_occurrence(trigger: CronTrigger, now: datetime, lookback: timedelta) -> datetime:
    """The newest fire time at or before ``now`` (what this run stands for)."""
    latest, fire = None, trigger.get_next_fire_time(None, now - lookback)
    while fire is not None and fire <= now:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return latest or now


def task_cron(settings: Settings, task: str) -> str:
    """The configured cron expression of ``task``."""
    scheduler = settings.scheduler
    return {"retrain": scheduler.retrain_cron, "report": scheduler.report_cron,
            "retention": scheduler.retention_cron}[task]


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


class TaskRunner:
    """Runs one occurrence of a task once, records it, and audits failures."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.store = DicomFileStore(settings.storage.data_dir)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:scheduler"

    def run(self, task: str, now: datetime | None = None) -> TaskRun | None:
        """Run the current occurrence of ``task`` unless another process has it."""
        if task not in TASKS:
            raise ValueError(f'task "{task}" is not one of {", ".join(TASKS)}')
        scheduler = self.settings.scheduler
        now = now or datetime.now(UTC)
        occurrence = _naive_utc(_latest_occurrence(
            cron_trigger(task_cron(self.settings, task), scheduler.timezone), now,
            timedelta(seconds=scheduler.misfire_grace_seconds + 1)))
        return self._run_once(task, occurrence, self.owner, None)

    def run_requested(self, task: str, user_name: str, process: str = "console",
                      now: datetime | None = None) -> TaskRun | None:
        """Run ``task`` now because a person asked (the console's "Run now").

        The run stands for no cron occurrence: its ``scheduled_for`` is the moment it was
        asked for, so it neither takes a scheduled occurrence's ticket (which would stop
        the scheduler running it) nor is refused because the scheduler ran the latest one.
        It runs the same code and is recorded and audited the same way, under
        ``process``'s name and the person's.
        """
        if task not in TASKS:
            raise ValueError(f'task "{task}" is not one of {", ".join(TASKS)}')
        owner = f"{socket.gethostname()}:{os.getpid()}:{process}:{user_name}"[:128]
        return self._run_once(task, _naive_utc(now or datetime.now(UTC)), owner, user_name)

    def _run_once(self, task: str, occurrence: datetime, owner: str,
                  user_name: str | None) -> TaskRun | None:
        try:
            with self.db.session() as session:
                run = TaskRun(task=task, scheduled_for=occurrence, owner=owner)
                session.add(run)
        except IntegrityError:
            LOGGER.info("%s at %s is run by another scheduler", task, occurrence)
            return None
        try:
            outcome, message = getattr(self, f"_{task}")(occurrence)
        except Exception as exc:  # noqa: BLE001 - recorded and audited; the next run retries
            LOGGER.exception("%s failed", task)
            outcome, message = "failed", f"{type(exc).__name__}: {exc}"
        with self.db.session() as session:
            run = session.get(TaskRun, run.id)
            run.outcome, run.message, run.finished_at = outcome, message[:4000], utcnow()
            kind = "scheduled" if user_name is None else "requested"
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, f"{kind}-{task}",
                         Outcome.SERIOUS_FAILURE if outcome == "failed" else Outcome.SUCCESS,
                         f"{task} {kind} for {occurrence:%Y-%m-%d %H:%M:%S}: {outcome}: "
                         f"{message}", user_name=user_name)
        return run

    def _retrain(self, occurrence: datetime) -> tuple[str, str]:
        minimum = self.settings.training.min_new_labelled_studies
        with self.db.session() as session:
            running = session.scalar(select(func.count(TaskRun.id)).where(
                TaskRun.task == "retrain", TaskRun.outcome == "running",
                TaskRun.scheduled_for != occurrence,
                TaskRun.started_at > utcnow() - RETRAIN_LEASE))
            if running:
                return "skipped", "another retraining is still running"
            last = session.scalar(select(func.max(DatasetSnapshot.created_at)))
            query = select(func.count(func.distinct(LabelBatch.study_id)))
            if last is not None:
                query = query.where(LabelBatch.created_at > last)
            new = session.scalar(query) or 0
        if new < minimum:
            return "skipped", f"{new} newly labelled studies; {minimum} needed"
        # Only now: importing the trainer (torch, effdet) takes seconds to a minute.
        from training.retrain import RetrainError, retrain

        device = self.settings.worker.device
        try:  # in training.nproc_per_node processes on this host (torchrun), 1 by default
            outcome = retrain(self.settings, self.db, self.store, device=device)
        except RetrainError as exc:
            return "skipped", str(exc)
        verdict = "passed" if outcome.gate.passed else "refused"
        return "done", (f"candidate {outcome.candidate_version} from {new} new studies; gate "
                        f"{verdict}{'; promoted' if outcome.promoted else ''}")

    def _report(self, occurrence: datetime) -> tuple[str, str]:
        from model.vocabulary import DEFAULT_LABELS
        from node.audit_report import write_audit_report
        from training.tracking import check_performance

        scheduler = self.settings.scheduler
        out = Path(self.settings.storage.data_dir) / scheduler.reports_dir / \
            f"{occurrence:%Y-%m-%d-%H%M%S}"
        write_audit_report(self.db, occurrence - timedelta(days=1), occurrence, out,
                           DEFAULT_LABELS)
        alerts = check_performance(self.db, DEFAULT_LABELS, margin=scheduler.alert_margin,
                                   min_cases=scheduler.alert_min_cases)
        return "done", f"report in {out}; {len(alerts)} performance alerts"

    def _retention(self, occurrence: datetime) -> tuple[str, str]:
        days = self.settings.scheduler.retention_days
        if not days:
            return "skipped", "retention_days is 0: images are kept"
        cutoff = occurrence - timedelta(days=days)
        with self.db.session() as session:
            in_snapshots = select(DatasetSplit.study_id)
            instances = session.scalars(
                select(Instance).join(Series)
                .where(Instance.received_at < cutoff, Instance.produced_by_node.is_(False),
                       Instance.purged_at.is_(None), Series.study_id.not_in(in_snapshots))
            ).all()
            for instance in instances:
                self.store.absolute(instance.path).unlink(missing_ok=True)
            session.execute(update(Instance).where(Instance.id.in_([i.id for i in instances]))
                            .values(purged_at=utcnow()))
        return "done", f"{len(instances)} images older than {days} days deleted"


def missed_occurrences(runner: TaskRunner, now: datetime) -> list[tuple[str, datetime]]:
    """Per task, its latest occurrence within the misfire grace before ``now`` that no
    scheduler has run (no ``task_runs`` row): what was due while none was running."""
    scheduler = runner.settings.scheduler
    grace = timedelta(seconds=scheduler.misfire_grace_seconds)
    missed = []
    for task in TASKS:
        trigger = cron_trigger(task_cron(runner.settings, task), scheduler.timezone)
        first = trigger.get_next_fire_time(None, now - grace)
        if first is None or first > now:
            continue  # no occurrence within the grace
        occurrence = _naive_utc(_latest_occurrence(trigger, now, grace))
        with runner.db.session() as session:
            if session.scalar(select(TaskRun.id).where(TaskRun.task == task,
                                                       TaskRun.scheduled_for == occurrence)):
                continue
        missed.append((task, occurrence))
    return missed


def build_scheduler(settings: Settings, db: Database,
                    now: datetime | None = None) -> BackgroundScheduler:
    """This process's schedule, from the settings, in memory; missed occurrences first."""
    scheduler_settings = settings.scheduler
    runner = TaskRunner(settings, db)
    scheduler = BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": scheduler_settings.misfire_grace_seconds},
        timezone=scheduler_settings.timezone)
    for task in TASKS:
        scheduler.add_job(runner.run, cron_trigger(task_cron(settings, task),
                                                   scheduler_settings.timezone),
                          args=[task], id=task, name=task)
    now = now or datetime.now(UTC)
    for task, occurrence in missed_occurrences(runner, now):
        LOGGER.info("%s at %s was missed: running it now", task, occurrence)
        # No trigger: it runs once, as the scheduler starts, for the occurrence due at
        # ``now`` (a retraining still checks that none other is running).
        scheduler.add_job(runner.run, args=[task, now], id=f"{task}-missed",
                          name=f"{task} (missed)")
    return scheduler


def serve_scheduler(settings: Settings) -> int:
    db = connect_database(settings)
    scheduler = build_scheduler(settings, db)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    scheduler.start()
    for job in scheduler.get_jobs():
        LOGGER.info("%s next at %s", job.id, job.next_run_time)
    print(f"cxr-node scheduler running: {', '.join(TASKS)}", flush=True)
    stopping.wait()
    scheduler.shutdown(wait=True)
    db.dispose()
    return 0


def list_jobs(settings: Settings, limit: int = 20) -> int:
    """The schedule (next run of each task) and the last runs."""
    scheduler = settings.scheduler
    print(f"{'task':<10} {'cron':<16} next run ({scheduler.timezone})")
    now = datetime.now(UTC)
    for task in TASKS:
        cron = task_cron(settings, task)
        upcoming = cron_trigger(cron, scheduler.timezone).get_next_fire_time(None, now)
        print(f"{task:<10} {cron:<16} {upcoming:%Y-%m-%d %H:%M:%S}")
    db = connect_database(settings)
    with db.session() as session:
        runs = session.scalars(select(TaskRun).order_by(TaskRun.id.desc()).limit(limit)).all()
    db.dispose()
    print(f"\nlast runs:\n{'task':<10} {'scheduled for (UTC)':<19}  {'outcome':<8} "
          f"{'owner':<28} message")
    for run in runs:
        print(f"{run.task:<10} {run.scheduled_for:%Y-%m-%d %H:%M:%S}  {run.outcome:<8} "
              f"{run.owner[:28]:<28} {run.message}")
    return 0
