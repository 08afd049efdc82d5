"""From a received byte stream to a durable, registered instance, or a clear refusal.

This is the C-STORE handler's logic without the network: it decides the status the
sender gets. Success is answered only after the file is fsynced under its final name and
its row committed; every refusal names its reason, which goes back on the wire as the
Error Comment, into the log and into the audit trail. STOW-RS (node.web.dicomweb) stores
through the same code: the same checks, limits, duplicates policy and audit rows, with
the status as each instance's Failure Reason.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import pydicom
from pynetdicom.presentation import AllStoragePresentationContexts
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from node.pixel_data import PixelDataProblem, check_pixel_data
from node.statuses import StoreStatus
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore, IncomingFile, InvalidUID, validate_uid
from storage.intake_queue import queue_label_intake
from storage.models import PATIENT_NAME_LENGTH, Instance, Series, Study, StudyState, utcnow

LOGGER = logging.getLogger("cxr_node.ingest")
_REGISTER_ATTEMPTS = 3
_DUPLICATE = "duplicate with identical content: acknowledged, not stored again"
# PS3.4 B.5: SR (and Key Object Selection) storage classes under .88, presentation states
# under .11; such objects never (re)start an analysis of their study.
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_DOCUMENT_CLASS_PREFIXES = (_SR_CLASS_PREFIX, "1.2.840.10008.5.1.4.1.1.11.")
# The storage SOP classes the listener negotiates a presentation context for; a request
# without a command (STOW-RS) is held to the same list, since no negotiation filtered it.
STORAGE_SOP_CLASSES = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)


class _Registered(StrEnum):
    STORED = "stored"
    REPLACED = "replaced an earlier copy with different content"
    DUPLICATE = _DUPLICATE


@dataclass(frozen=True)
class StoreRequest:
    """What the request that carried an instance says about it, and who sent it.

    A C-STORE names the instance in its command (Affected SOP Class and Instance UID). A
    STOW-RS part has no command: its UIDs are None, and the part's own File Meta
    Information (PS3.10 7.1: Media Storage SOP Class and Instance UID) is held to the data
    set instead. There ``calling_ae_title`` is the DICOMweb peer's configured name.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    # Named in the audit rows of refusals: "C-STORE" or "STOW-RS".
    service: str = "C-STORE"
    # STOW-RS to /studies/{study}: the study every instance of the request must belong to.
    study_uid: str | None = None


@dataclass(frozen=True)
class StoreResult:
    status: StoreStatus
    message: str
    study_uid: str | None = None
    # The data set's own UIDs, where it could be read (a STOW-RS response lists them).
    series_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class _Header:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    produced_by_node: bool
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    series_number: int | None
    # File Meta Information (0002,0002) and (0002,0003); None where absent.
    media_sop_class_uid: str | None = None
    media_sop_instance_uid: str | None = None
    # Why the Pixel Data cannot be the image its attributes describe; None: it can.
    pixel_problem: PixelDataProblem | None = None

    @property
    def is_document(self) -> bool:
        """An SR, presentation state or key object: read by people, not by the detector."""
        return self.sop_class_uid.startswith(_DOCUMENT_CLASS_PREFIXES)

    @property
    def triggers_analysis(self) -> bool:
        return not self.produced_by_node and not self.is_document

    @property
    def may_hold_labels(self) -> bool:
        """An SR from a peer: perhaps a radiologist's labels (the label intake decides)."""
        return self.sop_class_uid.startswith(_SR_CLASS_PREFIX) and not self.produced_by_node

    def result(self, message: str) -> StoreResult:
        return StoreResult(StoreStatus.SUCCESS, message, self.study_uid, self.series_uid,
                           self.sop_class_uid, self.sop_instance_uid)


class _Refusal(Exception):
    """``message`` goes back as the Error Comment; ``detail`` only to the audit and the log."""

    def __init__(self, status: StoreStatus, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        # The data set's header, when the refusal came after it was read.
        self.header: _Header | None = None


class ActiveStudies:
    """Studies that an open association of this process is sending to.

    The completion monitor never completes such a study, however long the sender
    pauses between instances.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def hold(self, study_uid: str) -> None:
        with self._lock:
            self._counts[study_uid] += 1

    def release(self, study_uid: str) -> None:
        with self._lock:
            self._counts[study_uid] -= 1
            if self._counts[study_uid] <= 0:
                del self._counts[study_uid]

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._counts)


def _text(ds: pydicom.Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or str(value) == "":
        return None
    return str(value)[:limit]


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _uid(ds: pydicom.Dataset, keyword: str, name: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise _Refusal(StoreStatus.UID_MISSING, f"{name} ({keyword}) is missing")
    try:
        return validate_uid(value, name)
    except InvalidUID as exc:
        raise _Refusal(StoreStatus.UID_INVALID, str(exc)) from None


def _envelope_uid(value: str | None, name: str) -> str:
    """A File Meta Information UID that stands in for a command's (STOW-RS)."""
    if value is None:
        raise _Refusal(StoreStatus.UID_MISSING, f"{name} is missing")
    try:
        return validate_uid(value, name)
    except InvalidUID as exc:
        raise _Refusal(StoreStatus.UID_INVALID, str(exc)) from None


class Ingest:
    """Validates, places and registers received instances."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 active: ActiveStudies,
                 on_label_intake_queued: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.active = active
        self._device_uid = settings.device_uid
        # With a label intake (node.label_intake) in this process, each SR stored from a
        # peer is queued for it in the commit that registers it, and this wakes its loop
        # after that commit; the intake reads it after the C-STORE is answered.
        self.on_label_intake_queued = on_label_intake_queued
        # One registration at a time in this process; other processes are kept honest
        # by the unique constraints (an IntegrityError is retried).
        self._register_lock = threading.Lock()

    def store_instance(self, incoming: IncomingFile, request: StoreRequest,
                       held: set[str]) -> StoreResult:
        """Decide and carry out the fate of one received instance; never raises for bad input.

        ``held`` is the calling association's set of studies it holds open in
        :class:`ActiveStudies`; the caller releases them when the association ends.
        """
        try:
            result = self._store(incoming, request, held)
        except _Refusal as refusal:
            incoming.discard()
            header = refusal.header
            result = StoreResult(refusal.status, str(refusal),
                                 *((header.study_uid, header.series_uid, header.sop_class_uid,
                                    header.sop_instance_uid) if header else ()))
            # A C-STORE refusal is audited with its command's UID, as it always was.
            self._audit_refusal(request, result, refusal.detail,
                                header if request.sop_instance_uid is None else None)
        except BaseException:
            incoming.discard()
            raise
        return result

    def _store(self, incoming: IncomingFile, request: StoreRequest, held: set[str]) -> StoreResult:
        floor = self.settings.dicom.min_free_disk_bytes
        if self.store.free_bytes() < floor:
            raise _Refusal(StoreStatus.OUT_OF_RESOURCES,
                           f"free disk space on the data volume is below the configured floor "
                           f"of {floor} bytes; retry later")
        if incoming.oversize:
            raise _Refusal(StoreStatus.OUT_OF_RESOURCES,
                           f"instance of {incoming.size} bytes exceeds max_instance_bytes "
                           f"({incoming.max_bytes})")
        command = request.sop_class_uid is not None
        if command:
            try:
                requested_class = validate_uid(request.sop_class_uid, "Affected SOP Class UID")
                requested_instance = validate_uid(request.sop_instance_uid,
                                                  "Affected SOP Instance UID")
            except InvalidUID as exc:
                raise _Refusal(StoreStatus.UID_INVALID, str(exc)) from None
        header = self._read_header(incoming)
        try:
            if not command:
                requested_class = _envelope_uid(header.media_sop_class_uid,
                                                "Media Storage SOP Class UID (0002,0002)")
                requested_instance = _envelope_uid(header.media_sop_instance_uid,
                                                   "Media Storage SOP Instance UID (0002,0003)")
            self._check(header, request, requested_class, requested_instance)
        except _Refusal as refusal:
            refusal.header = header
            raise
        if header.study_uid not in held:
            self.active.hold(header.study_uid)
            held.add(header.study_uid)
        result = self._place_and_register(incoming, header, request)
        if self._queues_label_intake(header) and result.message != _DUPLICATE:
            self.on_label_intake_queued()
        return result

    @staticmethod
    def _check(header: _Header, request: StoreRequest, requested_class: str,
               requested_instance: str) -> None:
        """The data set against what its request (or its File Meta Information) says."""
        source = ("the request's Affected" if request.sop_class_uid is not None
                  else "its File Meta Information's Media Storage")
        if header.sop_class_uid != requested_class:
            raise _Refusal(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           f"data set SOP Class UID {header.sop_class_uid} differs from "
                           f"{source} SOP Class UID {requested_class}")
        if header.sop_instance_uid != requested_instance:
            raise _Refusal(StoreStatus.UID_DIFFERS_FROM_REQUEST,
                           f"data set SOP Instance UID {header.sop_instance_uid} differs from "
                           f"{source} SOP Instance UID {requested_instance}")
        if request.sop_class_uid is None and header.sop_class_uid not in STORAGE_SOP_CLASSES:
            raise _Refusal(StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                           f"not a storage SOP class the node accepts: "
                           f"{header.sop_class_uid}")
        if header.pixel_problem is not None:
            # PS3.4 B.2.3: 0xC000, the data set cannot be understood as the image it claims.
            raise _Refusal(StoreStatus.CANNOT_UNDERSTAND, str(header.pixel_problem),
                           header.pixel_problem.detail)
        if request.study_uid is not None and header.study_uid != request.study_uid:
            raise _Refusal(StoreStatus.STUDY_UID_MISMATCH,
                           f"not of the study the request was sent to: Study Instance "
                           f"UID {header.study_uid}, not {request.study_uid}")

    def _queues_label_intake(self, header: _Header) -> bool:
        return self.on_label_intake_queued is not None and header.may_hold_labels

    def _read_header(self, incoming: IncomingFile) -> _Header:
        try:
            with open(incoming.path, "rb") as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
                transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
                try:
                    # From where the header read stopped: element headers only.
                    check_pixel_data(fp, ds, transfer_syntax)
                    pixel_problem = None
                except PixelDataProblem as problem:
                    pixel_problem = problem
            sop_class = _uid(ds, "SOPClassUID", "SOP Class UID")
            sop_instance = _uid(ds, "SOPInstanceUID", "SOP Instance UID")
            study = _uid(ds, "StudyInstanceUID", "Study Instance UID")
            series = _uid(ds, "SeriesInstanceUID", "Series Instance UID")
            meta = ds.file_meta
            return _Header(
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                study_uid=study,
                series_uid=series,
                transfer_syntax_uid=transfer_syntax,
                produced_by_node=str(ds.get("DeviceUID", "")) == self._device_uid,
                patient_id=_text(ds, "PatientID", 64),
                patient_name=_text(ds, "PatientName", PATIENT_NAME_LENGTH),
                accession_number=_text(ds, "AccessionNumber", 16),
                study_date=_text(ds, "StudyDate", 8),
                study_description=_text(ds, "StudyDescription", 64),
                modality=_text(ds, "Modality", 16),
                body_part_examined=_text(ds, "BodyPartExamined", 16),
                series_description=_text(ds, "SeriesDescription", 64),
                series_number=_int(ds, "SeriesNumber"),
                media_sop_class_uid=_text(meta, "MediaStorageSOPClassUID", 200),
                media_sop_instance_uid=_text(meta, "MediaStorageSOPInstanceUID", 200),
                pixel_problem=pixel_problem,
            )
        except _Refusal:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the sender's data
            raise _Refusal(StoreStatus.CANNOT_UNDERSTAND,
                           f"data set cannot be decoded: {type(exc).__name__}: {exc}") from None

    def _place_and_register(self, incoming: IncomingFile, header: _Header,
                            request: StoreRequest) -> StoreResult:
        relative = self.store.relative_path(header.study_uid, header.series_uid,
                                            header.sop_instance_uid)
        with self.db.session() as session:
            existing = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
            if existing is not None and existing.sha256 == incoming.sha256:
                incoming.discard()
                self._audit_duplicate(session, request, header)
                return header.result(_DUPLICATE)
            previous_path = existing.path if existing is not None else None

        self.store.place(incoming, relative)
        for attempt in range(1, _REGISTER_ATTEMPTS + 1):
            try:
                with self._register_lock, self.db.session() as session:
                    outcome = self._register(session, header, incoming, request, relative)
                break
            except IntegrityError:
                # Another process registered the same study, series or instance first.
                if attempt == _REGISTER_ATTEMPTS:
                    raise
        if outcome is _Registered.REPLACED and previous_path and previous_path != relative:
            self.store.absolute(previous_path).unlink(missing_ok=True)
        return header.result(outcome.value)

    def _register(self, session, header: _Header, incoming: IncomingFile,  # noqa: ANN001
                  request: StoreRequest, relative: str) -> _Registered:
        """Upsert study, series and instance rows in one transaction."""
        now = utcnow()
        instance = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid))
        if instance is not None and instance.sha256 == incoming.sha256:
            # Another association stored the same bytes while we were writing ours.
            self._audit_duplicate(session, request, header)
            return _Registered.DUPLICATE
        study = session.scalar(select(Study).where(Study.study_uid == header.study_uid))
        if study is None:
            # A study that only ever held results or reports (ours, or a radiologist's) is
            # never analysed.
            state = StudyState.RECEIVING if header.triggers_analysis else StudyState.COMPLETE
            study = Study(study_uid=header.study_uid, patient_id=header.patient_id,
                          patient_name=header.patient_name,
                          accession_number=header.accession_number, study_date=header.study_date,
                          study_description=header.study_description, state=state, generation=1,
                          first_received_at=now, last_instance_at=now)
            session.add(study)
            session.flush()
        elif header.triggers_analysis:
            if study.state == StudyState.COMPLETE:
                # A late or replaced instance re-opens the study for a new job.
                study.generation += 1
                study.state = StudyState.RECEIVING
                study.completed_at = None
            study.last_instance_at = now

        series = session.scalar(select(Series).where(Series.series_uid == header.series_uid))
        if series is None:
            series = Series(study_id=study.id, series_uid=header.series_uid,
                            modality=header.modality, body_part_examined=header.body_part_examined,
                            series_description=header.series_description,
                            series_number=header.series_number)
            session.add(series)
            session.flush()

        replaced = instance is not None
        if instance is None:
            instance = Instance(sop_instance_uid=header.sop_instance_uid)
            session.add(instance)
        instance.series_id = series.id
        instance.sop_class_uid = header.sop_class_uid
        instance.transfer_syntax_uid = header.transfer_syntax_uid
        instance.path = relative
        instance.size_bytes = incoming.size
        instance.sha256 = incoming.sha256
        instance.calling_ae_title = request.calling_ae_title
        instance.received_at = now
        instance.produced_by_node = header.produced_by_node
        if self._queues_label_intake(header):
            session.flush()
            queue_label_intake(session, instance, request.calling_ae_title)

        if replaced:
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-replaced",
                         Outcome.MINOR_FAILURE,
                         "same SOP Instance UID with different content: earlier copy replaced "
                         "and the study queued again", **self._audit_fields(request, header))
        else:
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-received",
                         Outcome.SUCCESS, f"{incoming.size} bytes, {header.transfer_syntax_uid}",
                         **self._audit_fields(request, header))
        return _Registered.REPLACED if replaced else _Registered.STORED

    def _audit_duplicate(self, session, request: StoreRequest,  # noqa: ANN001
                         header: _Header) -> None:
        audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-duplicate",
                     Outcome.SUCCESS, _DUPLICATE, **self._audit_fields(request, header))

    @staticmethod
    def _audit_fields(request: StoreRequest,
                      header: _Header | None = None) -> dict[str, str | None]:
        return {
            "calling_ae_title": request.calling_ae_title,
            "called_ae_title": request.called_ae_title,
            "peer_address": request.peer_address,
            "study_uid": header.study_uid if header else None,
            "sop_instance_uid": (header.sop_instance_uid if header
                                 else (request.sop_instance_uid or "")[:64] or None),
        }

    def _audit_refusal(self, request: StoreRequest, result: StoreResult,
                       detail: str = "", header: _Header | None = None) -> None:
        with self.db.session() as session:
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-refused",
                         Outcome.MINOR_FAILURE if result.status == StoreStatus.OUT_OF_RESOURCES
                         else Outcome.SERIOUS_FAILURE,
                         f"{request.service} status 0x{result.status:04X}: {result.message}"
                         + (f" ({detail})" if detail else ""),
                         **self._audit_fields(request, header))
