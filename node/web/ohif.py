"""OHIF served by the node at ``/viewer/``, reading the node's own DICOMweb (``/dicomweb``).

One origin for the viewer and the data means the console's session cookie (HttpOnly,
SameSite=Strict) authorises OHIF's DICOMweb reads: a radiologist logs in to the console
and opens a study, with no CORS, no token in the page, and no other server. A page of
another site cannot use that cookie.

OHIF's prebuilt ``dist/`` (``make viewer-assets``, the folder :data:`node.viewer.
DEFAULT_OHIF_DIST`) is built to live at the site's root: its page, its stylesheet and
webpack's runtime name files from ``/``. The node's root is its own, so those few
absolute references are rewritten to ``/viewer/`` as the files are served
(:data:`REWRITES`; ``tests/node/test_ohif_assets.py`` pins each one to OHIF's files), and
OHIF's router runs under ``/viewer`` (the study list at ``/viewer/``, a study at
``/viewer/viewer?StudyInstanceUIDs=…``). OHIF's own ``app-config.js`` is replaced by one
naming the node's DICOMweb as the only data source.

Every file, the page included, needs a console login (viewer role or above): without one
the browser goes to the login page and comes back to the same address after it.
"""

from __future__ import annotations

import functools
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from node.viewer import DATA_SOURCE, OHIF_VERSION, app_config
from node.web.auth import Accounts, message_page
from storage.models import UserRole

PREFIX = "/viewer/"
DICOMWEB_ROOT = "/dicomweb"
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
         ".woff2": "font/woff2", ".html": "text/html; charset=utf-8"}
# (suffix, what OHIF's build wrote, what it becomes under /viewer/)
REWRITES = (
    # src=, href= and content= of the page, and its window.PUBLIC_URL="/"
    (".html", b'="/', b'="/viewer/'),
    (".js", b'__webpack_require__.p = "/";', b'__webpack_require__.p = "/viewer/";'),
    (".css", b"url(/", b"url(/viewer/"),
)
# The page and its configuration change with each install; OHIF's other files carry
# a content hash in their names or never change within a version.
NO_STORE = {"Cache-Control": "no-store"}
CACHED = {"Cache-Control": "private, max-age=3600"}

DATA_SOURCE_NAME = "cxr-node"
NODE_DATA_SOURCE = {
    **DATA_SOURCE,
    "friendlyName": "cxr-node",
    "name": DATA_SOURCE_NAME,
    "wadoUriRoot": DICOMWEB_ROOT,  # not used: images are read with WADO-RS (imageRendering)
    "qidoRoot": DICOMWEB_ROOT,
    "wadoRoot": DICOMWEB_ROOT,
    "qidoSupportsIncludeField": True,
}
Endpoint = Callable[[Request], Awaitable[Response]]


def node_app_config() -> bytes:
    return app_config(f"cxr-node viewer (OHIF {OHIF_VERSION})", "/viewer",
                      NODE_DATA_SOURCE).encode()


def study_url(study_uid: str) -> str:
    """Where OHIF shows ``study_uid`` (a path of the node's web service)."""
    return f"{PREFIX}viewer?StudyInstanceUIDs={quote(study_uid)}"


def rewritten(path: Path) -> bytes | None:
    """The file with its root-relative references moved under /viewer/, or None when it
    has none (it is sent from disk as it is)."""
    rules = [(old, new) for suffix, old, new in REWRITES if path.suffix == suffix]
    if not rules:
        return None
    data = path.read_bytes()
    changed = data
    for old, new in rules:
        changed = changed.replace(old, new)
    return changed if changed != data else None


def _login_first(accounts: Accounts, templates: Jinja2Templates) -> Callable[[Endpoint],
                                                                            Endpoint]:
    """Like :func:`node.web.auth.require` (viewer role), but the way back after the login
    keeps the query string: OHIF names the study in it."""
    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            user = await run_in_threadpool(accounts.current, request)
            if user is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}",
                                        status_code=303)
            if not user.role.allows(UserRole.VIEWER):  # every role does today
                return message_page(templates, request, 403, "Not allowed",
                                    "The viewer needs the viewer role.", user)
            request.state.user = user
            return await endpoint(request)

        guarded.required_role = UserRole.VIEWER  # type: ignore[attr-defined]
        return guarded

    return wrap


def ohif_routes(accounts: Accounts, templates: Jinja2Templates,
                dist: Path | None) -> list[Route]:
    """``/viewer`` and everything under it; a page saying how to install OHIF when
    ``dist`` has no ``index.html``."""
    guard = _login_first(accounts, templates)
    root = Path(dist).resolve() if dist is not None else None

    def installed() -> bool:
        return root is not None and (root / "index.html").is_file()

    def page() -> Response:
        body = rewritten(root / "index.html") or (root / "index.html").read_bytes()
        return Response(body, media_type=TYPES[".html"], headers=NO_STORE)

    def serve(request: Request) -> Response:
        if not installed():
            return message_page(templates, request, 404, "Viewer not installed",
                                f"OHIF {OHIF_VERSION} is not in {dist}: run `make "
                                "viewer-assets` on the node, then reload.",
                                request.state.user)
        name = request.path_params.get("path", "")
        if name == "app-config.js":
            return Response(node_app_config(), media_type=TYPES[".js"], headers=NO_STORE)
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            return Response("not found\n", status_code=404, media_type="text/plain")
        if not name or not target.is_file():
            if Path(name).suffix:  # a missing file, not one of OHIF's routes
                return Response("not found\n", status_code=404, media_type="text/plain")
            return page()  # /viewer/, /viewer/viewer?StudyInstanceUIDs=…: OHIF's router
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] \
            or "application/octet-stream"
        body = rewritten(target)
        if body is not None:
            return Response(body, media_type=kind, headers=CACHED)
        return FileResponse(target, media_type=kind, headers=CACHED)

    @guard
    async def viewer_root(request: Request) -> Response:
        return RedirectResponse(PREFIX + (f"?{request.url.query}" if request.url.query
                                          else ""), status_code=303)

    @guard
    async def viewer_file(request: Request) -> Response:
        return await run_in_threadpool(serve, request)

    return [Route("/viewer", viewer_root, methods=["GET"]),
            Route(PREFIX + "{path:path}", viewer_file, methods=["GET"])]
