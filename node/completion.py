"""Study completion: a study is complete when nobody is sending to it and it has been quiet.

DICOM has no "end of study" message, so the node decides: no open association of this
process holds the study, and ``study_quiet_seconds`` have passed since its last
instance. Then exactly one job is queued for the study's current generation; a late
instance re-opens the study (a new generation) and so gets a job of its own.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from node.ingest import ActiveStudies
from node.loop import PollingThread
from node.metrics import NodeMetrics
from storage.db import Database
from storage.jobs import queue_study_job
from storage.models import Study, StudyState, utcnow

LOGGER = logging.getLogger("cxr_node.completion")


def complete_quiet_studies(db: Database, quiet_seconds: float, busy: frozenset[str]) -> list[str]:
    """Mark quiet studies complete and queue their jobs; return their Study Instance UIDs.

    Each study is completed with a compare-and-set on (state, generation,
    last_instance_at), so an instance that arrives meanwhile wins and the study stays
    open; the unique (study, generation) job constraint makes a race between two
    monitors queue one job, not two.
    """
    cutoff = utcnow() - timedelta(seconds=quiet_seconds)
    with db.session() as session:
        candidates = session.execute(
            select(Study.id, Study.study_uid, Study.generation, Study.last_instance_at)
            .where(Study.state == StudyState.RECEIVING, Study.last_instance_at <= cutoff)
            .order_by(Study.last_instance_at)
            .limit(500)
        ).all()
    completed = []
    for study_id, study_uid, generation, last_instance_at in candidates:
        if study_uid in busy:
            continue
        try:
            with db.session() as session:
                changed = session.execute(
                    update(Study)
                    .where(Study.id == study_id, Study.state == StudyState.RECEIVING,
                           Study.generation == generation,
                           Study.last_instance_at == last_instance_at)
                    .values(state=StudyState.COMPLETE, completed_at=utcnow())
                ).rowcount
                if changed != 1:
                    continue
                study = session.get(Study, study_id)
                queue_study_job(session, study)
        except IntegrityError:
            LOGGER.info("study %s generation %s already has a job", study_uid, generation)
            continue
        LOGGER.info("study %s complete (generation %s): job queued", study_uid, generation)
        completed.append(study_uid)
    return completed


class CompletionMonitor(PollingThread):
    """Completes quiet studies every ``check_interval_seconds``; wakes the worker when it did."""

    periodic = True

    def __init__(self, db: Database, active: ActiveStudies, quiet_seconds: float,
                 check_interval_seconds: float, metrics: NodeMetrics | None = None) -> None:
        super().__init__("completion-monitor", check_interval_seconds)
        self.db = db
        self.active = active
        self.quiet_seconds = quiet_seconds
        self.metrics = metrics or NodeMetrics()

    def step(self) -> int:
        completed = len(complete_quiet_studies(self.db, self.quiet_seconds,
                                               self.active.snapshot()))
        self.metrics.studies_completed.inc(completed)
        return completed
