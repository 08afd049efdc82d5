"""OHIF's pinned version and configuration, and OHIF over Orthanc's DICOMweb for the browser test.

The node serves OHIF itself (:mod:`node.web.ohif`, at ``/viewer/`` on its own DICOMweb,
behind the console login; ``cxr-node demo --viewer`` shows it): from here it takes the
version, where ``make viewer-assets`` puts the prebuilt dist, and OHIF's configuration.

The rest is for ``tests/integration/test_viewer.py``, where Orthanc is the PACS that the
node sends its results to, as at a site: :class:`ViewerServer` serves the prebuilt OHIF
(the npm package ``@ohif/app``) and, on the same origin, forwards ``/dicom-web/`` to
Orthanc's DICOMweb plugin: one origin means no CORS set-up in Orthanc and nothing for the
browser to refuse. It binds 127.0.0.1 and has no authentication: a test harness, not a
deployment.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

from node.demo_pacs import free_port

OHIF_VERSION = "3.13.2"  # the Makefile's OHIF_VERSION; the browser test asserts on it
DEFAULT_OHIF_DIST = Path(__file__).resolve().parent.parent / "var" / "ohif" / OHIF_VERSION / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PROXIED = ("/dicom-web/", "/wado")
PROXY_TIMEOUT_S = 60
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
         ".woff2": "font/woff2", ".html": "text/html; charset=utf-8"}

APP_CONFIG = """window.config = {
  name: '%(title)s',
  routerBasename: '%(basename)s',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: '%(name)s',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: '%(name)s',
    configuration: %(configuration)s,
  }],
};
"""
DATA_SOURCE = {
    "friendlyName": "PACS (Orthanc)",
    "name": "orthanc",
    "wadoUriRoot": "/wado",
    "qidoRoot": "/dicom-web",
    "wadoRoot": "/dicom-web",
    "qidoSupportsIncludeField": False,
    "imageRendering": "wadors",
    "thumbnailRendering": "wadors",
    "enableStudyLazyLoad": True,
    "supportsFuzzyMatching": False,
    "supportsWildcard": True,
    "dicomUploadEnabled": False,
    "omitQuotationForMultipartRequest": True,
    "bulkDataURI": {"enabled": True},
}


def app_config(title: str, basename: str, source: dict) -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source, ``source``, at ``basename``.

    The browser test's viewer (Orthanc behind a proxy) and the node's own (``/viewer/``)
    differ only in these three.
    """
    return APP_CONFIG % {"title": title, "basename": basename, "name": source["name"],
                         "configuration": json.dumps(source, indent=2)}


class ViewerUnavailable(RuntimeError):
    """OHIF's files or Orthanc's DICOMweb plugin are not installed."""


def _missing_ohif(dist: Path) -> list[str]:
    if (dist / "index.html").is_file():
        return []
    return [f"OHIF {OHIF_VERSION} in {dist} (run `make viewer-assets`)"]


def check_ohif(dist: Path = DEFAULT_OHIF_DIST) -> Path:
    """``dist`` if OHIF's prebuilt files are there; otherwise a message saying how to
    fetch them."""
    dist = Path(dist)
    missing = _missing_ohif(dist)
    if missing:
        raise ViewerUnavailable("the viewer needs " + missing[0])
    return dist


def check_viewer(dist: Path = DEFAULT_OHIF_DIST) -> Path:
    """``dist`` if OHIF, Orthanc and its DICOMweb plugin are there; otherwise a message
    saying how to install them."""
    dist = Path(dist)
    missing = _missing_ohif(dist)
    if not DICOMWEB_PLUGIN.is_file():
        missing.append(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} "
                       "(Debian: orthanc-dicomweb)")
    if shutil.which("Orthanc") is None:
        missing.append("Orthanc (Debian: orthanc)")
    if missing:
        raise ViewerUnavailable("the viewer needs " + "; ".join(missing))
    return dist


# Orthanc's configuration for its DICOMweb plugin, at the roots the proxy forwards.
DICOMWEB_CONFIG = {
    "Plugins": [str(DICOMWEB_PLUGIN)],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                 "Ssl": False},
}


class ViewerServer:
    """OHIF's files and a same-origin proxy to Orthanc's DICOMweb, on 127.0.0.1."""

    def __init__(self, dist: Path, orthanc_http_port: int, port: int | None = None) -> None:
        self.dist = check_viewer(dist).resolve()
        self.port = port or free_port()
        self.orthanc_http_port = orthanc_http_port
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def study_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={quote(study_uid)}"

    def start(self) -> ViewerServer:
        handler = type("Handler", (_Handler,), {"viewer": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="viewer", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    viewer: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # a line per file would bury the test's output
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            body = app_config("cxr-node viewer", "/", DATA_SOURCE)
            self._send(200, TYPES[".js"], body.encode())
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        """A file of the dist, or index.html for OHIF's own routes (/viewer, ...)."""
        root = self.viewer.dist
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        self._send(200, kind or "application/octet-stream", target.read_bytes())

    def _proxy(self) -> None:
        """The request to Orthanc, with the browser's Host so that the bulk-data and
        retrieve URLs in Orthanc's answers point back here."""
        connection = http.client.HTTPConnection("127.0.0.1", self.viewer.orthanc_http_port,
                                                timeout=PROXY_TIMEOUT_S)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("accept", "host", "range")}
        try:
            connection.request("GET", self.path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except OSError as error:
            self._send(502, "text/plain", f"Orthanc: {error}".encode())
            return
        finally:
            connection.close()
        self._send(answer.status, answer.getheader("Content-Type", "application/octet-stream"),
                   body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
