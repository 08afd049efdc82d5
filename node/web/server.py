"""uvicorn in a daemon thread of a node process, on a socket bound before it starts.

The socket is bound here, in the caller's thread, so that a port in use or a bad address
is the operator's one-line :class:`config.settings.ConfigError` naming the key, not a
uvicorn log line and a ``sys.exit`` inside a thread. uvicorn then runs its own event loop
in its own thread; it installs no signal handlers there, the node's main thread keeps them.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time

import uvicorn

from config.settings import ConfigError, WebSettings
from node.preflight import bind_error
from node.web.client_certificates import ClientCertificateProtocol
from node.web.http_protocol import HttpProtocol

LOGGER = logging.getLogger("cxr_node.web")
STARTUP_TIMEOUT_SECONDS = 15.0


def _bind(web: WebSettings, port: int, key: str) -> socket.socket:
    family = (socket.AF_INET6 if ipaddress.ip_address(web.bind_address).version == 6
              else socket.AF_INET)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's own bind does
    try:
        sock.bind((web.bind_address, port))
    except OSError as exc:
        sock.close()
        raise bind_error("web", web.bind_address, port, key, exc) from None
    return sock


def check_web_address(web: WebSettings, port: int, key: str) -> None:
    """Bind and close a probe socket, so a taken port is refused before a model loads."""
    _bind(web, port, key).close()


class WebServer:
    """Serves ``app`` on ``web.bind_address:port`` until :meth:`stop`."""

    def __init__(self, app, web: WebSettings, port: int, key: str) -> None:  # noqa: ANN001
        self.app = app
        self.web = web
        self.key = key
        self.requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1] if self._socket else self.requested_port

    @property
    def url(self) -> str:
        scheme = "https" if self.web.tls.enabled else "http"
        host = self.web.bind_address
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}/"

    def start(self) -> None:
        tls = self.web.tls
        # Client certificates: asked for, not required (the console's browsers have none);
        # one that is given must verify against the CAs, and reaches the app's scope.
        client_cas = tls.client_ca_certificates if tls.enabled else None
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
            http=ClientCertificateProtocol if client_cas else HttpProtocol,
            ssl_certfile=str(tls.certificate) if tls.enabled else None,
            ssl_keyfile=str(tls.private_key) if tls.enabled else None,
            ssl_cert_reqs=ssl.CERT_OPTIONAL if client_cas else ssl.CERT_NONE,
            ssl_ca_certs=str(client_cas) if client_cas else None,
            timeout_graceful_shutdown=2)
        try:
            config.load()  # builds the TLS context: a bad file is refused here, in one line
        except (ssl.SSLError, OSError) as exc:
            files = ("certificate, private key or client_ca_certificates" if client_cas
                     else "certificate or private key")
            raise ConfigError(f"web.tls: the {files} does not load "
                              f"({getattr(exc, 'reason', None) or exc}); give PEM files whose "
                              "key matches the certificate") from None
        self._socket = _bind(self.web, self.requested_port, self.key)
        self._socket.listen(128)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, name="web",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web service on {self.url} did not start; see the log")
            time.sleep(0.01)
        LOGGER.info("web service on %s", self.url)
        on_started = getattr(getattr(self.app, "state", None), "on_started", None)
        if on_started is not None:
            on_started(self.url)  # e.g. the console's first-admin setup link

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None
