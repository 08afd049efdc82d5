"""Which result objects a job produces, where they are kept, and who gets them.

For an analysed study: a TID 1500 SR (Comprehensive 3D SR, and a Comprehensive SR twin
when a destination cannot store 3D SR), a GSPS per group of images that one presentation
state can hold (one series, size, polarity and rescale) and a Secondary Capture per image,
each built only if some destination wants that kind (the SR always: it is the node's
record of what the AI said). Each object is built on its own: one that fails is reported
and the others still go out; an SR that fails becomes a "not analysed" SR saying why, so
no study goes without a report. For a study the gate skipped entirely, or whose analysis
failed for good, a short "not analysed: <reason>" SR. Objects are written to ``results/``
in the store and an outbox row is queued per destination, in the caller's transaction; a
later run on the same study references the previous SR as its predecessor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Destination, Settings
from model.card import ModelCard
from node.results import (
    Algorithm,
    ImageFinding,
    ProducingDevice,
    build_measurement_report,
    build_not_analysed_report,
    build_presentation_state,
    build_secondary_capture,
    presentation_groups,
)
from storage.files import DicomFileStore
from storage.models import ResultKind, ResultObject
from storage.outbox import queue_transfer

if TYPE_CHECKING:
    from node.worker import PreparedJob, SourceImage

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SR_CLASSES = (COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR)  # what our reports are stored as
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_SR_CLASS = {"comprehensive-3d": COMPREHENSIVE_3D_SR, "comprehensive": COMPREHENSIVE_SR}
_SR_NAME = {COMPREHENSIVE_3D_SR: "Comprehensive 3D SR", COMPREHENSIVE_SR: "Comprehensive SR"}
_SR_KINDS = (ResultKind.SR, ResultKind.NOT_ANALYSED_SR)
LOGGER = logging.getLogger("cxr_node.reporting")


def software_version() -> str:
    try:
        return version("cxr-node")
    except PackageNotFoundError:
        return "unknown"


def producing_device(settings: Settings) -> ProducingDevice:
    return ProducingDevice(uid=settings.device_uid, name=settings.node.device_name,
                           manufacturer="cxr-node project", software_version=software_version())


def wants(destination: Destination, kind: ResultKind, sop_class_uid: str) -> bool:
    """Whether ``destination`` is configured to receive this object."""
    if kind in _SR_KINDS:
        return destination.send_sr and _SR_CLASS[destination.sr_storage] == sop_class_uid
    if kind == ResultKind.GSPS:
        return destination.send_gsps
    return destination.send_secondary_capture


def encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


@dataclass(frozen=True)
class Unbuilt:
    """A result object that could not be built or encoded: which one, and why."""

    kind: ResultKind
    what: str  # the object as an admin reads it, e.g. "GSPS of 2 images of series 1.2.3"
    reason: str


@dataclass
class Published:
    """What one call stored and queued, and what it could not build."""

    objects: list[ResultObject] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    unbuilt: list[Unbuilt] = field(default_factory=list)


@dataclass
class _Built:
    kind: ResultKind
    dataset: Dataset
    data: bytes


class _Builder:
    """Builds and encodes objects one at a time: one that fails is recorded as
    :class:`Unbuilt` and logged, and never withholds the others."""

    def __init__(self) -> None:
        self.built: list[_Built] = []
        self.unbuilt: list[Unbuilt] = []

    def attempt(self, kind: ResultKind, what: str, build: Callable[[], Dataset]) -> str:
        """Build one object; return "" on success, else why it failed."""
        try:
            ds = build()
            data = encode(ds)
        except Exception as exc:  # noqa: BLE001 - a deterministic failure of this object only
            reason = str(exc) or type(exc).__name__
            LOGGER.exception("%s could not be built", what)
            self.unbuilt.append(Unbuilt(kind, what, reason))
            return reason
        self.built.append(_Built(kind, ds, data))
        return ""


class Reporter:
    """Builds, stores and queues one job's result objects."""

    def __init__(self, settings: Settings, store: DicomFileStore, card: ModelCard) -> None:
        self.settings = settings
        self.store = store
        self.device = producing_device(settings)
        self.algorithm = Algorithm(name=card.name, version=card.version)
        destinations = settings.destinations
        sr_storages = {d.sr_storage for d in destinations if d.send_sr}
        self.sr_classes = [_SR_CLASS[s] for s in sorted(sr_storages)] or [COMPREHENSIVE_3D_SR]
        self.gsps = any(d.send_gsps for d in destinations)
        self.secondary_capture = any(d.send_secondary_capture for d in destinations)

    def publish(self, session: Session, job: PreparedJob) -> Published:
        """Build the job's objects, write and queue those that could be built.

        A failure to build one object (highdicom refusing an unusual source, say) is
        returned in ``unbuilt`` and the others still go out; a failure to write a file
        raises, with nothing of this job written or queued, so the job can be retried.
        """
        analysed = [image for image in job.images if image.analysed]
        if analysed:
            builder = self._build(session, job.study_id, analysed)
        else:
            reason = "; ".join(sorted({image.skip_reason for image in job.images}))
            builder = self._not_analysed(
                [image.dataset for image in job.images if image.dataset is not None], reason)
        return self._store(session, job.job_id, job.study_id, builder)

    def publish_not_analysed(self, session: Session, job_id: int, study_id: int,
                             sources: list[Dataset], reason: str) -> Published:
        """Store and queue the "Not analysed: <reason>" SR for a job that failed for good."""
        return self._store(session, job_id, study_id, self._not_analysed(sources, reason))

    def warm_up(self, source: Dataset, detections: list) -> None:
        """Build (and encode, not store) each kind once for ``source``."""
        findings = [ImageFinding(str(source.SOPInstanceUID), d.finding, d.score, d.box)
                    for d in detections]
        for ds in (build_measurement_report([source], findings, self.device, self.algorithm),
                   build_presentation_state([source], findings, self.device, self.algorithm),
                   build_secondary_capture(source, findings, self.device, self.algorithm)):
            encode(ds)

    def _store(self, session: Session, job_id: int, study_id: int,
               builder: _Builder) -> Published:
        """Write every built object, then add its row and its transfers to ``session``."""
        published = Published(unbuilt=builder.unbuilt)
        try:
            for built in builder.built:
                ds = built.dataset
                relative = self.store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                    ds.SOPInstanceUID, root="results")
                published.written.append(self.store.write_bytes(built.data, relative))
                published.objects.append(ResultObject(
                    job_id=job_id, study_id=study_id, kind=built.kind,
                    sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID), path=relative))
        except BaseException:
            for path in published.written:
                path.unlink(missing_ok=True)
            raise
        for row in published.objects:
            session.add(row)
            for destination in self.settings.destinations:
                if wants(destination, row.kind, row.sop_class_uid):
                    queue_transfer(session, row, destination.name)
        return published

    def _build(self, session: Session, study_id: int, analysed: list[SourceImage]) -> _Builder:
        """One SR per SR class for the study, one GSPS per group of images one presentation
        state can hold (:func:`presentation_groups`), one SC per image; each on its own."""
        builder = _Builder()
        findings = [ImageFinding(image.sop_instance_uid, d.finding, d.score, d.box)
                    for image in analysed for d in image.detections]
        sources = [image.dataset for image in analysed]
        for sop_class in self.sr_classes:
            name = _SR_NAME[sop_class]
            failed = builder.attempt(
                ResultKind.SR, f"{name} of {_images(len(sources))}",
                lambda sop_class=sop_class: build_measurement_report(
                    sources, findings, self.device, self.algorithm,
                    comprehensive_3d=sop_class == COMPREHENSIVE_3D_SR,
                    predecessor=self._predecessor(session, study_id, sop_class)))
            if failed:  # the study must not go without a report: say that it has none
                builder.attempt(
                    ResultKind.NOT_ANALYSED_SR, f"{name} (not analysed) of {_images(len(sources))}",
                    lambda sop_class=sop_class, failed=failed: build_not_analysed_report(
                        sources, f"the findings report could not be built: {failed}",
                        self.device, self.algorithm,
                        comprehensive_3d=sop_class == COMPREHENSIVE_3D_SR))
        if self.gsps:
            for group in presentation_groups(sources):
                uids = {str(ds.SOPInstanceUID) for ds in group}
                first = group[0]
                builder.attempt(
                    ResultKind.GSPS,
                    f"GSPS of {_images(len(group))} of series {first.SeriesInstanceUID} "
                    f"({first.Columns} x {first.Rows}, {first.PhotometricInterpretation})",
                    lambda group=group, uids=uids: build_presentation_state(
                        group, [f for f in findings if f.source_sop_instance_uid in uids],
                        self.device, self.algorithm))
        if self.secondary_capture:
            for number, image in enumerate(analysed, start=1):
                builder.attempt(
                    ResultKind.SC, f"SC of image {image.sop_instance_uid}",
                    lambda number=number, image=image: build_secondary_capture(
                        image.dataset,
                        [f for f in findings
                         if f.source_sop_instance_uid == image.sop_instance_uid],
                        self.device, self.algorithm, instance_number=number))
        return builder

    def _not_analysed(self, datasets: list[Dataset], reason: str) -> _Builder:
        """The "Not analysed: <reason>" SR over the study's images (none when turned off,
        or when no image is there to refer to)."""
        builder = _Builder()
        if not self.settings.worker.report_not_analysed:
            return builder
        sources = [ds for ds in datasets if "PixelData" in ds]
        if not sources:
            return builder
        for sop_class in self.sr_classes:
            builder.attempt(
                ResultKind.NOT_ANALYSED_SR,
                f"{_SR_NAME[sop_class]} (not analysed) of {_images(len(sources))}",
                lambda sop_class=sop_class: build_not_analysed_report(
                    sources, reason, self.device, self.algorithm,
                    comprehensive_3d=sop_class == COMPREHENSIVE_3D_SR))
        return builder

    def _predecessor(self, session: Session, study_id: int, sop_class: str) -> Dataset | None:
        """Our latest earlier SR of this class for the study, which a new one supersedes."""
        path = session.scalars(
            select(ResultObject.path)
            .where(ResultObject.study_id == study_id, ResultObject.kind.in_(_SR_KINDS),
                   ResultObject.sop_class_uid == sop_class)
            .order_by(ResultObject.id.desc()).limit(1)
        ).first()
        if path is None:
            return None
        try:
            return pydicom.dcmread(self.store.absolute(path))
        except (OSError, pydicom.errors.InvalidDicomError):
            return None
