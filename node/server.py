"""``cxr-node serve`` and ``cxr-node worker``: the node's parts, wired from one settings object.

``serve`` is the embedded node in one process: listener, completion monitor, a worker
(``worker.run_in_serve``) and the sender. ``worker`` runs a worker and a sender only, on
this or another host sharing the database and the storage volume, to scale out.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from model import BUNDLED_MODEL
from node.completion import CompletionMonitor
from node.ingest import ActiveStudies, Ingest
from node.label_intake import LabelIntakeThread
from node.preflight import listen_error, open_checked
from node.scp import Listener
from node.sender import Sender, SenderThread
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.leases import expire_leases_of_dead_local_processes
from storage.models import Job, LabelIntakeJob, Transfer
from training.label_store import LabelIntake

LOGGER = logging.getLogger("cxr_node.server")


def load_active_model(settings: Settings, db: Database):  # noqa: ANN201 - (Detector, id)
    """The registry's active model (on a new installation: the configured or bundled one)."""
    from model.detector import Detector  # torch is imported only where a model runs
    from training.registry import ensure_active

    seed = settings.worker.model_dir or BUNDLED_MODEL
    for attempt in range(2):
        try:
            with db.session() as session:
                active = ensure_active(session, seed)
                version_id, path = active.id, Path(active.path)
            break
        except IntegrityError:  # another process registered it first
            if attempt:
                raise
    device = None if settings.worker.device == "auto" else settings.worker.device
    detector = Detector.load(path, device=device)
    LOGGER.info("model %s %s loaded on %s", detector.card.name, detector.card.version,
                detector.device)
    return detector, version_id


class Node:
    """The running parts of one node process, wired from one settings object.

    Everything an operator can get wrong (data directory, database, listening address,
    model folder) is checked before the model loads, so a mistake is reported in a second
    as a :class:`config.settings.ConfigError` naming the key, not after the model's seconds.
    """

    def __init__(self, settings: Settings, receive: bool = True, analyse: bool = True) -> None:
        self.settings = settings
        self.db = open_checked(settings, listen=receive, analyse=analyse)
        self.store = DicomFileStore(settings.storage.data_dir)
        self.listener = self.completion = self.worker = None
        # Radiologists' SRs are read here, after their C-STORE was answered, in any node
        # process: the queue is in the database.
        self.label_intake = LabelIntakeThread(settings, self.db, self.store,
                                              LabelIntake(settings, self.db))
        if receive:
            active = ActiveStudies()
            ingest = Ingest(settings, self.db, self.store, active,
                            on_label_intake_queued=self.label_intake.wake)
            self.listener = Listener(settings, self.db, self.store, ingest, active)
            self.completion = CompletionMonitor(self.db, active,
                                                settings.completion.study_quiet_seconds,
                                                settings.completion.check_interval_seconds)
        if analyse:
            from node.worker import Worker, WorkerThread

            detector, version_id = load_active_model(settings, self.db)
            worker = Worker(settings, self.db, self.store, detector, version_id)
            self.worker = WorkerThread(worker, settings.worker.poll_interval_seconds)
        self.sender = SenderThread(Sender(settings, self.db, self.store),
                                   settings.sending.poll_interval_seconds)
        # In one process the parts wake each other instead of waiting for their next poll.
        if self.worker and self.completion:
            self.completion.followers.append(self.worker)
        if self.worker:
            self.worker.followers.append(self.sender)

    @property
    def parts(self) -> list:
        return [p for p in (self.listener, self.completion, self.label_intake, self.worker,
                            self.sender) if p]

    def start(self) -> None:
        stale = self.store.remove_stale_incoming()
        if stale:
            LOGGER.warning("removed %d unfinished transfers left by a previous run", stale)
        self._expire_dead_leases()
        if self.listener:
            try:
                self.listener.start()
            except OSError as exc:  # taken since the start-up probe: still the operator's to fix
                self.db.dispose()
                raise listen_error(self.settings, exc) from None
        for part in self.parts:
            if part is not self.listener:
                part.start()
        where = (f"listening as {self.settings.dicom.ae_title} on port {self.listener.port}"
                 if self.listener else "worker and sender")
        self._audit("node-started", f"{where}; removed {stale} unfinished transfers")

    def stop(self) -> None:
        for part in self.parts:
            part.stop()
        self._audit("node-stopped", "orderly shutdown")
        self.db.dispose()

    def _expire_dead_leases(self) -> None:
        """A killed process on this host leaves jobs and transfers leased; take them up now."""
        with self.db.session() as session:
            for model in (Job, Transfer, LabelIntakeJob):
                owners = expire_leases_of_dead_local_processes(session, model)
                if owners:
                    LOGGER.warning("%s leases of %s expired: those processes no longer run",
                                   model.__tablename__, ", ".join(owners))

    def _audit(self, event_type: str, message: str) -> None:
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, event_type, Outcome.SUCCESS,
                         message, called_ae_title=self.settings.dicom.ae_title)


def _run_until_signalled(node: Node, started_line: str) -> int:
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    node.start()
    print(started_line, flush=True)
    stopping.wait()
    node.stop()
    return 0


def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM; the listener answers as soon as this logs 'listening'."""
    node = Node(settings, receive=True, analyse=settings.worker.run_in_serve)
    return _run_until_signalled(node, f"cxr-node listening as {settings.dicom.ae_title} on "
                                      f"{settings.dicom.bind_address}:{node.listener.port}")


def work(settings: Settings) -> int:
    """A worker and a sender without a listener: more analysis capacity on a shared database."""
    node = Node(settings, receive=False, analyse=True)
    return _run_until_signalled(node, f"cxr-node worker {node.worker.worker.owner} ready")
