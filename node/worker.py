"""The analysis worker: claims jobs, gates and preprocesses images, runs the detector.

A worker claims up to ``max_jobs_per_batch`` queued jobs at once (storage.jobs: a lease,
``SKIP LOCKED`` on PostgreSQL), reads each study's images, asks the eligibility gate,
preprocesses what may be read and runs the model on the images of all claimed jobs
together, ``images_per_batch`` at a time. While the model runs, a second thread already
claims and prepares the next jobs, so on a GPU the model does not wait for decoding.
On a GPU, preparing is decoding and pinning the pixels; the display pipeline, the network
(compiled at start when ``worker.compile`` says so) and the post-processing run on the
device (model.detector; docs/gpu.md).
Each job's image decisions, findings and result objects are committed in one transaction
together with the job's completion, and only while the job's lease is still this
worker's: a job taken over by another worker after a lease expired is stored once.

A result object that cannot be built does not fail the job (building it again, after running
the model again, would fail the same way): it is audited and the others go out. A job that
fails for good (after ``max_attempts``, or abandoned by workers that died) still sends the
PACS a "Not analysed: <why>" SR, so that no study silently goes without a report.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from sqlalchemy import select

from config.settings import Settings
from model.detector import Detection, Detector
from model.preprocess import UnsupportedImage
from model.preprocess_torch import PreparedImage
from node.gate import check_eligibility
from node.loop import PollingThread
from node.metrics import NodeMetrics
from node.reporting import Published, Reporter, Unbuilt
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.jobs import (
    claim_jobs,
    fail_abandoned_jobs,
    finish_job,
    release_failed_job,
    return_unstarted_job,
)
from storage.leases import lease_owner
from storage.models import (
    FindingRecord,
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    ResultKind,
    Series,
    Study,
)
from training.registry import active_version

LOGGER = logging.getLogger("cxr_node.worker")
# Elements larger than this (the pixel data) are read from the file when first used.
DEFER_BYTES = 64 * 1024
# How often a worker asks the registry whether another model became active.
MODEL_CHECK_SECONDS = 5.0
# The longest error text a "not analysed" SR quotes; a traceback is for the log.
REASON_MAX_CHARS = 1000


@dataclass
class SourceImage:
    """One received image of a job's study, and what the worker made of it."""

    instance_id: int
    sop_instance_uid: str
    series_uid: str
    dataset: Dataset | None
    skip_reason: str = ""  # empty when the detector reads the image
    prepared: PreparedImage | None = None  # the model input's host part, until analysed
    detections: list[Detection] = field(default_factory=list)

    @property
    def analysed(self) -> bool:
        return not self.skip_reason


@dataclass
class PreparedJob:
    job_id: int
    study_id: int
    study_uid: str
    images: list[SourceImage]


def _read_image(store: DicomFileStore, instance: Instance, series_uid: str) -> SourceImage:
    """Read, gate and preprocess one stored instance; a refusal becomes its skip reason."""
    image = SourceImage(instance.id, instance.sop_instance_uid, series_uid, None)
    try:
        # Pixel data is read only when used: an image the gate skips (a CT slice, a
        # lateral) costs a header read, not its megabytes.
        image.dataset = pydicom.dcmread(store.absolute(instance.path), defer_size=DEFER_BYTES)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        image.skip_reason = f"stored file unreadable: {exc}"
        return image
    eligibility = check_eligibility(image.dataset)
    image.skip_reason = eligibility.reason
    return image


class Worker:
    """Claims and analyses jobs; ``run_once`` is one claim-analyse-publish pass."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 detector: Detector, model_version_id: int | None = None,
                 metrics: NodeMetrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.detector = detector
        self.metrics = metrics or NodeMetrics()
        self.metrics.model_loaded(detector.card.name, detector.card.version)
        self.reporter = Reporter(settings, store, detector.card)
        # The registry version running here; None: a fixed model that follows no registry.
        self.model_version_id = model_version_id
        self._next_model_check = 0.0
        self._unloadable_version: int | None = None
        self.owner = lease_owner("worker")
        on_gpu = detector.device.type == "cuda"
        self.jobs_per_claim = settings.worker.max_jobs_per_batch or (8 if on_gpu else 1)
        self.compile_network = on_gpu if settings.worker.compile is None \
            else settings.worker.compile

    def compile_batch_sizes(self) -> list[int]:
        """What the network is compiled for: one image (a single study, the latency case)
        and a full batch; the detector pads any other batch up to the next of these."""
        return sorted({1, self.settings.worker.images_per_batch})

    def _compile(self, detector: Detector) -> None:
        if self.compile_network:
            detector.compile(self.compile_batch_sizes())  # logs its time, or why it failed

    def follow_active_model(self) -> bool:
        """Load the registry's active model if it changed (checked every few seconds).

        Returns True when a new model was loaded: jobs prepared for the old one must be
        given back, since its preprocessing may differ.
        """
        if self.model_version_id is None or time.monotonic() < self._next_model_check:
            return False
        self._next_model_check = time.monotonic() + MODEL_CHECK_SECONDS
        with self.db.session() as session:
            active = active_version(session)
            if active is None or active.id == self.model_version_id:
                return False
            version_id, path = active.id, Path(active.path)
            if version_id == self._unloadable_version:
                return False
        try:
            detector = Detector.load(path, device=self.detector.device,
                                     preprocessing=self.detector.preprocessing)
            self._compile(detector)
        except Exception as exc:  # noqa: BLE001 - keep the current model; say so loudly
            self._unloadable_version = version_id
            LOGGER.exception("active model %s cannot be loaded", path)
            with self.db.session() as session:
                audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-load-failed",
                             Outcome.SERIOUS_FAILURE, f"worker {self.owner} keeps "
                             f"{self.detector.card.version}: {path} cannot be loaded: {exc}")
            return False
        self.detector, self.model_version_id = detector, version_id
        self.reporter = Reporter(self.settings, self.store, detector.card)
        self.metrics.model_loaded(detector.card.name, detector.card.version)
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-loaded",
                         Outcome.SUCCESS, f"worker {self.owner} now runs {detector.card.name} "
                                          f"{detector.card.version}")
        return True

    def warm_up(self) -> None:
        """Compile the network (if configured), then run the model and build each result
        kind once on a small generated image.

        The first call of each costs a second or more (kernels, code tables, fonts), and a
        compilation minutes; paid here, at start-up, they do not delay the first study a
        site sends.
        """
        from model.phantom import synthesize_case

        started = time.perf_counter()
        self._compile(self.detector)
        try:
            ds = synthesize_case(0, 0, size_range=(256, 256)).dataset
            [detections] = self.detector.predict_prepared([self.detector.prepare(ds)],
                                                          apply_thresholds=False)
            self.reporter.warm_up(ds, detections[:2])
        except Exception:  # noqa: BLE001 - a failed warm-up only costs the first study time
            LOGGER.exception("warm-up failed; the first study will be slower")
            return
        LOGGER.info("worker %s warmed up in %.1f s", self.owner, time.perf_counter() - started)

    def prepare(self) -> list[PreparedJob]:
        """Claim jobs and read, gate and preprocess their images (no model yet)."""
        worker = self.settings.worker
        written: list[Path] = []
        try:
            with self.db.session() as session:
                abandoned = fail_abandoned_jobs(session, worker.max_attempts)
                for job in abandoned:
                    self._audit_failure(session, job.id, job.error or "abandoned")
                    written += self._report_failure(session, job.id, job.error or "abandoned")
        except BaseException:
            for path in written:  # their rows were rolled back
                path.unlink(missing_ok=True)
            raise
        self.metrics.jobs.labels(outcome="failed").inc(len(abandoned))
        job_ids = claim_jobs(self.db, self.owner, worker.lease_seconds, self.jobs_per_claim,
                             worker.max_attempts)
        started = time.perf_counter()
        prepared = []
        for job_id in job_ids:
            try:
                prepared.append(self._prepare_job(job_id))
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others
                LOGGER.exception("job %s could not be prepared", job_id)
                self._release(job_id, f"preparation failed: {exc}")
        if prepared:
            LOGGER.info("claimed and prepared jobs %s in %.2f s", job_ids,
                        time.perf_counter() - started)
        return prepared

    def _prepare_job(self, job_id: int) -> PreparedJob:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            study = session.get(Study, job.study_id)
            rows = _study_instances(session, study.id)
        started = time.perf_counter()
        images = [_read_image(self.store, instance, series_uid) for instance, series_uid in rows]
        read = time.perf_counter()
        self.metrics.stage_seconds.labels(stage="read").observe(read - started)
        for image in images:
            if image.analysed:
                try:
                    image.prepared = self.detector.prepare(image.dataset)
                except (UnsupportedImage, ValueError) as exc:
                    image.skip_reason = f"pixel data not usable: {exc}"
        self.metrics.stage_seconds.labels(stage="preprocess").observe(time.perf_counter() - read)
        return PreparedJob(job_id, study.id, study.study_uid, images)

    def analyse(self, jobs: list[PreparedJob]) -> None:
        """Run the model once over the readable images of all ``jobs`` together."""
        readable = [image for job in jobs for image in job.images if image.analysed]
        with self.metrics.stage_seconds.labels(stage="model").time():
            results = self.detector.predict_prepared(
                [image.prepared for image in readable],
                batch_size=self.settings.worker.images_per_batch)
        for image, result in zip(readable, results, strict=True):
            if isinstance(result, UnsupportedImage):  # found on the device (no contrast)
                image.skip_reason = f"pixel data not usable: {result}"
            else:
                image.detections = result
            image.prepared = None  # the model input is no longer needed; free it early

    def publish(self, job: PreparedJob) -> bool:
        """Store findings and result objects and complete the job, if it is still ours."""
        written: list[Path] = []
        started = time.perf_counter()
        try:
            with self.db.session() as session:
                self._record_images(session, job)
                published = self.reporter.publish(session, job)
                written = published.written
                if not finish_job(session, job.job_id, self.owner):
                    raise _LeaseLost()
                self._audit_analysis(session, job, published)
        except _LeaseLost:
            LOGGER.warning("job %s was taken over by another worker; results discarded",
                           job.job_id)
            for path in written:
                path.unlink(missing_ok=True)
            self.metrics.jobs.labels(outcome="taken-over").inc()
            return False
        except Exception as exc:  # noqa: BLE001 - record it on the job and carry on
            LOGGER.exception("job %s could not be published", job.job_id)
            for path in written:
                path.unlink(missing_ok=True)
            self._release(job.job_id, f"publishing failed: {exc}")
            return False
        self.metrics.stage_seconds.labels(stage="results").observe(time.perf_counter() - started)
        self.metrics.jobs.labels(outcome="done").inc()
        for image in job.images:
            for detection in image.detections:
                self.metrics.findings.labels(label=detection.finding.label).inc()
        return True

    def run_once(self, jobs: list[PreparedJob] | None = None) -> int:
        """Analyse and publish ``jobs`` (claimed now if not given); return how many completed."""
        if jobs is None:
            self.follow_active_model()
            jobs = self.prepare()
        if not jobs:
            return 0
        started = time.perf_counter()
        try:
            self.analyse(jobs)
        except Exception as exc:  # noqa: BLE001 - the jobs go back to the queue
            LOGGER.exception("detector failed on %d jobs", len(jobs))
            for job in jobs:
                self._release(job.job_id, f"detector failed: {exc}")
            return 0
        analysed = time.perf_counter()
        published = sum(self.publish(job) for job in jobs)
        LOGGER.info("%d jobs: model %.2f s, results %.2f s", len(jobs), analysed - started,
                    time.perf_counter() - analysed)
        return published

    def give_back(self, jobs: list[PreparedJob]) -> None:
        """Return jobs claimed but not analysed (shutting down) to the queue."""
        with self.db.session() as session:
            for job in jobs:
                return_unstarted_job(session, job.job_id, self.owner)

    def _record_images(self, session, job: PreparedJob) -> None:  # noqa: ANN001 - Session
        card = self.detector.card
        for image in job.images:
            session.add(ImageAnalysis(job_id=job.job_id, instance_id=image.instance_id,
                                      analysed=image.analysed,
                                      skip_reason=image.skip_reason or None,
                                      model_version=card.version if image.analysed else None))
            for detection in image.detections:
                finding = detection.finding
                x1, y1, x2, y2 = detection.box
                session.add(FindingRecord(
                    job_id=job.job_id, instance_id=image.instance_id, label=finding.label,
                    code_scheme=finding.scheme, code_value=finding.code,
                    code_meaning=finding.meaning, score=detection.score, x1=x1, y1=y1, x2=x2,
                    y2=y2, model_name=card.name, model_version=card.version))

    def _audit_analysis(self, session, job: PreparedJob,  # noqa: ANN001 - Session
                        published: Published) -> None:
        analysed = [image for image in job.images if image.analysed]
        findings = sum(len(image.detections) for image in analysed)
        skipped = [f"{image.sop_instance_uid}: {image.skip_reason}"
                   for image in job.images if not image.analysed]
        message = (f"job {job.job_id}: {len(analysed)} images read by "
                   f"{self.detector.card.name} {self.detector.card.version}, {findings} "
                   f"findings, {len(published.objects)} result objects")
        if published.unbuilt:
            message += f", {len(published.unbuilt)} not built"
        if skipped:
            message += "; not analysed: " + "; ".join(skipped)
        audit.record(session, AuditEventId.INSTANCES_ACCESSED, "study-analysed",
                     Outcome.SUCCESS if analysed and not published.unbuilt
                     else Outcome.MINOR_FAILURE, message, study_uid=job.study_uid)
        _audit_unbuilt(session, job.job_id, job.study_uid, published.unbuilt)

    def _report_failure(self, session, job_id: int,  # noqa: ANN001 - Session
                        error: str) -> list[Path]:
        """Queue the "Not analysed: <why>" SR of a job that failed for good, in ``session``;
        return the files written (for the caller to remove if its transaction fails).

        Raises only what the database raises: the job's failed state must be stored even
        when no report can be (a study with no readable image, a full disk); that is
        audited instead.
        """
        job = session.get(Job, job_id)
        study = session.get(Study, job.study_id)
        plural = "" if job.attempts == 1 else "s"
        # One line of printable ASCII, which the SR's TEXT holds whatever the source's
        # Specific Character Set; the traceback is in the log.
        error = " ".join(error.encode("ascii", "replace").decode("ascii").split())
        if len(error) > REASON_MAX_CHARS:
            error = error[:REASON_MAX_CHARS] + " ..."
        reason = f"analysis failed after {job.attempts} attempt{plural}: {error}"
        sources = []
        for instance, _ in _study_instances(session, study.id):
            try:
                sources.append(pydicom.dcmread(self.store.absolute(instance.path),
                                               defer_size=DEFER_BYTES))
            except (OSError, pydicom.errors.InvalidDicomError):
                LOGGER.warning("job %s: %s is unreadable", job_id, instance.path)
        try:
            published = self.reporter.publish_not_analysed(session, job_id, study.id, sources,
                                                           reason)
        except Exception as exc:  # noqa: BLE001 - e.g. the disk is full; the job stays failed
            LOGGER.exception("job %s: the not-analysed report could not be stored", job_id)
            published = Published(unbuilt=[Unbuilt(ResultKind.NOT_ANALYSED_SR,
                                                   "not-analysed SR", str(exc))])
        if not published.objects and not published.unbuilt \
                and self.settings.worker.report_not_analysed:
            published.unbuilt.append(Unbuilt(ResultKind.NOT_ANALYSED_SR, "not-analysed SR",
                                             "the study holds no readable image to refer to"))
        _audit_unbuilt(session, job_id, study.study_uid, published.unbuilt)
        return published.written

    def _release(self, job_id: int, error: str) -> None:
        written: list[Path] = []
        try:
            with self.db.session() as session:
                state = release_failed_job(session, job_id, self.owner, error,
                                           self.settings.worker.max_attempts)
                if state is not None:
                    final = state == JobState.FAILED
                    self.metrics.jobs.labels(outcome="failed" if final else "retried").inc()
                    self._audit_failure(session, job_id, error, final=final)
                    if final:
                        written = self._report_failure(session, job_id, error)
        except Exception:  # noqa: BLE001 - the lease will expire and the job be retried
            LOGGER.exception("could not release job %s", job_id)
            for path in written:  # their rows were rolled back
                path.unlink(missing_ok=True)

    @staticmethod
    def _audit_failure(session, job_id: int, error: str, final: bool = True) -> None:  # noqa: ANN001
        job = session.get(Job, job_id)
        study = session.get(Study, job.study_id)
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY,
                     "job-failed" if final else "job-retried",
                     Outcome.SERIOUS_FAILURE if final else Outcome.MINOR_FAILURE,
                     f"job {job_id} (attempt {job.attempts}): {error}",
                     study_uid=study.study_uid)


def _study_instances(session, study_id: int) -> list:  # noqa: ANN001 - Session
    """(Instance, series UID) of every received image of the study, in series order."""
    return session.execute(
        select(Instance, Series.series_uid).join(Series)
        .where(Series.study_id == study_id, Instance.produced_by_node.is_(False))
        .order_by(Series.series_number, Series.id, Instance.id)
    ).all()


def _audit_unbuilt(session, job_id: int, study_uid: str,  # noqa: ANN001 - Session
                   unbuilt: list[Unbuilt]) -> None:
    """One audit event per object that could not be built: which one, and why. A missing
    report is serious (the PACS has nothing saying the AI did not read the study)."""
    for item in unbuilt:
        serious = item.kind in (ResultKind.SR, ResultKind.NOT_ANALYSED_SR)
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "result-not-built",
                     Outcome.SERIOUS_FAILURE if serious else Outcome.MINOR_FAILURE,
                     f"job {job_id}: {item.what} not built: {item.reason}", study_uid=study_uid)


class _LeaseLost(Exception):
    """Our lease on a job was taken over; roll back what this worker wrote."""


class WorkerThread(PollingThread):
    """Loops the worker; the next jobs are claimed and prepared while the model runs."""

    def __init__(self, worker: Worker, poll_interval_seconds: float) -> None:
        super().__init__("worker", poll_interval_seconds)
        self.worker = worker
        self._preparer: ThreadPoolExecutor | None = None
        self._upcoming: Future | None = None

    def run(self) -> None:
        self.worker.warm_up()
        with ThreadPoolExecutor(1, thread_name_prefix="prepare") as self._preparer:
            super().run()
            if self._upcoming is not None:
                self.worker.give_back(_result_or_empty(self._upcoming))

    def step(self) -> int:
        upcoming, self._upcoming = self._upcoming, None
        if self.worker.follow_active_model() and upcoming:
            self.worker.give_back(upcoming.result())  # prepared for the previous model
            upcoming = None
        jobs = upcoming.result() if upcoming else self.worker.prepare()
        if not jobs:
            return 0
        if not self.stopping:
            self._upcoming = self._preparer.submit(self.worker.prepare)
        return self.worker.run_once(jobs)


def _result_or_empty(future: Future) -> list[PreparedJob]:
    try:
        return future.result()
    except Exception:  # noqa: BLE001 - nothing was claimed
        return []
