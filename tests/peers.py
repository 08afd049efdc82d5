"""Real DICOM peers for tests and benchmarks: cxr-node itself, dcmtk and Orthanc.

Each is started as its own process on a free port with its own temporary directory,
so tests see exactly what a site would: real sockets, real files, real exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from node.demo_pacs import OrthancPacs
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
CXR_NODE = [sys.executable, "-m", "node.cli"]


class MissingTool(RuntimeError):
    """A peer program the test needs is not installed (``make test`` installs it)."""


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"{name} is not installed: run `make tools` (Debian: dcmtk, "
                          f"dicom3tools, orthanc)")
    return path


def wait_for_port(port: int, timeout: float = 30.0,
                  process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


class NodeProcess:
    """``cxr-node serve`` in a subprocess, configured through a YAML file of its own."""

    def __init__(self, workdir: Path, *, port: int | None = None, database_url: str | None = None,
                 peers: list[dict] | None = None, **sections: dict) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "node.log"
        dicom = {"ae_title": "CXRNODE", "bind_address": "127.0.0.1", "port": self.port,
                 "peers": peers if peers is not None else [
                     {"ae_title": t, "hosts": ["127.0.0.1"]}
                     for t in ("STORESCU", "ECHOSCU", "FINDSCU", "PYSCU")],
                 "min_free_disk_bytes": 0}
        dicom.update(sections.pop("dicom", {}))
        # No analysis worker unless a test asks for one: most tests are about receiving,
        # and the model would only cost them start-up time.
        # The web service on a free port of its own, so parallel tests never meet on 8080;
        # `cxr-node worker` processes started from this configuration serve none unless
        # a test gives web.worker_port.
        self.web_port = free_port()
        web = {"enabled": True, "bind_address": "127.0.0.1", "port": self.web_port,
               "worker_port": None, **sections.pop("web", {})}
        self.web_port = web["port"] if web["enabled"] else None
        config = {"dicom": dicom, "web": web,
                  "storage": {"data_dir": str(self.data_dir), "database_url": database_url},
                  "completion": {"study_quiet_seconds": 1.0, "check_interval_seconds": 0.1},
                  "worker": {"run_in_serve": False, "device": "cpu"},
                  "sending": {"poll_interval_seconds": 0.1}}
        for name, values in sections.items():
            if isinstance(values, dict):
                config.setdefault(name, {}).update(values)
            else:
                config[name] = values
        self.config_path = self.workdir / "cxr-node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen | None = None

    @property
    def database_url(self) -> str:
        from config.settings import load_settings

        return load_settings(self.config_path, environ={}).storage.resolved_database_url()

    def start(self, timeout: float = 60.0) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([*CXR_NODE, "--config", str(self.config_path), "serve"],
                                        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_port(self.port, timeout, self.process)
            if self.web_port:  # the web service starts after the listener
                wait_for_port(self.web_port, timeout, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"cxr-node did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: what a power cut or the OOM killer does to the process."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class StorescpProcess:
    """dcmtk's storescp: writes what it receives, without fsync."""

    def __init__(self, workdir: Path, aet: str = "STORESCP") -> None:
        self.port = free_port()
        self.output = Path(workdir) / "storescp"
        self.output.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> StorescpProcess:
        self.process = subprocess.Popen(
            [require_tool("storescp"), "-aet", self.aet, "--output-directory", str(self.output),
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, 10, self.process)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


class OrthancProcess(OrthancPacs):
    """Orthanc as the demo starts it, plus what tests need: modalities it may send to,
    fsync before it answers (as cxr-node does), and its REST API."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None,
                 extra_config: dict | None = None) -> None:
        super().__init__(Path(workdir) / "orthanc", aet, extra_config={
            "Name": "cxr-node-test", "SyncStorageArea": True, "StorageCompression": False,
            "DicomModalities": modalities or {}, "HttpServerEnabled": True, "StableAge": 60,
            "LogExportedResources": False, **(extra_config or {})})
        self.port, self.http_port = free_port(), free_port()  # from this test worker's block

    @property
    def dicom_port(self) -> int:
        return self.port

    @property
    def aet(self) -> str:
        return self.ae_title

    def __enter__(self) -> OrthancProcess:
        require_tool("Orthanc")
        self.start()
        wait_for_port(self.dicom_port, 10, self._process)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def get(self, path: str) -> object:
        return self._get(path)

    def post(self, path: str, body: object) -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=100) as r:
            return json.loads(r.read())

    def upload(self, dicom_file: Path) -> str:
        """Store a file through the REST API (as an admin would import it); its Orthanc id."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances",
                                         data=Path(dicom_file).read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())["ID"]

    def download(self, instance_id: str) -> bytes:
        return self._get(f"/instances/{instance_id}/file", raw=True)


def storescu(port: int, files: list[Path], *, aec: str = "CXRNODE", aet: str = "STORESCU",
             extra: list[str] | None = None, timeout: float = 100) -> subprocess.CompletedProcess:
    """Send ``files`` with dcmtk's storescu on one association; returns the finished process."""
    command = [require_tool("storescu"), "-aet", aet, "-aec", aec, *(extra or []),
               "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, *, aec: str = "CXRNODE", aet: str = "ECHOSCU",
            extra: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [require_tool("echoscu"), "-aet", aet, "-aec", aec, *(extra or []),
               "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)
