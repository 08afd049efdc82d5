"""The console's Audit page: the audit trail filtered and exported, and the audit report.

Operators and admins only, not viewers: the trail names every account with the address it
logs in from, every peer with its address, and each failed login with the name that was
typed (now and then a password typed into the wrong field). That is what an ATNA audit
repository keeps from general users; a viewer still sees a study's own events on its page.

- The page lists the newest events first, :data:`AUDIT_PAGE` at a time (an "older" link
  goes on from the last row shown), filtered by event type, time (UTC), user name (any
  part), Study Instance UID (the events' own ``study_uid`` column) and outcome, all GET
  parameters so that a filtered view can be bookmarked or passed on.
- ``/console/audit.csv`` exports every matching event, read and written in batches so
  that a long trail never sits in memory; the export itself is audited (110101 Audit Log
  Used), as reading the trail out of the node is.
- The audit report (:func:`node.audit_report.write_audit_report`) of a chosen period is
  written under ``<data_dir>/<scheduler.reports_dir>/``, beside the scheduler's daily
  ones, and every report there is listed with links to view it or download it as a zip.
  Its files are served only from inside a report's folder, by names of one plain path
  part, resolved and checked again after any link is followed.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import and_, func, or_, select
from sqlalchemy.sql import Select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from config.settings import Settings
from node.web.auth import Accounts, client_address, message_page, require
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.models import AuditEvent, UserRole, utcnow

AUDIT_PAGE = 100
CSV_BATCH = 1000
REPORTS_LISTED = 20
REPORT_DEFAULT_DAYS = 30
# The report charts each week; past a year of weeks they stop being legible.
REPORT_MAX_DAYS = 366
CSV_COLUMNS = ("id", "occurred_at_utc", "event_id", "event_type", "outcome", "outcome_name",
               "user_name", "peer_address", "calling_ae_title", "called_ae_title",
               "study_uid", "sop_instance_uid", "message")
# What a report folder may hold and be served as; anything else there is not served.
REPORT_FILE_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png",
                     ".json": "application/json"}
# The report is our own escaped HTML; this still keeps any script or remote fetch out.
REPORT_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?$")
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def outcome_name(outcome: int) -> str:
    try:
        return Outcome(outcome).name.lower().replace("_", " ")
    except ValueError:
        return str(outcome)


def parse_moment(value: str, name: str, *, end_of_day: bool = False) -> datetime:
    """A UTC day (``YYYY-MM-DD``) or moment (``YYYY-MM-DDTHH:MM[:SS]``), naive UTC.

    A day given as the end of a period means the whole day: the next midnight.
    """
    try:
        if _DAY.match(value):
            day = datetime.strptime(value, "%Y-%m-%d")
            return day + timedelta(days=1) if end_of_day else day
        if _MOMENT.match(value):
            return datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        pass
    raise ValueError(f'{name} "{value}" is not a date (YYYY-MM-DD) or a time '
                     f'(YYYY-MM-DDTHH:MM), UTC')


@dataclass(frozen=True)
class AuditFilter:
    """The filter form, checked: empty fields are None, times naive UTC."""

    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    study_uid: str | None = None
    outcome: int | None = None
    # As typed, to show them back and to carry them into the CSV and "older" links.
    since_text: str | None = None
    until_text: str | None = None

    @classmethod
    def from_query(cls, query: Any) -> AuditFilter:  # noqa: ANN401 - Starlette QueryParams
        """Read the form; ValueError naming the field when a value is not usable."""
        def text(name: str) -> str | None:
            value = str(query.get(name, "")).strip()
            return value or None

        since_text, until_text = text("from"), text("to")
        since = parse_moment(since_text, "from") if since_text else None
        until = parse_moment(until_text, "to", end_of_day=True) if until_text else None
        if since is not None and until is not None and since >= until:
            raise ValueError(f'from "{since_text}" is not before to "{until_text}"')
        outcome = text("outcome")
        if outcome is not None and outcome not in {str(int(o)) for o in Outcome}:
            raise ValueError(f'outcome "{outcome}" is not one of '
                             f'{", ".join(str(int(o)) for o in Outcome)}')
        return cls(text("event_type"), since, until, text("user"), text("study_uid"),
                   int(outcome) if outcome is not None else None, since_text, until_text)

    def query_string(self, **extra: str) -> str:
        """The GET parameters of this filter (and ``extra``), for links that keep it."""
        pairs = {"event_type": self.event_type, "from": self.since_text,
                 "to": self.until_text, "user": self.user, "study_uid": self.study_uid,
                 "outcome": None if self.outcome is None else str(self.outcome), **extra}
        return urlencode({k: v for k, v in pairs.items() if v is not None})

    def described(self) -> str:
        chosen = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                  if not f.name.endswith("_text") and getattr(self, f.name) is not None]
        return ", ".join(chosen) or "no filter"


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def filtered(query: AuditFilter) -> Select:
    """Matching events, newest first (time, then id for events of the same instant)."""
    statement = select(AuditEvent)
    if query.event_type:
        statement = statement.where(AuditEvent.event_type == query.event_type)
    if query.since is not None:
        statement = statement.where(AuditEvent.occurred_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEvent.occurred_at < query.until)
    if query.user:
        statement = statement.where(AuditEvent.user_name.ilike(_like(query.user), escape="\\"))
    if query.study_uid:
        statement = statement.where(AuditEvent.study_uid == query.study_uid)
    if query.outcome is not None:
        statement = statement.where(AuditEvent.outcome == query.outcome)
    return statement.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())


def _older_than(statement: Select, occurred_at: datetime, event_id: int) -> Select:
    return statement.where(or_(AuditEvent.occurred_at < occurred_at,
                               and_(AuditEvent.occurred_at == occurred_at,
                                    AuditEvent.id < event_id)))


def _event_row(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.id, "at": event.occurred_at, "event_id": event.event_id,
            "type": event.event_type, "outcome": event.outcome,
            "outcome_name": outcome_name(event.outcome), "user": event.user_name,
            "address": event.peer_address, "calling": event.calling_ae_title,
            "called": event.called_ae_title, "study_uid": event.study_uid,
            "sop_uid": event.sop_instance_uid, "message": event.message}


def audit_listing(db: Database, query: AuditFilter, before: int | None) -> dict[str, Any]:
    """One page of matching events after the event ``before`` (the last one shown)."""
    statement = filtered(query)
    with db.session() as session:
        matching = session.scalar(select(func.count()).select_from(
            statement.order_by(None).subquery()))
        if before is not None:
            anchor = session.get(AuditEvent, before)
            if anchor is not None:
                statement = _older_than(statement, anchor.occurred_at, anchor.id)
        events = list(session.scalars(statement.limit(AUDIT_PAGE + 1)))
        types = list(session.scalars(select(AuditEvent.event_type).distinct()
                                     .order_by(AuditEvent.event_type)))
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return {"events": [_event_row(e) for e in events], "matching": matching or 0,
            "older": query.query_string(before=str(events[-1].id)) if more else None,
            "event_types": types}


def _cell(value: Any) -> Any:  # noqa: ANN401 - a CSV cell
    """A text cell that a spreadsheet would run as a formula gets a leading quote (OWASP);
    the audit rows themselves are unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_lines(db: Database, query: AuditFilter) -> Iterator[str]:
    """The header, then every matching event, newest first, a batch per session.

    Each batch goes on after the last row of the one before (time and id), so rows
    written meanwhile neither shift nor repeat what was already sent.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    statement = filtered(query)
    last: tuple[datetime, int] | None = None
    while True:
        page = statement if last is None else _older_than(statement, *last)
        with db.session() as session:
            events = list(session.scalars(page.limit(CSV_BATCH)))
            rows = [(e.id, e.occurred_at.isoformat(), e.event_id, e.event_type, e.outcome,
                     outcome_name(e.outcome), e.user_name, e.peer_address,
                     e.calling_ae_title, e.called_ae_title, e.study_uid,
                     e.sop_instance_uid, e.message) for e in events]
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([_cell(v) for v in row] for row in rows)
        yield buffer.getvalue()
        if len(rows) < CSV_BATCH:
            return
        last = (events[-1].occurred_at, events[-1].id)


# -- audit reports --------------------------------------------------------------------


def reports_root(settings: Settings) -> Path:
    """Where the scheduler writes its reports, and the console its own."""
    return Path(settings.storage.data_dir) / settings.scheduler.reports_dir


def report_file(root: Path, name: str, file: str) -> Path | None:
    """File ``file`` of the report folder ``name`` directly under ``root``, or None.

    Both are single plain path parts (no separator, no "..", nothing hidden), and the
    path, resolved with every link followed, must still be a file directly inside that
    folder, which is directly inside ``root``: a link pointing out is refused too.
    """
    if not (_PART.match(name) and _PART.match(file)):
        return None
    if Path(file).suffix not in REPORT_FILE_TYPES:
        return None
    root = root.resolve()
    folder = (root / name).resolve()
    path = (folder / file).resolve()
    if folder.parent != root or path.parent != folder or not path.is_file():
        return None
    return path


def report_folder(root: Path, name: str) -> Path | None:
    """The report folder ``name`` directly under ``root`` (same rules), or None."""
    if not _PART.match(name):
        return None
    root = root.resolve()
    folder = (root / name).resolve()
    if folder.parent != root or not folder.is_dir():
        return None
    return folder


def list_reports(root: Path, limit: int = REPORTS_LISTED) -> list[dict[str, Any]]:
    """The newest report folders (by when their HTML was written), with their period."""
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        page = folder / "audit-report.html"
        if _PART.match(folder.name) and folder.is_dir() and page.is_file():
            found.append((page.stat().st_mtime, folder))
    reports = []
    for written, folder in sorted(found, key=lambda pair: pair[0], reverse=True)[:limit]:
        period = None
        try:
            period = json.loads((folder / "audit-report.json").read_text())["period"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        reports.append({"name": folder.name,
                        "written": datetime.fromtimestamp(written, UTC).replace(
                            tzinfo=None, microsecond=0),
                        "since": (period or {}).get("since"),
                        "until": (period or {}).get("until")})
    return reports


def report_period(form: Any, now: datetime) -> tuple[datetime, datetime]:  # noqa: ANN401
    """[since, until) from the form's days or times; a period's end is at most ``now``."""
    since_text = str(form.get("from", "")).strip()
    until_text = str(form.get("to", "")).strip()
    if not since_text or not until_text:
        raise ValueError("give both ends of the period (from, to)")
    since = parse_moment(since_text, "from")
    until = min(parse_moment(until_text, "to", end_of_day=True), now)
    if since >= until:
        raise ValueError(f'from "{since_text}" is not before to "{until_text}" (and now)')
    if until - since > timedelta(days=REPORT_MAX_DAYS):
        raise ValueError(f"the period is longer than {REPORT_MAX_DAYS} days; the report "
                         f"charts each week, and more than a year of them is not legible")
    return since, until


def generate_report(settings: Settings, db: Database, since: datetime, until: datetime,
                    actor: str, address: str | None) -> str:
    """Write the report of [since, until) into a new folder; audited; the folder's name."""
    from model.vocabulary import DEFAULT_LABELS
    from node.audit_report import write_audit_report

    root = reports_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    now = utcnow()
    name = f"console-{now:%Y-%m-%d-%H%M%S-%f}"
    out = root / name
    out.mkdir()  # a new folder: never into another report's
    try:
        write_audit_report(db, since, until, out, DEFAULT_LABELS)
    except Exception as exc:
        with db.session() as session:
            record(session, AuditEventId.APPLICATION_ACTIVITY, "audit-report-generated",
                   Outcome.SERIOUS_FAILURE, f"audit report for {since:%Y-%m-%d %H:%M} to "
                   f"{until:%Y-%m-%d %H:%M} UTC failed: {type(exc).__name__}: {exc}",
                   peer_address=address, user_name=actor)
        raise
    with db.session() as session:
        record(session, AuditEventId.APPLICATION_ACTIVITY, "audit-report-generated",
               Outcome.SUCCESS, f"audit report for {since:%Y-%m-%d %H:%M} to "
               f"{until:%Y-%m-%d %H:%M} UTC written to {out} (console)",
               peer_address=address, user_name=actor)
    return name


def _zip_folder(folder: Path) -> bytes:
    """The report's files (the types served, nothing else) in one zip, in memory: a
    report is an HTML page, its JSON twin and a few charts, a few MiB at most."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            served = report_file(folder.parent, folder.name, path.name)
            if served is not None:
                archive.write(served, f"{folder.name}/{path.name}")
    return buffer.getvalue()


def audit_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    """/console/audit, its CSV, the report form, and the reports' files (operator+)."""
    settings, db = accounts_.settings, accounts_.db
    root = reports_root(settings)

    def read_filter(request: Request) -> tuple[AuditFilter, int | None]:
        query = AuditFilter.from_query(request.query_params)
        before = request.query_params.get("before", "").strip()
        if before and not before.isdigit():
            raise ValueError(f'before "{before}" is not an event id')
        return query, int(before) if before else None

    def page_context(query: AuditFilter, before: int | None) -> dict[str, Any]:
        today = utcnow().date()
        return {**audit_listing(db, query, before), "reports": list_reports(root),
                "report_from": today - timedelta(days=REPORT_DEFAULT_DAYS),
                "report_to": today}

    @require(UserRole.OPERATOR, accounts_, templates)
    async def audit_page(request: Request) -> Response:
        user = request.state.user
        try:
            query, before = read_filter(request)
        except ValueError as exc:
            return message_page(templates, request, 400, "Not filtered", str(exc), user)
        context = await run_in_threadpool(page_context, query, before)
        return templates.TemplateResponse(request, "audit.html", {
            "user": user, "csrf_token": user.csrf_token, "query": query, "before": before,
            "shown": AUDIT_PAGE, "outcomes": [(int(o), outcome_name(o)) for o in Outcome],
            "csv_query": query.query_string(), "notice": request.query_params.get("notice"),
            "made": request.query_params.get("made"), **context})

    def audit_export(query: AuditFilter, actor: str, address: str | None) -> None:
        with db.session() as session:
            record(session, AuditEventId.AUDIT_LOG_USED, "audit-exported", Outcome.SUCCESS,
                   f"audit trail exported as CSV ({query.described()}; console)",
                   peer_address=address, user_name=actor)

    @require(UserRole.OPERATOR, accounts_, templates)
    async def audit_csv(request: Request) -> Response:
        user = request.state.user
        try:
            query, _ = read_filter(request)
        except ValueError as exc:
            return message_page(templates, request, 400, "Not exported", str(exc), user)
        await run_in_threadpool(audit_export, query, user.name, client_address(request))
        name = f"cxr-node-audit-{utcnow():%Y%m%d-%H%M%S}.csv"
        # A plain iterator: Starlette reads each batch in its thread pool.
        return StreamingResponse(csv_lines(db, query), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition":
                                          f'attachment; filename="{name}"'})

    @require(UserRole.OPERATOR, accounts_, templates)
    async def make_report(request: Request) -> Response:
        user = request.state.user
        form = await request.form()
        try:
            since, until = report_period(form, utcnow().replace(microsecond=0))
        except ValueError as exc:
            return message_page(templates, request, 400, "No report written", str(exc), user)
        try:
            name = await run_in_threadpool(generate_report, settings, db, since, until,
                                           user.name, client_address(request))
        except Exception as exc:  # noqa: BLE001 - audited in generate_report; shown here
            return message_page(templates, request, 500, "No report written",
                                f"The report could not be written: {type(exc).__name__}: "
                                f"{exc}", user)
        notice = f"audit report for {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC written"
        return RedirectResponse(f"/console/audit?{urlencode({'notice': notice, 'made': name})}"
                                "#reports", status_code=303)

    def not_found(request: Request) -> Response:
        return message_page(templates, request, 404, "No such report file",
                            "No report holds this file.", request.state.user)

    @require(UserRole.OPERATOR, accounts_, templates)
    async def report_asset(request: Request) -> Response:
        path = await run_in_threadpool(report_file, root, request.path_params["name"],
                                       request.path_params["file"])
        if path is None:
            return not_found(request)
        return FileResponse(path, media_type=REPORT_FILE_TYPES[path.suffix], headers={
            "Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"})

    def zipped(name: str) -> bytes | None:
        folder = report_folder(root, name)
        return None if folder is None else _zip_folder(folder)

    @require(UserRole.OPERATOR, accounts_, templates)
    async def report_zip(request: Request) -> Response:
        name = request.path_params["name"]
        data = await run_in_threadpool(zipped, name)
        if data is None:
            return not_found(request)
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="cxr-node-audit-report-{name}.zip"'})

    return [
        Route("/console/audit", audit_page, methods=["GET"]),
        Route("/console/audit.csv", audit_csv, methods=["GET"]),
        Route("/console/audit/report", make_report, methods=["POST"]),
        Route("/console/reports/{name}.zip", report_zip, methods=["GET"]),
        Route("/console/reports/{name}/{file}", report_asset, methods=["GET"]),
    ]
