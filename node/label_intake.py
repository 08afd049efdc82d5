"""The loop that reads queued radiologists' reports for labels, after their C-STORE was answered.

Reading an SR (parsing its content tree, matching images, writing a label batch) once ran
inside the C-STORE handler, so a labeller's viewer waited on it and a slow or failing read
sat on the acknowledgement path. Ingest now only queues the stored report in the same
commit as its instance row (storage.intake_queue); this loop reads it, under a lease like
the analysis jobs, so a crash between the two loses nothing. A report that cannot be read
stays stored, and the failure is audited as ``labels-unreadable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError

from config.settings import Settings
from node.loop import PollingThread
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.intake_queue import (
    claim_label_intakes,
    end_label_intake,
    fail_abandoned_label_intakes,
)
from storage.leases import lease_owner
from storage.models import JobState, LabelIntakeJob

LOGGER = logging.getLogger("cxr_node.label_intake")
_CLAIM_BATCH = 8


class LabelIntakeThread(PollingThread):
    """Claims queued reports and hands each to ``intake`` (path, calling AE title)."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore,
                 intake: Callable[[Path, str], object]) -> None:
        super().__init__("label-intake", settings.worker.poll_interval_seconds)
        self.settings = settings
        self.db = db
        self.store = store
        self.intake = intake
        self.owner = lease_owner("label-intake")

    def step(self) -> int:
        worker = self.settings.worker
        with self.db.session() as session:
            for job in fail_abandoned_label_intakes(session, worker.max_attempts):
                self._audit_unreadable(session, job, job.error or "abandoned")
        done = 0
        for job_id in claim_label_intakes(self.db, self.owner, worker.lease_seconds,
                                          _CLAIM_BATCH, worker.max_attempts):
            if self.stopping:
                break
            self._read(job_id)
            done += 1
        return done

    def _read(self, job_id: int) -> None:
        with self.db.session() as session:
            job = session.get(LabelIntakeJob, job_id)
            path = self.store.absolute(job.instance.path)
            calling_ae_title = job.calling_ae_title
        try:
            self.intake(path, calling_ae_title)
        except (OperationalError, InterfaceError):
            # The database, not the report: the lease runs out and the row is read again.
            raise
        except Exception as exc:  # noqa: BLE001 - the report is stored; the problem is audited
            LOGGER.exception("labels from %s could not be read", path.name)
            with self.db.session() as session:
                if end_label_intake(session, job_id, self.owner, JobState.FAILED,
                                    f"{type(exc).__name__}: {exc}"):
                    self._audit_unreadable(session, session.get(LabelIntakeJob, job_id),
                                           str(exc))
            return
        with self.db.session() as session:
            end_label_intake(session, job_id, self.owner, JobState.DONE)

    def _audit_unreadable(self, session, job: LabelIntakeJob,  # noqa: ANN001
                          reason: str) -> None:
        instance = job.instance
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "labels-unreadable",
                     Outcome.MINOR_FAILURE, f"stored, but no labels taken: {reason}",
                     calling_ae_title=job.calling_ae_title,
                     called_ae_title=self.settings.dicom.ae_title,
                     study_uid=instance.series.study.study_uid,
                     sop_instance_uid=instance.sop_instance_uid)
