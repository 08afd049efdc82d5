"""uvicorn's httptools protocol, handing a request body to the app without copying it.

uvicorn (0.54) gathers the body bytes that arrive between two ``receive()`` calls of the
app in a bytearray (``self.cycle.body += body``) and hands them on as
``bytes(self.body)``: two copies of every byte received. For STOW-RS, bodies of gigabytes,
they were about a quarter of the event loop's time with the GIL in a py-spy profile of a
410 MB request (docs/figures.md, "STOW-RS ingest").
:class:`HttpProtocol` starts each gathering with an empty ``bytes`` instead: ``b"" +
chunk`` is the chunk itself and ``bytes()`` of a bytes object is that object, so a chunk
as the HTTP parser gave it reaches the app. Chunks that arrive before the app reads are
still joined (one copy, as before); flow control is uvicorn's, unchanged.

The second adapter over uvicorn's internals here (the first: node/web/client_certificates.py),
pinned by tests/node/test_http_protocol.py. Served without it, bodies are copied as before
and nothing else changes.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a body chunk goes to the app as the parser gave it."""

    def on_body(self, body: bytes) -> None:
        if not self.cycle.body:  # the app took what came before (uvicorn: a new bytearray)
            self.cycle.body = b""
        super().on_body(body)
