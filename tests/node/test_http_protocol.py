"""The web service's HTTP protocol: pinned uvicorn internals, and bodies that arrive intact.

node/web/http_protocol.py hands each body chunk to the app without uvicorn's two copies.
The first tests pin the internals it relies on, so an upgrade fails here rather than
copying again unnoticed (or breaking bodies); the last sends real requests through
:class:`node.web.server.WebServer`.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

import node.web.server
from config.settings import WebSettings
from node.web.http_protocol import HttpProtocol
from node.web.server import WebServer
from tests.ports import free_port


def test_uvicorn_gathers_a_body_as_the_adapter_expects():
    # on_body appends with +=, so an empty bytes takes the chunk itself...
    assert "self.cycle.body += body" in inspect.getsource(HttpToolsProtocol.on_body)
    # ...and receive hands it on with bytes(), which returns a bytes object unchanged,
    # then starts a new gathering (which the adapter sees as empty).
    receive = inspect.getsource(RequestResponseCycle.receive)
    assert '"body": bytes(self.body)' in receive
    assert "self.body = bytearray()" in receive
    assert "self.body = bytearray()" in inspect.getsource(RequestResponseCycle.__init__)
    assert issubclass(HttpProtocol, HttpToolsProtocol)


@pytest.fixture
def serve(monkeypatch):
    """A WebServer whose protocol records what each chunk became, and what the app got."""
    seen: dict[str, list] = {"parsed": [], "gathered": [], "app": []}

    class Recording(HttpProtocol):
        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            seen["parsed"].append(body)
            seen["gathered"].append(self.cycle.body)

    async def digest(request: Request) -> JSONResponse:
        digest = hashlib.sha256()
        async for chunk in request.stream():
            seen["app"].append(chunk)
            digest.update(chunk)
        return JSONResponse({"sha256": digest.hexdigest()})

    monkeypatch.setattr(node.web.server, "HttpProtocol", Recording)
    web = WebSettings(port=free_port(), worker_port=None)
    server = WebServer(Starlette(routes=[Route("/", digest, methods=["POST"])]), web, web.port,
                       "web.port")
    server.start()
    yield server.url, seen
    server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_reaches_the_app_intact_and_uncopied(serve, chunked):
    url, seen = serve
    body = os.urandom(3 * 1024 * 1024 + 17)
    pieces = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]

    answer = requests.post(url, data=iter(pieces) if chunked else body, timeout=30)

    assert answer.json() == {"sha256": hashlib.sha256(body).hexdigest()}
    # What the app got is what was gathered, not a copy of it (Starlette ends with b"")...
    got = [chunk for chunk in seen["app"] if chunk]
    assert got and all(any(chunk is gathered for gathered in seen["gathered"]) for chunk in got)
    # ...and a gathering starts as the parser's own chunk, not a copy.
    starts = [i for i, gathered in enumerate(seen["gathered"])
              if len(gathered) == len(seen["parsed"][i])]
    assert starts and all(seen["gathered"][i] is seen["parsed"][i] for i in starts)
