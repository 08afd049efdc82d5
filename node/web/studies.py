"""The console's Studies pages: search the studies, open one, analyse it again.

A study's state on these pages is read from the study row and its latest job:

- ``received``: images are arriving or the quiet period is not over, or the study never
  got a job (it held only results or reports);
- ``queued`` / ``running`` / ``failed``: the latest job's state;
- ``analysed``: the latest job is done and the gate let at least one image through;
- ``not analysed``: the latest job is done and the gate skipped every image (the node
  sent a "not analysed" SR saying why).

The search is by patient ID, patient's name, accession number, study date and state. A name
is matched word by word (``doe jo`` finds ``DOE^JOHN``), as a person types it, not as DICOM
spells it with carets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, false, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from node.web.auth import Accounts, client_address, message_page, require
from node.web.preview import NoPreview, preview_png
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.files import DicomFileStore
from storage.jobs import queue_study_again
from storage.models import (
    AuditEvent,
    FindingRecord,
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Series,
    Study,
    StudyState,
    Transfer,
    UserRole,
)

STUDIES_SHOWN = 200
AUDIT_SHOWN = 200
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_NAME_WORDS = re.compile(r"[\s,^=]+")


class ShownState(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    ANALYSED = "analysed"
    NOT_ANALYSED = "not analysed"
    FAILED = "failed"


@dataclass(frozen=True)
class StudySearch:
    """The search form, checked: empty fields are None; dates as DICOM DA (YYYYMMDD)."""

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    state: ShownState | None = None

    @classmethod
    def from_query(cls, query: Any) -> StudySearch:  # noqa: ANN401 - Starlette QueryParams
        """Read the form; ValueError naming the field when a value is not usable."""
        def text(name: str) -> str | None:
            value = str(query.get(name, "")).strip()
            return value or None

        def date(name: str) -> str | None:
            value = text(name)
            if value is None:
                return None
            match = _DATE.match(value)
            if not match:
                raise ValueError(f'{name} "{value}" is not a date (YYYY-MM-DD)')
            return "".join(match.groups())

        state = text("state")
        if state is not None and state not in set(ShownState):
            raise ValueError(f'state "{state}" is not one of '
                             f'{", ".join(s.value for s in ShownState)}')
        return cls(text("patient_id"), text("patient_name"), text("accession_number"),
                   date("date_from"),
                   date("date_to"), ShownState(state) if state else None)


def _like(value: str) -> str:
    """A LIKE pattern matching ``value`` anywhere, its own % and _ taken literally."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def shown_state(study_state: str, job_state: str | None, any_analysed: bool) -> ShownState:
    if study_state == StudyState.RECEIVING or job_state is None:
        return ShownState.RECEIVED
    if job_state == JobState.DONE:
        return ShownState.ANALYSED if any_analysed else ShownState.NOT_ANALYSED
    return ShownState(str(job_state))


def search_studies(session: Session, search: StudySearch,
                   limit: int = STUDIES_SHOWN) -> list[dict[str, Any]]:
    """Matching studies, newest (last image) first, with images, state and finding count."""
    latest_id = (select(func.max(Job.id)).where(Job.study_id == Study.id)
                 .correlate(Study).scalar_subquery())
    latest = aliased(Job)
    any_analysed = exists().where(ImageAnalysis.job_id == latest.id,
                                  ImageAnalysis.analysed.is_(True))
    images = (select(func.count(Instance.id)).join(Series)
              .where(Series.study_id == Study.id, Instance.produced_by_node.is_(False))
              .correlate(Study).scalar_subquery())
    findings = (select(func.count(FindingRecord.id)).where(FindingRecord.job_id == latest.id)
                .correlate(latest).scalar_subquery())
    query = (select(Study, latest.state, any_analysed.label("any_analysed"),
                    images.label("images"), findings.label("findings"))
             .outerjoin(latest, latest.id == latest_id))
    if search.patient_id:
        query = query.where(Study.patient_id.ilike(_like(search.patient_id), escape="\\"))
    if search.patient_name:
        for word in _NAME_WORDS.split(search.patient_name):
            if word:
                query = query.where(Study.patient_name.ilike(_like(word), escape="\\"))
    if search.accession_number:
        query = query.where(Study.accession_number.ilike(_like(search.accession_number),
                                                         escape="\\"))
    if search.date_from:
        query = query.where(Study.study_date >= search.date_from)
    if search.date_to:
        query = query.where(Study.study_date <= search.date_to)
    if search.state is not None:
        complete = and_(Study.state == StudyState.COMPLETE, latest.id.is_not(None))
        query = query.where({
            ShownState.RECEIVED: or_(Study.state == StudyState.RECEIVING, latest.id.is_(None)),
            ShownState.QUEUED: and_(complete, latest.state == JobState.QUEUED),
            ShownState.RUNNING: and_(complete, latest.state == JobState.RUNNING),
            ShownState.FAILED: and_(complete, latest.state == JobState.FAILED),
            ShownState.ANALYSED: and_(complete, latest.state == JobState.DONE, any_analysed),
            ShownState.NOT_ANALYSED: and_(complete, latest.state == JobState.DONE,
                                          ~any_analysed),
        }.get(search.state, false()))
    rows = session.execute(query.order_by(Study.last_instance_at.desc(), Study.id.desc())
                           .limit(limit)).all()
    return [{"study_uid": study.study_uid, "patient_id": study.patient_id,
             "patient_name": shown_name(study.patient_name),
             "accession_number": study.accession_number, "study_date": _shown_date(
                 study.study_date), "description": study.study_description,
             "images": count, "findings": found if job_state == JobState.DONE else None,
             "state": shown_state(study.state, job_state, bool(analysed)),
             "last_instance_at": study.last_instance_at}
            for study, job_state, analysed, count, found in rows]


def shown_name(value: str | None) -> str | None:
    """DICOM PN ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`` as ``FAMILY, GIVEN MIDDLE``.

    Only the first (alphabetic) component group is shown; ideographic and phonetic groups
    after ``=`` are left out.
    """
    if not value:
        return None
    family, *rest = value.split("=")[0].split("^")
    given = " ".join(part for part in rest[:2] if part)
    return f"{family}, {given}" if family and given else family or given or None


def _shown_date(value: str | None) -> str | None:
    """DICOM DA YYYYMMDD as YYYY-MM-DD; anything else as it is."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """Everything the study page shows, or None for an unknown Study Instance UID."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    jobs = list(session.scalars(select(Job).where(Job.study_id == study.id)
                                .order_by(Job.id.desc())))
    latest = jobs[0] if jobs else None
    decisions = {}
    findings = []
    if latest is not None:
        decisions = {a.instance_id: a for a in session.scalars(
            select(ImageAnalysis).where(ImageAnalysis.job_id == latest.id))}
        findings = [
            {"label": f.label, "meaning": f.code_meaning, "score": f.score,
             "box": (f.x1, f.y1, f.x2, f.y2), "sop_uid": sop_uid,
             "model": f"{f.model_name} {f.model_version}"}
            for f, sop_uid in session.execute(
                select(FindingRecord, Instance.sop_instance_uid)
                .join(Instance, Instance.id == FindingRecord.instance_id)
                .where(FindingRecord.job_id == latest.id)
                .order_by(FindingRecord.score.desc()))]
    instances = []
    for instance, series in session.execute(
            select(Instance, Series).join(Series).where(Series.study_id == study.id)
            .order_by(Series.series_number, Series.id, Instance.id)):
        decision = decisions.get(instance.id)
        instances.append({
            "sop_uid": instance.sop_instance_uid, "series_uid": series.series_uid,
            "series_number": series.series_number, "modality": series.modality,
            "body_part": series.body_part_examined, "size": instance.size_bytes,
            "received_at": instance.received_at, "ours": instance.produced_by_node,
            "purged": instance.purged_at is not None,
            "decision": None if decision is None else
            "analysed" if decision.analysed else "skipped",
            "reason": decision.skip_reason if decision is not None else None})
    results = []
    for result in session.scalars(select(ResultObject).where(
            ResultObject.study_id == study.id).order_by(ResultObject.id)):
        transfers = list(session.scalars(select(Transfer).where(
            Transfer.result_id == result.id).order_by(Transfer.destination)))
        results.append({"kind": str(result.kind), "sop_uid": result.sop_instance_uid,
                        "job_id": result.job_id, "created_at": result.created_at,
                        "transfers": [{"destination": t.destination, "state": str(t.state),
                                       "attempts": t.attempts, "sent_at": t.sent_at,
                                       "last_error": t.last_error} for t in transfers]})
    audit = list(session.scalars(select(AuditEvent).where(AuditEvent.study_uid == study_uid)
                                 .order_by(AuditEvent.id.desc()).limit(AUDIT_SHOWN)))
    any_analysed = any(d.analysed for d in decisions.values())
    return {
        "study": {"study_uid": study.study_uid, "patient_id": study.patient_id,
                  "patient_name": shown_name(study.patient_name),
                  "accession_number": study.accession_number,
                  "study_date": _shown_date(study.study_date),
                  "description": study.study_description, "generation": study.generation,
                  "first_received_at": study.first_received_at,
                  "last_instance_at": study.last_instance_at,
                  "receiving": study.state == StudyState.RECEIVING,
                  "state": shown_state(study.state, latest.state if latest else None,
                                       any_analysed)},
        "jobs": [{"id": j.id, "generation": j.study_generation, "state": str(j.state),
                  "created_at": j.created_at, "finished_at": j.finished_at,
                  "attempts": j.attempts, "error": j.error} for j in jobs],
        "instances": instances, "findings": findings, "results": results,
        "audit": [{"at": e.occurred_at, "event_id": e.event_id, "type": e.event_type,
                   "outcome": e.outcome, "user": e.user_name, "calling": e.calling_ae_title,
                   "address": e.peer_address, "sop_uid": e.sop_instance_uid,
                   "message": e.message} for e in audit],
        "audit_shown": AUDIT_SHOWN,
    }


class NotQueued(Exception):
    """Why a study was not queued again; the text is shown to the operator."""


def analyse_again(db: Database, study_uid: str, actor: str, address: str | None) -> int:
    """Queue a new job for a complete study, audited with ``actor``; the new job's id.

    Refused while the study is still receiving (its job is queued once it is quiet) or
    while a job of it waits or runs (that job reads the same images).
    """
    try:
        with db.session() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid))
            if study is None:
                raise LookupError(study_uid)
            if study.state != StudyState.COMPLETE:
                raise NotQueued("The study is still receiving images; it is analysed once "
                                "it has been quiet.")
            busy = session.scalar(select(Job.id).where(
                Job.study_id == study.id, Job.state.in_([JobState.QUEUED, JobState.RUNNING])))
            if busy is not None:
                raise NotQueued(f"Job {busy} of this study is queued or running already.")
            job = queue_study_again(session, study)
            if job is None:
                raise NotQueued("The study changed meanwhile; reload and try again.")
            session.flush()
            record(session, AuditEventId.APPLICATION_ACTIVITY, "study-requeued",
                   Outcome.SUCCESS, f"analysis queued again (job {job.id}, generation "
                   f"{study.generation}; console)", peer_address=address,
                   study_uid=study_uid, user_name=actor)
            return job.id
    except IntegrityError as exc:
        raise NotQueued("Another request queued this study at the same moment.") from exc


def study_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    db = accounts_.db
    store = DicomFileStore(accounts_.settings.storage.data_dir)

    def search(query: StudySearch) -> list[dict[str, Any]]:
        with db.session() as session:
            return search_studies(session, query)

    @require(UserRole.VIEWER, accounts_, templates)
    async def studies(request: Request) -> Response:
        user = request.state.user
        try:
            query = StudySearch.from_query(request.query_params)
        except ValueError as exc:
            return message_page(templates, request, 400, "Not searched", str(exc), user)
        rows = await run_in_threadpool(search, query)
        return templates.TemplateResponse(request, "studies.html", {
            "user": user, "query": query, "rows": rows, "shown": STUDIES_SHOWN,
            "states": list(ShownState), "searched": bool(request.query_params)})

    def detail(study_uid: str) -> dict[str, Any] | None:
        with db.session() as session:
            return study_detail(session, study_uid)

    @require(UserRole.VIEWER, accounts_, templates)
    async def study(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(detail, request.path_params["study_uid"])
        if context is None:
            return message_page(templates, request, 404, "No such study",
                                "No study with this Study Instance UID is stored here.", user)
        return templates.TemplateResponse(request, "study.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    @require(UserRole.OPERATOR, accounts_, templates)
    async def again(request: Request) -> Response:
        user = request.state.user
        study_uid = request.path_params["study_uid"]
        try:
            job_id = await run_in_threadpool(analyse_again, db, study_uid, user.name,
                                             client_address(request))
        except LookupError:
            return message_page(templates, request, 404, "No such study",
                                "No study with this Study Instance UID is stored here.", user)
        except NotQueued as exc:
            return message_page(templates, request, 409, "Not queued", str(exc), user)
        return RedirectResponse(f"/console/studies/{study_uid}?notice=job+{job_id}+queued",
                                status_code=303)

    def sc_file(study_uid: str, sop_uid: str) -> Path | None:
        """The file of this study's SC ``sop_uid``; None if there is no such SC."""
        with db.session() as session:
            path = session.scalar(select(ResultObject.path).join(Study).where(
                Study.study_uid == study_uid, ResultObject.sop_instance_uid == sop_uid,
                ResultObject.kind == ResultKind.SC))
        return None if path is None else store.absolute(path)

    def render(study_uid: str, sop_uid: str) -> bytes | None:
        path = sc_file(study_uid, sop_uid)
        return None if path is None else preview_png(path)

    @require(UserRole.VIEWER, accounts_, templates)
    async def preview(request: Request) -> Response:
        params = request.path_params
        try:
            png = await run_in_threadpool(render, params["study_uid"], params["sop_uid"])
        except NoPreview as exc:
            return PlainTextResponse(f"no preview: {exc}\n", status_code=410)
        if png is None:
            return PlainTextResponse("no such result image in this study\n", status_code=404)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    return [
        Route("/console/studies", studies, methods=["GET"]),
        Route("/console/studies/{study_uid}/preview/{sop_uid}.png", preview, methods=["GET"]),
        Route("/console/studies/{study_uid}", study, methods=["GET"]),
        Route("/console/studies/{study_uid}/analyse", again, methods=["POST"]),
    ]
