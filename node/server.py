"""``cxr-node serve``: the embedded node in one process (listener and completion monitor)."""

from __future__ import annotations

import logging
import signal
import threading

from config.settings import Settings
from node.completion import CompletionMonitor
from node.ingest import ActiveStudies, Ingest
from node.scp import Listener
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore

LOGGER = logging.getLogger("cxr_node.server")


class Node:
    """The running parts of one node process, wired from one settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        storage = settings.storage
        self.db = Database.connect(storage.resolved_database_url(),
                                   storage.sqlite_busy_timeout_seconds)
        self.store = DicomFileStore(storage.data_dir)
        self.active = ActiveStudies()
        self.ingest = Ingest(settings, self.db, self.store, self.active)
        self.listener = Listener(settings, self.db, self.store, self.ingest, self.active)
        self.completion = CompletionMonitor(self.db, self.active,
                                            settings.completion.study_quiet_seconds,
                                            settings.completion.check_interval_seconds)

    def start(self) -> None:
        stale = self.store.remove_stale_incoming()
        if stale:
            LOGGER.warning("removed %d unfinished transfers left by a previous run", stale)
        self.listener.start()
        self.completion.start()
        self._audit("node-started", f"listening as {self.settings.dicom.ae_title} on port "
                    f"{self.listener.port}; removed {stale} unfinished transfers")

    def stop(self) -> None:
        self.listener.stop()
        self.completion.stop()
        self._audit("node-stopped", "orderly shutdown")
        self.db.dispose()

    def _audit(self, event_type: str, message: str) -> None:
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, event_type, Outcome.SUCCESS,
                         message, called_ae_title=self.settings.dicom.ae_title)


def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM; the listener answers as soon as this logs 'listening'."""
    node = Node(settings)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    node.start()
    print(f"cxr-node listening as {settings.dicom.ae_title} on "
          f"{settings.dicom.bind_address}:{node.listener.port}", flush=True)
    stopping.wait()
    node.stop()
    return 0
