"""Which result objects a job produces, where they are kept, and who gets them.

For an analysed study: a TID 1500 SR (Comprehensive 3D SR, and a Comprehensive SR twin
when a destination cannot store 3D SR), a GSPS per source series and a Secondary
Capture per image, each built only if some destination wants that kind (the SR always:
it is the node's record of what the AI said). For a study the gate skipped entirely, a
short "not analysed: <reason>" SR. Objects are written to ``results/`` in the store and
an outbox row is queued per destination, in the caller's transaction; a later run on the
same study references the previous SR as its predecessor.
"""

from __future__ import annotations

from collections import defaultdict
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
)
from storage.files import DicomFileStore
from storage.models import ResultKind, ResultObject
from storage.outbox import queue_transfer

if TYPE_CHECKING:
    from node.worker import PreparedJob

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SR_CLASSES = (COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR)  # what our reports are stored as
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_SR_CLASS = {"comprehensive-3d": COMPREHENSIVE_3D_SR, "comprehensive": COMPREHENSIVE_SR}
_SR_KINDS = (ResultKind.SR, ResultKind.NOT_ANALYSED_SR)


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

    def publish(self, session: Session, job: PreparedJob) -> tuple[list[ResultObject],
                                                                   list[Path]]:
        """Write the job's objects and queue them; return the rows and the files written."""
        objects = self._build(session, job)
        rows, written = [], []
        try:
            for kind, ds in objects:
                relative = self.store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                    ds.SOPInstanceUID, root="results")
                written.append(self.store.write_bytes(encode(ds), relative))
                row = ResultObject(job_id=job.job_id, study_id=job.study_id, kind=kind,
                                   sop_class_uid=str(ds.SOPClassUID),
                                   sop_instance_uid=str(ds.SOPInstanceUID),
                                   series_instance_uid=str(ds.SeriesInstanceUID), path=relative)
                session.add(row)
                for destination in self.settings.destinations:
                    if wants(destination, kind, row.sop_class_uid):
                        queue_transfer(session, row, destination.name)
                rows.append(row)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return rows, written

    def warm_up(self, source: Dataset, detections: list) -> None:
        """Build (and encode, not store) each kind once for ``source``."""
        findings = [ImageFinding(str(source.SOPInstanceUID), d.finding, d.score, d.box)
                    for d in detections]
        for ds in (build_measurement_report([source], findings, self.device, self.algorithm),
                   build_presentation_state([source], findings, self.device, self.algorithm),
                   build_secondary_capture(source, findings, self.device, self.algorithm)):
            encode(ds)

    def _build(self, session: Session, job: PreparedJob) -> list[tuple[ResultKind, Dataset]]:
        analysed = [image for image in job.images if image.analysed]
        if not analysed:
            return self._not_analysed(job)
        findings = [ImageFinding(image.sop_instance_uid, d.finding, d.score, d.box)
                    for image in analysed for d in image.detections]
        sources = [image.dataset for image in analysed]
        objects = []
        for sop_class in self.sr_classes:
            objects.append((ResultKind.SR, build_measurement_report(
                sources, findings, self.device, self.algorithm,
                comprehensive_3d=sop_class == COMPREHENSIVE_3D_SR,
                predecessor=self._predecessor(session, job.study_id, sop_class))))
        if self.gsps:
            by_series: dict[str, list] = defaultdict(list)
            for image in analysed:
                by_series[image.series_uid].append(image)
            for images in by_series.values():
                uids = {image.sop_instance_uid for image in images}
                objects.append((ResultKind.GSPS, build_presentation_state(
                    [image.dataset for image in images],
                    [f for f in findings if f.source_sop_instance_uid in uids],
                    self.device, self.algorithm)))
        if self.secondary_capture:
            for number, image in enumerate(analysed, start=1):
                objects.append((ResultKind.SC, build_secondary_capture(
                    image.dataset,
                    [f for f in findings if f.source_sop_instance_uid == image.sop_instance_uid],
                    self.device, self.algorithm, instance_number=number)))
        return objects

    def _not_analysed(self, job: PreparedJob) -> list[tuple[ResultKind, Dataset]]:
        if not self.settings.worker.report_not_analysed:
            return []
        sources = [image.dataset for image in job.images
                   if image.dataset is not None and "PixelData" in image.dataset]
        if not sources:
            return []
        reason = "; ".join(sorted({image.skip_reason for image in job.images}))
        return [(ResultKind.NOT_ANALYSED_SR, build_not_analysed_report(
            sources, reason, self.device, self.algorithm,
            comprehensive_3d=sop_class == COMPREHENSIVE_3D_SR)) for sop_class in self.sr_classes]

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
