"""A receiving PACS for ``cxr-node demo`` and the latency benchmark.

Orthanc when it is installed (what many sites run), otherwise a small pynetdicom
C-STORE SCP that keeps every object in memory. Both answer one question the demo asks:
which objects have arrived, and when.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Arrival:
    at: float  # time.time() when the PACS had it (polled for Orthanc)
    dataset: Dataset


class InboxPacs:
    """An in-process C-STORE SCP that accepts everything and records arrival times."""

    name = "pynetdicom store SCP"

    def __init__(self, ae_title: str = "PACS") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> InboxPacs:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event) -> int:  # noqa: ANN001 - pynetdicom event
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self._arrivals.append(Arrival(time.time(), ds))
        return 0x0000

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


class OrthancPacs:
    """Orthanc on free ports with its own storage; arrivals are seen through its REST API."""

    name = "Orthanc"

    def __init__(self, workdir: Path, ae_title: str = "PACS",
                 extra_config: dict | None = None) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.http_port = free_port()
        self.workdir = Path(workdir)
        self.extra_config = extra_config or {}
        self._process: subprocess.Popen | None = None
        self._seen: dict[str, Arrival] = {}

    @staticmethod
    def available() -> bool:
        return shutil.which("Orthanc") is not None

    def start(self) -> OrthancPacs:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {"Name": "cxr-node-demo-pacs", "DicomAet": self.ae_title,
                  "DicomPort": self.port, "HttpPort": self.http_port,
                  "StorageDirectory": str(self.workdir / "storage"),
                  "IndexDirectory": str(self.workdir / "index"),
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "Plugins": [],
                  **self.extra_config}
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - closed below
        self._process = subprocess.Popen([shutil.which("Orthanc"), str(config_path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self._get("/system")
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(
                        f"Orthanc did not start; see {self.workdir}/orthanc.log") from None
                time.sleep(0.1)

    def _get(self, path: str, raw: bool = False):  # noqa: ANN202 - JSON or bytes
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            body = r.read()
        return body if raw else json.loads(body)

    def arrivals(self) -> list[Arrival]:
        """Every instance Orthanc holds; new ones are timed when first seen here."""
        new = [i for i in self._get("/instances") if i not in self._seen]
        seen_at = time.time()  # before the downloads, which would delay the later ones
        for instance_id in new:
            data = self._get(f"/instances/{instance_id}/file", raw=True)
            self._seen[instance_id] = Arrival(seen_at, pydicom.dcmread(DicomBytesIO(data)))
        return list(self._seen.values())

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
