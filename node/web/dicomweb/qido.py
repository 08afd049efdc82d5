"""QIDO-RS (PS3.18 10.6): search the studies, series and instances the node holds.

Matching follows PS3.4 C.2.2.2 for the keys the node can answer: a value, ``*`` and ``?``
wildcards on text (case-insensitive, as most archives and OHIF's study list expect), UID
lists, and date ranges (``20260101-20260131``, ``-20260131``, ``20260101-``). An empty
value asks for the attribute without matching on it. Study-level keys run in SQL, with
``limit`` and ``offset``, so the study list stays one indexed query however many studies
the node keeps; series and instance keys are matched on the study's instances in Python
(a chest study has a handful). A key the node cannot match on is ignored and named in a
``Warning: 299`` header, as PS3.18 8.3.4.3 asks, never silently.

Each answer carries the attributes PS3.18 Table 10.6.3-3/-4/-5 requires at its level,
from the database where it has them and from the file headers otherwise (see
:mod:`.holdings`), empty when the files do not have them either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from node.web.auth import Accounts
from node.web.dicomweb.access import Reader, reader_only
from node.web.dicomweb.holdings import (
    RESULT_MODALITY,
    HeaderCache,
    HeldInstance,
    HeldStudy,
    UnreadableFile,
    held_instances,
    study_of,
)
from node.web.dicomweb.json_model import (
    MEDIA_TYPE,
    JsonDataset,
    UnknownAttribute,
    attribute_key,
    encode,
    keyword,
    values_json,
)
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.files import InvalidUID, validate_uid
from storage.models import Instance, ResultObject, Series, Study

LOGGER = logging.getLogger("cxr_node.web.dicomweb")
MAX_RESULTS = 1000  # per answer; more are paged with offset (PS3.18 8.3.4.4)
_DATE = re.compile(r"^\d{8}$")
_LIST = re.compile(r"[,\\]")
ONLINE = "ONLINE"
RETRIEVE_URL = "00081190"


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


# Attributes each level answers from the file header when the database lacks them
# (PS3.18 Table 10.6.3-3, -4, -5); "all" adds the rest of the level's modules.
STUDY_FROM_HEADER = ("StudyTime", "ReferringPhysicianName", "PatientBirthDate", "PatientSex",
                     "StudyID")
SERIES_FROM_HEADER = ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
INSTANCE_FROM_HEADER = ("InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")
STUDY_ALL = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
             "PatientWeight", "PatientComments", "InstitutionName", "PhysiciansOfRecord",
             "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
             "TimezoneOffsetFromUTC")
SERIES_ALL = ("SeriesDate", "SeriesTime", "Laterality", "BodyPartExamined", "ProtocolName",
              "PatientPosition", "Manufacturer", "StationName", "OperatorsName",
              "PerformingPhysicianName", "RequestAttributesSequence")


class BadQuery(ValueError):
    """A query PS3.18 8.3.4 does not allow (400 with this message)."""


@dataclass(frozen=True)
class Match:
    """One matching key: how a value of ``keyword`` is matched (PS3.4 C.2.2.2)."""

    keyword: str
    kind: str  # exact, wildcard, list, range
    values: tuple[str, ...]
    case_insensitive: bool = False

    def sql(self, column) -> Any:  # noqa: ANN001 - a SQLAlchemy column
        if self.kind == "list":
            return column.in_(self.values)
        if self.kind == "range":
            low, high = self.values
            bounds = ([column >= low] if low else []) + ([column <= high] if high else [])
            return and_(*bounds)
        if self.kind == "wildcard":
            return func.lower(column).like(_like(self.values[0]).lower(), escape="\\")
        if self.case_insensitive:
            return func.lower(column) == self.values[0].lower()
        return column == self.values[0]

    def test(self, value: object) -> bool:
        if value is None or value == "":
            return False
        text = str(value)
        if self.kind == "list":
            return text in self.values
        if self.kind == "range":
            low, high = self.values
            return (not low or text >= low) and (not high or text <= high)
        if self.kind == "wildcard":
            return re.fullmatch(_regex(self.values[0]), text, re.IGNORECASE | re.S) is not None
        if self.case_insensitive:
            return text.lower() == self.values[0].lower()
        return text == self.values[0]


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


# Keys the node matches on, by level, and how: text with wildcards, UID lists, ranges.
_TEXT, _PN, _UIDS, _DATES, _LISTED, _NUMBER = "text", "pn", "uids", "dates", "listed", "number"
STUDY_KEYS = {"StudyInstanceUID": _UIDS, "PatientID": _TEXT, "PatientName": _PN,
              "AccessionNumber": _TEXT, "StudyDate": _DATES, "StudyDescription": _TEXT,
              "ModalitiesInStudy": _LISTED}
SERIES_KEYS = {"SeriesInstanceUID": _UIDS, "Modality": _LISTED, "SeriesNumber": _NUMBER,
               "SeriesDescription": _TEXT}
INSTANCE_KEYS = {"SOPInstanceUID": _UIDS, "SOPClassUID": _UIDS}
_STUDY_COLUMNS = {"StudyInstanceUID": Study.study_uid, "PatientID": Study.patient_id,
                  "PatientName": Study.patient_name, "AccessionNumber": Study.accession_number,
                  "StudyDate": Study.study_date, "StudyDescription": Study.study_description}
_HELD: dict[str, Callable[[HeldInstance], object]] = {
    "SeriesInstanceUID": lambda h: h.series_uid, "Modality": lambda h: h.modality,
    "SeriesNumber": lambda h: h.series_number,
    "SeriesDescription": lambda h: h.series_description,
    "SOPInstanceUID": lambda h: h.sop_instance_uid, "SOPClassUID": lambda h: h.sop_class_uid}


def _match(name: str, how: str, value: str) -> Match:
    if how in (_UIDS, _LISTED):
        values = tuple(v.strip() for v in _LIST.split(value) if v.strip())
        if how == _UIDS:
            try:
                values = tuple(validate_uid(v, name) for v in values)
            except InvalidUID as exc:
                raise BadQuery(str(exc)) from None
        return Match(name, "list", values)
    if how == _DATES:
        low, dash, high = value.partition("-")
        for part in (low, high):
            if part and not _DATE.match(part):
                raise BadQuery(f'{name} "{value}" is not a date (YYYYMMDD) or a range of dates '
                               "(YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-)")
        if not dash:
            return Match(name, "exact", (value,))
        return Match(name, "range", (low, high))
    if how == _NUMBER:
        if not value.strip().lstrip("-").isdigit():
            raise BadQuery(f'{name} "{value}" is not a number')
        return Match(name, "exact", (str(int(value)),))
    kind = "wildcard" if ("*" in value or "?" in value) else "exact"
    return Match(name, kind, (value,), case_insensitive=how == _PN)


@dataclass
class Query:
    """A QIDO-RS query string, parsed and checked (PS3.18 8.3.4)."""

    study: list[Match] = field(default_factory=list)
    held: list[Match] = field(default_factory=list)
    include: set[str] = field(default_factory=set)  # attribute keys ("00100020")
    include_all: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def parse_query(items: list[tuple[str, str]], level: Level) -> Query:
    query = Query()
    keys = dict(STUDY_KEYS)
    if level != Level.STUDY:
        keys.update(SERIES_KEYS)
    if level == Level.INSTANCE:
        keys.update(INSTANCE_KEYS)
    limit: int | None = None
    for name, value in items:
        if name == "limit":
            limit = _count(name, value, minimum=1)
        elif name == "offset":
            query.offset = _count(name, value, minimum=0)
        elif name == "includefield":
            for part in (p.strip() for p in value.split(",")):
                if part == "all":
                    query.include_all = True
                elif part:
                    query.include.add(_key(part))
        elif name == "fuzzymatching":
            if value.lower() == "true":
                query.warnings.append("fuzzymatching is not supported: literal matching "
                                      "was performed (names are matched case-insensitively)")
        else:
            if "." in name:
                query.warnings.append(f"{name}: sequence matching is not supported; "
                                      "ignored")
                continue
            key = _key(name)
            known = keyword(key)
            query.include.add(key)  # a matching key is also returned (PS3.18 8.3.4.1)
            if known not in keys:
                query.warnings.append(f"{known} is not supported for matching at the "
                                      f"{level} level; ignored")
            elif value != "":  # an empty value: universal matching, return the attribute
                match = _match(known, keys[known], value)
                (query.study if known in STUDY_KEYS else query.held).append(match)
    if limit is not None and limit > MAX_RESULTS:
        query.warnings.append(f"limit {limit} is above this node's maximum; {MAX_RESULTS} "
                              "results at most per answer, ask for more with offset")
    query.limit = min(limit or MAX_RESULTS, MAX_RESULTS)
    return query


def _key(name: str) -> str:
    try:
        return attribute_key(name)
    except UnknownAttribute as exc:
        raise BadQuery(str(exc)) from None


def _count(name: str, value: str, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise BadQuery(f'{name} "{value}" is not a whole number >= {minimum}')
    return int(value)


class NotFound(LookupError):
    """The study or series the path names is not held (404)."""


@dataclass
class Answer:
    models: list[JsonDataset]
    warnings: list[str]


class Search:
    """One QIDO-RS search against the node's database and files."""

    def __init__(self, session: Session, cache: HeaderCache, base_url: str) -> None:
        self.session = session
        self.cache = cache
        self.base = base_url.rstrip("/")

    def run(self, level: Level, query: Query, study_uid: str | None = None,
            series_uid: str | None = None) -> Answer:
        conditions = [m.sql(_STUDY_COLUMNS[m.keyword]) for m in query.study
                      if m.keyword in _STUDY_COLUMNS]
        conditions += [_modalities(m) for m in query.study if m.keyword == "ModalitiesInStudy"]
        conditions.append(or_(_has_received(), _has_results()))
        if study_uid is not None:
            conditions.append(Study.study_uid == study_uid)
        statement = (select(Study).where(*conditions)
                     .order_by(Study.study_date.desc().nulls_last(), Study.id.desc()))
        warnings = list(query.warnings)
        if level == Level.STUDY:
            rows = list(self.session.scalars(
                statement.offset(query.offset).limit(query.limit + 1)))
            if len(rows) > query.limit:
                rows = rows[:query.limit]
                warnings.append("there are more results than this answer holds; ask again "
                                f"with offset={query.offset + query.limit}")
            studies = [study_of(row) for row in rows]
            by_study: dict[int, list[HeldInstance]] = {}
            for held in held_instances(self.session, studies, self.cache):
                by_study.setdefault(held.study.id, []).append(held)
            context = _Context(self, query, by_study, {})
            return Answer([context.study(s) for s in studies if s.id in by_study], warnings)

        for m in query.held:  # cheap to push down: a UID list names few studies
            if m.keyword == "SeriesInstanceUID":
                conditions.append(or_(_has_received(Series.series_uid.in_(m.values)),
                                      _has_results(ResultObject.series_instance_uid
                                                   .in_(m.values))))
            elif m.keyword == "SOPInstanceUID":
                conditions.append(or_(_has_received(Instance.sop_instance_uid.in_(m.values)),
                                      _has_results(ResultObject.sop_instance_uid
                                                   .in_(m.values))))
        studies = [study_of(row) for row in self.session.scalars(statement.where(*conditions))]
        if study_uid is not None and not studies:
            raise NotFound(f"study {study_uid} is not held by this node")
        held = held_instances(self.session, studies, self.cache)
        by_study: dict[int, list[HeldInstance]] = {}
        by_series: dict[str, list[HeldInstance]] = {}
        for instance in held:
            by_study.setdefault(instance.study.id, []).append(instance)
            by_series.setdefault(instance.series_uid, []).append(instance)
        if series_uid is not None and series_uid not in by_series:
            raise NotFound(f"series {series_uid} of study {study_uid} is not held by this node")
        scope = by_series[series_uid] if series_uid is not None else held
        matching = [h for h in scope if all(m.test(_HELD[m.keyword](h)) for m in query.held)]
        context = _Context(self, query, by_study, by_series)
        if level == Level.SERIES:
            # in the order held_instances gives: study, received before results, number
            chosen = [by_series[uid] for uid in dict.fromkeys(h.series_uid for h in matching)]
            page = self._page(chosen, query, warnings)
            return Answer([context.series(members[0], with_study=study_uid is None)
                           for members in page], warnings)
        page = self._page(matching, query, warnings)
        return Answer([context.instance(h, with_study=study_uid is None,
                                        with_series=series_uid is None) for h in page],
                      warnings)

    @staticmethod
    def _page(items: list, query: Query, warnings: list[str]) -> list:
        page = items[query.offset:query.offset + query.limit]
        more = len(items) - query.offset - len(page)
        if more > 0:
            warnings.append(f"there are {more} additional results that can be requested "
                            f"(offset={query.offset + len(page)})")
        return page

    def header(self, held: HeldInstance) -> JsonDataset:
        try:
            return self.cache.header(held).model
        except UnreadableFile as exc:
            LOGGER.error("QIDO-RS answers %s without its file's attributes: %s",
                         held.sop_instance_uid, exc)
            return {}

    def url(self, *uids: str) -> str:
        path = "/".join(f"{level}/{uid}" for level, uid
                        in zip(("studies", "series", "instances"), uids, strict=False))
        return f"{self.base}/{path}"


class _Context:
    """The attributes of each level, built once per study and series of one answer."""

    def __init__(self, search: Search, query: Query, by_study: dict[int, list[HeldInstance]],
                 by_series: dict[str, list[HeldInstance]]) -> None:
        self.search, self.query = search, query
        self.by_study, self.by_series = by_study, by_series
        self._studies: dict[int, JsonDataset] = {}
        self._series: dict[str, JsonDataset] = {}

    @staticmethod
    def _representative(instances: list[HeldInstance]) -> HeldInstance:
        """A received image speaks for the study better than the node's own report."""
        return next((h for h in instances if not h.ours), instances[0])

    def study_model(self, study: HeldStudy) -> JsonDataset:
        if study.id in self._studies:
            return self._studies[study.id]
        instances = self.by_study[study.id]
        header = self.search.header(self._representative(instances))
        model = values_json(
            StudyInstanceUID=study.study_uid, StudyDate=study.study_date,
            AccessionNumber=study.accession_number, PatientName=study.patient_name,
            PatientID=study.patient_id, StudyDescription=study.study_description,
            ModalitiesInStudy=sorted({h.modality for h in instances if h.modality}),
            NumberOfStudyRelatedSeries=len({h.series_uid for h in instances}),
            NumberOfStudyRelatedInstances=len(instances), InstanceAvailability=ONLINE,
            RetrieveURL=self.search.url(study.study_uid))
        _from_header(model, header, STUDY_FROM_HEADER, required=True)
        if self.query.include_all:
            _from_header(model, header, STUDY_ALL)
        self._studies[study.id] = model
        return model

    def series_model(self, series_uid: str) -> JsonDataset:
        if series_uid in self._series:
            return self._series[series_uid]
        members = self.by_series[series_uid]
        first = members[0]
        header = self.search.header(first)
        model = values_json(
            SeriesInstanceUID=first.series_uid, Modality=first.modality,
            SeriesNumber=first.series_number, SeriesDescription=first.series_description,
            NumberOfSeriesRelatedInstances=len(members), InstanceAvailability=ONLINE,
            RetrieveURL=self.search.url(first.study.study_uid, first.series_uid))
        _from_header(model, header, SERIES_FROM_HEADER, required=True)
        if self.query.include_all:
            _from_header(model, header, SERIES_ALL)
        self._series[series_uid] = model
        return model

    def study(self, study: HeldStudy) -> JsonDataset:
        model = dict(self.study_model(study))
        _included(model, self.search.header(self._representative(self.by_study[study.id])),
                  self.query)
        return dict(sorted(model.items()))

    def series(self, first: HeldInstance, with_study: bool) -> JsonDataset:
        model = dict(self.series_model(first.series_uid))
        if with_study:  # PS3.18 10.6.3.3: a search across studies says which study
            model = {**_without_url(self.study_model(first.study)), **model}
        _included(model, self.search.header(first), self.query)
        return dict(sorted(model.items()))

    def instance(self, held: HeldInstance, with_study: bool, with_series: bool) -> JsonDataset:
        header = self.search.header(held)
        model = values_json(
            SOPClassUID=held.sop_class_uid, SOPInstanceUID=held.sop_instance_uid,
            InstanceAvailability=ONLINE,
            RetrieveURL=self.search.url(held.study.study_uid, held.series_uid,
                                        held.sop_instance_uid))
        _from_header(model, header, INSTANCE_FROM_HEADER, required=True)
        if with_series:
            model = {**_without_url(self.series_model(held.series_uid)), **model}
        if with_study:
            model = {**_without_url(self.study_model(held.study)), **model}
        if self.query.include_all:
            model = {**header, **model}
        _included(model, header, self.query)
        return dict(sorted(model.items()))


def _without_url(model: JsonDataset) -> JsonDataset:
    """A higher level's attributes for a lower level's answer: its own RetrieveURL stays."""
    return {key: value for key, value in model.items() if key != RETRIEVE_URL}


def _from_header(model: JsonDataset, header: JsonDataset, names: tuple[str, ...],
                 required: bool = False) -> None:
    for name in names:
        key = attribute_key(name)
        if key in header:
            model[key] = header[key]
        elif required:
            model[key] = {"vr": dictionary_VR(name)}


def _included(model: JsonDataset, header: JsonDataset, query: Query) -> None:
    for key in query.include:
        if key not in model and key in header:
            model[key] = header[key]


def _has_received(*where) -> Any:  # noqa: ANN002 - SQLAlchemy clauses
    return exists(select(Instance.id).join(Series, Instance.series_id == Series.id)
                  .where(Series.study_id == Study.id, Instance.purged_at.is_(None), *where))


def _has_results(*where) -> Any:  # noqa: ANN002
    return exists(select(ResultObject.id).where(ResultObject.study_id == Study.id, *where))


def _modalities(match: Match) -> Any:
    """ModalitiesInStudy: a study with any series of one of the modalities (PS3.4 C.6.1.1.3)."""
    kinds = [kind for kind, modality in RESULT_MODALITY.items() if modality in match.values]
    received = _has_received(Series.modality.in_(match.values))
    return or_(received, _has_results(ResultObject.kind.in_(kinds))) if kinds else received


def _accepts_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return True
    ranges = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(r in (MEDIA_TYPE, "application/json", "application/*", "*/*") for r in ranges)


def warning_header(warnings: list[str]) -> dict[str, str]:
    """PS3.18 8.3.4.3: ``Warning: 299 <agent>: "<text>"``, one per warning."""
    if not warnings:
        return {}
    texts = [w.replace('"', "'") for w in warnings]
    return {"Warning": ", ".join(f'299 cxr-node "{text}"' for text in texts)}


def qido_routes(accounts: Accounts, cache: HeaderCache) -> list[Route]:
    """The six QIDO-RS resources of PS3.18 10.6.1, each behind :func:`reader_only`."""
    guard = reader_only(accounts)
    db: Database = accounts.db

    def search(request: Request, level: Level, study_uid: str | None,
               series_uid: str | None) -> Response:
        try:
            for uid, name in ((study_uid, "Study Instance UID"),
                              (series_uid, "Series Instance UID")):
                if uid is not None:
                    validate_uid(uid, name)
            query = parse_query(request.query_params.multi_items(), level)
        except (BadQuery, InvalidUID) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        reader: Reader = request.state.reader
        try:
            with db.session() as session:
                answer = Search(session, cache, f"{request.base_url}dicomweb").run(
                    level, query, study_uid, series_uid)
                record(session, AuditEventId.QUERY, "dicomweb-query", Outcome.SUCCESS,
                       f"QIDO-RS {level} search ({len(answer.models)} results): "
                       f"{request.url.path}?{request.url.query}"[:500],
                       peer_address=reader.address, user_name=reader.name,
                       study_uid=study_uid)
        except NotFound as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return Response(encode(answer.models), media_type=MEDIA_TYPE,
                        headers=warning_header(answer.warnings))

    def endpoint(level: Level) -> Callable:
        @guard
        async def query(request: Request) -> Response:
            if not _accepts_json(request):
                return PlainTextResponse(f"QIDO-RS answers {MEDIA_TYPE} only\n",
                                         status_code=406)
            params = request.path_params
            return await run_in_threadpool(search, request, level, params.get("study"),
                                           params.get("series"))

        query.__name__ = f"qido_{level}"
        return query

    studies, series, instances = (endpoint(level) for level in Level)
    return [
        Route("/dicomweb/studies", studies, methods=["GET"]),
        Route("/dicomweb/series", series, methods=["GET"]),
        Route("/dicomweb/instances", instances, methods=["GET"]),
        Route("/dicomweb/studies/{study}/series", series, methods=["GET"]),
        Route("/dicomweb/studies/{study}/instances", instances, methods=["GET"]),
        Route("/dicomweb/studies/{study}/series/{series}/instances", instances,
              methods=["GET"]),
    ]
