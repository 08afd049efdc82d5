"""The ASGI application: health, readiness and metrics, and the console's pages.

Every endpoint that touches the database or the disk is a plain function, which Starlette
runs in its thread pool: a slow database delays that answer, never the event loop, and the
web service runs in threads of its own, so it never blocks the DICOM listener or the worker.

``/healthz`` and ``/readyz`` are open (an orchestrator has no account), ``/metrics`` asks
for ``web.metrics_token`` when one is set, ``/`` shows only what the configuration file
says. Everything else is the console, each route behind :func:`node.web.auth.require`.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from config.settings import Settings
from node.metrics import NodeMetrics
from node.viewer import DEFAULT_OHIF_DIST
from node.web.audit_page import audit_routes
from node.web.auth import Accounts, auth_routes
from node.web.console import console_routes
from node.web.dicomweb.holdings import HeaderCache
from node.web.dicomweb.qido import qido_routes
from node.web.dicomweb.wado import wado_routes
from node.web.health import Readiness
from node.web.labels_page import labels_routes
from node.web.limits import FormBodyLimit
from node.web.models_page import model_routes
from node.web.ohif import ohif_routes
from node.web.overview import ThisProcess
from node.web.scheduler_page import scheduler_routes
from node.web.studies import study_routes

if TYPE_CHECKING:
    from node.web.dicomweb.stow import StowService

TEMPLATES = Path(__file__).parent / "templates"
# Routes served without a console login; every other route names its least role, but for
# STOW-RS (node.web.dicomweb), whose senders are DICOMweb peers with tokens, not accounts.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/login", "/setup/{token}"})


def build_app(settings: Settings, readiness: Readiness, metrics: NodeMetrics,
              role: str, accounts: Accounts | None = None,
              process: ThisProcess | None = None,
              ohif_dist: Path | None = DEFAULT_OHIF_DIST,
              stow: StowService | None = None) -> Starlette:
    """The app of one process; ``role`` (serve, worker, web) is shown on its front page.

    With ``accounts`` it serves the console too (``serve`` and ``web``; a worker's port
    serves health and metrics only), and to the same logins the node's studies over
    QIDO-RS and WADO-RS and OHIF (from ``ohif_dist``) reading them. ``process`` tells the
    console's overview what only this process knows (open associations, the worker's
    device). ``stow``: the STOW-RS endpoints of the process that receives (``serve``),
    authenticated by peer tokens.
    """
    templates = Jinja2Templates(directory=str(TEMPLATES))
    token = settings.web.metrics_token

    def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "settings": settings, "role": role, "checks": list(readiness.checks),
            "console": accounts is not None, "user": None})

    def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(_: Request) -> Response:
        ready, checks = readiness.run()
        reasons = [reason for reason in checks.values() if reason != "ok"]
        return JSONResponse({"ready": ready, "checks": checks, "reasons": reasons},
                            status_code=200 if ready else 503)

    def metrics_endpoint(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse("a bearer token is required (web.metrics_token)\n",
                                         status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]
    if stow is not None:
        routes += stow.routes()
    if accounts is not None:
        routes += (auth_routes(accounts, templates)
                   + console_routes(accounts, templates, process)
                   + study_routes(accounts, templates)
                   + scheduler_routes(accounts, templates)
                   + audit_routes(accounts, templates)
                   + model_routes(accounts, templates)
                   + labels_routes(accounts, templates))
        headers = HeaderCache(settings.storage.data_dir)
        routes += (qido_routes(accounts, headers) + wado_routes(accounts, headers)
                   + ohif_routes(accounts, templates, ohif_dist))
    app = Starlette(routes=routes, middleware=[Middleware(FormBodyLimit)])
    # node.web.server.WebServer calls this with its URL once it listens.
    app.state.on_started = accounts.announce if accounts is not None else None
    return app
