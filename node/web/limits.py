"""A bound on the body of every console form: nobody's POST can fill the disk or the memory.

Starlette spools a multipart form to temporary files and keeps a urlencoded one in memory,
with no limit on the whole body. The login and setup forms are open to anyone who reaches
the port, so without a bound one request of many gigabytes to ``/login`` would be read,
spooled and parsed before the answer. Every state-changing request to the console is
therefore held to :data:`FORM_BODY_LIMIT` (the forms are a few fields), checked on the
Content-Length before anything is read and counted as a chunked body arrives.

Routes that take large bodies on purpose bound them themselves and are left out: the label
upload (``web.max_upload_bytes``, :mod:`node.web.labels_page`) and DICOMweb, whose parts are
bounded one by one as they stream to disk.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FORM_BODY_LIMIT = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths that bound their own bodies.
OWN_BOUND = ("/console/labels/import", "/dicomweb/")


class BodyTooLarge(Exception):
    """The request body went past its bound while it was being read."""


def _refusal(limit: int) -> PlainTextResponse:
    return PlainTextResponse(f"request body larger than {limit} bytes: refused\n",
                             status_code=413, headers={"Connection": "close"})


class FormBodyLimit:
    """ASGI middleware: 413 for a POST (PUT, PATCH, DELETE) body past ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int = FORM_BODY_LIMIT,
                 own_bound: tuple[str, ...] = OWN_BOUND) -> None:
        self.app, self.limit, self.own_bound = app, limit, own_bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] in SAFE_METHODS
                or scope["path"].startswith(self.own_bound)):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _refusal(self.limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await _refusal(self.limit)(scope, receive, send)
