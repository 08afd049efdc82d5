"""The console's Scheduler page: each task's schedule, its last runs, and "Run now".

The schedule shown is this process's reading of ``scheduler.*``; ``cxr-node scheduler``
reads the same configuration file when it starts, so an edited file shows here before that
process is restarted. The runs come from ``task_runs``, which every scheduler process and
every "Run now" writes, so the history is the site's, whichever host ran what.

"Run now" (operator) goes through :meth:`node.scheduler.TaskRunner.run_requested`: the
same code as a scheduled occurrence, recorded as a ``task_runs`` row with its outcome and
audited. A retraining takes minutes, so the run gets a thread of its own and the answer
comes at once; the page then shows it as running until its row has an outcome. The run
lives in this web process: if the process stops mid-run, its row stays "running" and
blocks another run of that task for :data:`RUN_LEASE` (as a scheduler's retraining does).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from config.settings import Settings
from node.scheduler import RETRAIN_LEASE, TASKS, TaskRunner, cron_trigger, task_cron
from node.web.auth import Accounts, client_address, message_page, require
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.models import TaskRun, UserRole, utcnow

LOGGER = logging.getLogger("cxr_node.web.scheduler")
HISTORY_SHOWN = 30
# A run still "running" after this long is taken to have died with its process.
RUN_LEASE = RETRAIN_LEASE
# Windows in which to look for a schedule's previous occurrence, smallest first: each
# costs at most about window / period steps, so a per-second test schedule is found in the
# first and a weekly one in the fourth, never by stepping through a week of seconds.
_LOOKBACKS = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(days=8),
              timedelta(days=32), timedelta(days=367))


class AlreadyRunning(Exception):
    """A run of the task is under way; the text says where and since when."""


def previous_fire(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The newest fire time at or before ``now``; None when none within a year."""
    for lookback in _LOOKBACKS:
        fire = trigger.get_next_fire_time(None, now - lookback)
        if fire is None or fire > now:
            continue
        latest = fire
        while True:
            fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
            if fire is None or fire > now:
                return latest
            latest = fire
    return None


def described_owner(owner: str) -> str:
    """``host:pid:role[:user]`` (how TaskRunner names itself) as a person reads it."""
    parts = owner.split(":", 3)
    if len(parts) < 3 or not parts[1].isdigit():
        return owner
    text = f"{parts[2]} on {parts[0]} (pid {parts[1]})"
    return f"{text}, asked by {parts[3]}" if len(parts) == 4 else text


def _duration(seconds: float) -> str:
    """Two units at most ("5 d 18 h", "3 min 20 s"): how long, not to the second."""
    whole = int(seconds)
    for size, unit, part, part_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"),
                                        (60, "min", 1, "s")):
        if whole >= size:
            rest = whole % size // part
            return f"{whole // size} {unit}" + (f" {rest} {part_unit}" if rest else "")
    return f"{whole} s"


def _run_row(run: TaskRun, now: datetime) -> dict[str, Any]:
    end = run.finished_at or now
    return {"id": run.id, "task": run.task, "scheduled_for": run.scheduled_for,
            "requested": ":console:" in run.owner, "started_at": run.started_at,
            "finished_at": run.finished_at, "outcome": run.outcome, "message": run.message,
            "owner": described_owner(run.owner),
            "took": _duration(max(0.0, (end - run.started_at).total_seconds()))}


def _what(settings: Settings, task: str) -> str:
    scheduler = settings.scheduler
    if task == "retrain":
        return (f"Retrains the detector once at least "
                f"{settings.training.min_new_labelled_studies} studies are newly labelled; "
                f"the candidate must pass the promotion gate.")
    if task == "report":
        return (f"Writes the audit report of the 24 hours before it runs under "
                f"{settings.storage.data_dir / scheduler.reports_dir}, and checks the "
                f"performance alerts.")
    if scheduler.retention_days:
        return (f"Deletes received images older than {scheduler.retention_days} days that "
                f"are in no dataset snapshot (results and audit rows stay).")
    return "Deletes nothing: scheduler.retention_days is 0, so images are kept."


def running_run(session: Session, task: str) -> TaskRun | None:
    """The run of ``task`` still under way in any process, if one started within the lease."""
    return session.scalar(select(TaskRun).where(
        TaskRun.task == task, TaskRun.outcome == "running",
        TaskRun.started_at > utcnow() - RUN_LEASE).order_by(TaskRun.id.desc()).limit(1))


def schedule_overview(settings: Settings, db: Database,
                      now: datetime | None = None) -> dict[str, Any]:
    """Per task: cron, next and previous occurrence, the last run; and the recent runs."""
    scheduler = settings.scheduler
    now = now or datetime.now(UTC)
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    grace = timedelta(seconds=scheduler.misfire_grace_seconds)
    tasks = []
    with db.session() as session:
        for task in TASKS:
            cron = task_cron(settings, task)
            trigger = cron_trigger(cron, scheduler.timezone)
            upcoming = trigger.get_next_fire_time(None, now)
            previous = previous_fire(trigger, now)
            previous_utc = previous.astimezone(UTC).replace(tzinfo=None) if previous else None
            previous_run = None if previous_utc is None else session.scalar(
                select(TaskRun).where(TaskRun.task == task,
                                      TaskRun.scheduled_for == previous_utc))
            last = session.scalar(select(TaskRun).where(TaskRun.task == task)
                                  .order_by(TaskRun.started_at.desc(), TaskRun.id.desc())
                                  .limit(1))
            running = running_run(session, task)
            tasks.append({
                "task": task, "cron": cron, "what": _what(settings, task),
                "next": upcoming,
                "next_in": _duration((upcoming - now).total_seconds()) if upcoming else None,
                "previous": previous,
                # Past the grace no scheduler would still run it: nobody was running one.
                "previous_missed": previous_utc is not None and previous_run is None
                and previous_utc < naive_now - grace,
                "last": _run_row(last, naive_now) if last else None,
                "running": _run_row(running, naive_now) if running else None})
        history = [_run_row(run, naive_now) for run in session.scalars(
            select(TaskRun).order_by(TaskRun.started_at.desc(), TaskRun.id.desc())
            .limit(HISTORY_SHOWN))]
    return {"timezone": scheduler.timezone, "tasks": tasks, "history": history,
            "history_shown": HISTORY_SHOWN}


class TaskLauncher:
    """Starts requested runs in threads of their own, one at a time per task.

    A task under way (started here and not finished, or with a ``task_runs`` row of any
    process still "running" within the lease) is refused: two retrainings would train on
    the same data twice, and two retentions would race to delete the same files.
    """

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, task: str, user_name: str, address: str | None) -> None:
        """Audit the request and start the run; AlreadyRunning if one is under way."""
        if task not in TASKS:
            raise ValueError(f'task "{task}" is not one of {", ".join(TASKS)}')
        with self._lock:
            thread = self._threads.get(task)
            if thread is not None and thread.is_alive():
                raise AlreadyRunning(f"A run of {task} asked for on this console is still "
                                     f"under way; see its row below.")
            with self.runner.db.session() as session:
                busy = running_run(session, task)
                if busy is not None:
                    raise AlreadyRunning(
                        f"{task} is running already: started "
                        f"{busy.started_at:%Y-%m-%d %H:%M:%S} UTC by "
                        f"{described_owner(busy.owner)}. A run whose "
                        f"process died stops counting {RUN_LEASE.total_seconds() / 3600:g} h "
                        f"after it started.")
                record(session, AuditEventId.APPLICATION_ACTIVITY, "task-run-requested",
                       Outcome.SUCCESS, f"{task} run requested (console)",
                       peer_address=address, user_name=user_name)
            thread = threading.Thread(target=self._run, args=(task, user_name),
                                      name=f"run-now-{task}", daemon=True)
            self._threads[task] = thread
            thread.start()

    def _run(self, task: str, user_name: str) -> None:
        try:
            run = self.runner.run_requested(task, user_name)
            if run is not None:
                LOGGER.info("%s run asked for by %s: %s", task, user_name, run.outcome)
        except Exception:  # noqa: BLE001 - a thread of its own: nobody else would log it
            LOGGER.exception("%s run asked for by %s could not be recorded", task, user_name)
        finally:
            with self._lock:
                if self._threads.get(task) is threading.current_thread():
                    del self._threads[task]


def scheduler_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    """/console/scheduler (viewer) and its "Run now" (operator)."""
    settings, db = accounts_.settings, accounts_.db
    launcher: TaskLauncher | None = None
    launcher_lock = threading.Lock()

    def get_launcher() -> TaskLauncher:
        # Made at the first "Run now": TaskRunner makes the data folders, which a page
        # that only reads should not.
        nonlocal launcher
        with launcher_lock:
            if launcher is None:
                launcher = TaskLauncher(TaskRunner(settings, db))
            return launcher

    @require(UserRole.VIEWER, accounts_, templates)
    async def scheduler_page(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(schedule_overview, settings, db)
        return templates.TemplateResponse(request, "scheduler.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    def start(task: str, user_name: str, address: str | None) -> None:
        get_launcher().start(task, user_name, address)

    @require(UserRole.OPERATOR, accounts_, templates)
    async def run_now(request: Request) -> Response:
        user = request.state.user
        task = request.path_params["task"]
        if task not in TASKS:
            return message_page(templates, request, 404, "No such task",
                                f"The tasks are {', '.join(TASKS)}.", user)
        try:
            await run_in_threadpool(start, task, user.name, client_address(request))
        except AlreadyRunning as exc:
            return message_page(templates, request, 409, "Not started", str(exc), user)
        return RedirectResponse(f"/console/scheduler?notice={task}+started%3B+see+its+last+"
                                f"run+below", status_code=303)

    return [
        Route("/console/scheduler", scheduler_page, methods=["GET"]),
        Route("/console/scheduler/{task}/run", run_now, methods=["POST"]),
    ]
