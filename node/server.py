"""``cxr-node serve``, ``worker`` and ``web``: the node's parts, wired from one settings object.

``serve`` is the embedded node in one process: listener, completion monitor, a worker
(``worker.run_in_serve``), the sender and the web service (``web.enabled``), which also
takes STOW-RS into the listener's ingest. ``worker`` runs a worker and a sender only, on
this or another host sharing the database and the storage volume, to scale out, with
health and metrics on ``web.worker_port``. ``web`` runs the web service alone, beside a
node, on the node's database (no STOW-RS: it has no ingest).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from sqlalchemy.exc import ArgumentError, IntegrityError

from config.settings import ConfigError, Settings
from model import BUNDLED_MODEL
from node.completion import CompletionMonitor
from node.ingest import ActiveStudies, Ingest
from node.label_intake import LabelIntakeThread
from node.metrics import NodeMetrics
from node.preflight import listen_error, open_checked
from node.scp import Listener
from node.sender import Sender, SenderThread
from node.viewer import DEFAULT_OHIF_DIST
from node.web.app import build_app
from node.web.auth import Accounts
from node.web.dicomweb.stow import StowService
from node.web.health import Readiness, database_check, disk_check
from node.web.overview import ThisProcess
from node.web.server import WebServer, check_web_address
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
    from training.registry import RegistryError, ensure_active

    seed = settings.worker.model_dir or BUNDLED_MODEL
    for attempt in range(2):
        try:
            with db.session() as session:
                active = ensure_active(session, seed)
                version_id, path = active.id, Path(active.path)
            break
        except (IntegrityError, RegistryError):
            # Another process registered it first: at the unique index, or seen by the
            # registry's own check once that process had committed (two workers starting
            # together on a new PostgreSQL database). The second attempt finds it active.
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
    With ``web_port`` (port, its settings key) it runs the web service too, serving OHIF
    from ``ohif_dist`` at ``/viewer/``.
    """

    def __init__(self, settings: Settings, receive: bool = True, analyse: bool = True,
                 web_port: tuple[int, str] | None = None,
                 ohif_dist: Path | None = DEFAULT_OHIF_DIST) -> None:
        self.settings = settings
        self.db = open_checked(settings, listen=receive, analyse=analyse)
        if web_port is not None:
            try:
                check_web_address(settings.web, *web_port)
            except BaseException:
                self.db.dispose()
                raise
        self.store = DicomFileStore(settings.storage.data_dir)
        self.metrics = NodeMetrics()
        self.metrics.watch_database(self.db, settings.storage.data_dir)
        self.listener = self.completion = self.worker = self.web = None
        # Radiologists' SRs are read here, after their C-STORE was answered, in any node
        # process: the queue is in the database.
        self.label_intake = LabelIntakeThread(settings, self.db, self.store,
                                              LabelIntake(settings, self.db))
        ingest = None
        if receive:
            active = ActiveStudies()
            ingest = Ingest(settings, self.db, self.store, active,
                            on_label_intake_queued=self.label_intake.wake)
            self.listener = Listener(settings, self.db, self.store, ingest, active,
                                     self.metrics)
            self.completion = CompletionMonitor(self.db, active,
                                                settings.completion.study_quiet_seconds,
                                                settings.completion.check_interval_seconds,
                                                self.metrics)
        if analyse:
            from node.worker import Worker, WorkerThread

            detector, version_id = load_active_model(settings, self.db)
            worker = Worker(settings, self.db, self.store, detector, version_id, self.metrics)
            self.worker = WorkerThread(worker, settings.worker.poll_interval_seconds)
        self.sender = SenderThread(Sender(settings, self.db, self.store, self.metrics),
                                   settings.sending.poll_interval_seconds)
        if web_port is not None:
            # The console with the receiving node; a worker's port: health and metrics only.
            analysing = worker if analyse else None
            process = ThisProcess(
                open_associations=self.listener.open_associations if self.listener else None,
                device=(lambda: str(analysing.detector.device)) if analysing else None)
            # STOW-RS on the receiving node's port: its ingest, its completion monitor.
            stow = StowService(settings, self.db, self.store, ingest, self.metrics) \
                if ingest else None
            app = build_app(settings, self.readiness(), self.metrics,
                            "serve" if receive else "worker",
                            Accounts(settings, self.db) if receive else None, process,
                            ohif_dist=ohif_dist, stow=stow)
            self.web = WebServer(app, settings.web, *web_port)
        # In one process the parts wake each other instead of waiting for their next poll.
        if self.worker and self.completion:
            self.completion.followers.append(self.worker)
        if self.worker:
            self.worker.followers.append(self.sender)

    def readiness(self) -> Readiness:
        """The checks of this process: database, listener and model where run here, disk."""
        readiness = Readiness()
        readiness.add("database", database_check(self.db))
        if self.listener:
            readiness.add("dicom_listener", self.listener.not_accepting)
        if self.worker:
            worker_thread = self.worker
            readiness.add("model", lambda: None if worker_thread.is_alive()
                          else "the worker (and its model) is not running")
        readiness.add("disk", disk_check(self.settings.storage.data_dir,
                                         self.settings.dicom.min_free_disk_bytes))
        return readiness

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
        if self.web:
            try:
                self.web.start()  # after the listener: the web never delays the first C-STORE
            except ConfigError:
                for part in self.parts:
                    part.stop()
                self.db.dispose()
                raise
        where = (f"listening as {self.settings.dicom.ae_title} on port {self.listener.port}"
                 if self.listener else "worker and sender")
        self._audit("node-started", f"{where}; removed {stale} unfinished transfers")

    def stop(self) -> None:
        if self.web:
            self.web.stop()
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
    web_port = (settings.web.port, "web.port") if settings.web.enabled else None
    node = Node(settings, receive=True, analyse=settings.worker.run_in_serve, web_port=web_port)
    started = (f"cxr-node listening as {settings.dicom.ae_title} on "
               f"{settings.dicom.bind_address}:{node.listener.port}")
    if node.web:
        started += f"; web service on {node.web.url}"
    return _run_until_signalled(node, started)


def work(settings: Settings) -> int:
    """A worker and a sender without a listener: more analysis capacity on a shared database."""
    web_port = settings.web.worker_port
    node = Node(settings, receive=False, analyse=True,
                web_port=(web_port, "web.worker_port") if web_port else None)
    started = f"cxr-node worker {node.worker.worker.owner} ready"
    if node.web:
        started += f"; health and metrics on {node.web.url}"
    return _run_until_signalled(node, started)


def serve_web(settings: Settings) -> int:
    """The web service alone (``cxr-node web``), reading the node's database.

    It starts whether or not the database answers (and migrates nothing): ``/readyz`` says
    whether it does, which is what an orchestrator starting the pieces in any order needs.
    """
    try:
        db = Database.for_storage(settings.storage, upgrade=False)
    except ArgumentError:
        raise ConfigError("storage.database_url: not a database URL; use e.g. "
                          "postgresql+psycopg://user:password@host/name") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(f"storage.database_url: driver {exc.name} is not installed; use "
                          "postgresql+psycopg:// or sqlite:///") from None
    metrics = NodeMetrics()
    metrics.watch_database(db, settings.storage.data_dir)
    readiness = Readiness()
    readiness.add("database", database_check(db))
    readiness.add("disk", disk_check(settings.storage.data_dir,
                                     settings.dicom.min_free_disk_bytes))
    web = WebServer(build_app(settings, readiness, metrics, "web", Accounts(settings, db)),
                    settings.web, settings.web.port, "web.port")
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        web.start()
        print(f"cxr-node web service on {web.url}", flush=True)
        stopping.wait()
        web.stop()
    finally:
        db.dispose()
    return 0
