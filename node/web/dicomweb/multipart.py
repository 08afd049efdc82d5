"""multipart/related bodies (RFC 2387 over RFC 2046 5.1), parsed as their bytes arrive.

STOW-RS (PS3.18 10.5) sends instances as the parts of one multipart/related body, which
may be gigabytes long, so the parser never holds a part: it is fed chunks as they come
off the socket and answers with events, the part's bytes as views of those chunks (not
copies), keeping back only what may be the start of a delimiter split across two chunks.
Everything it buffers is bounded: a part's header block by ``max_header_bytes``, the parts
by ``max_parts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from enum import Enum

# RFC 2046 5.1.1: 1-70 characters; a longer one is not a boundary a client may use.
MAX_BOUNDARY_LENGTH = 70
# Transport padding (spaces, tabs) allowed between a boundary and its line break.
_MAX_PADDING = 256
_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not valid multipart (HTTP 400); the message says where it went wrong."""


class MultipartLimit(MultipartError):
    """The body is valid so far but past a configured bound (HTTP 413)."""


@dataclass(frozen=True)
class PartStart:
    """A part begins; header names are lower case (``content-type``)."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """Some of a part's bytes: a read-only view of the chunk fed, which never changes."""

    data: memoryview


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = "preamble"
    AFTER_BOUNDARY = "after boundary"
    HEADERS = "headers"
    BODY = "body"
    END = "end"


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` -> the type, its params.

    The type is lower case ("" for a value that is not a media type), parameter names
    lower case and values unquoted, as RFC 9110 8.3.1 reads them.
    """
    if not value or "/" not in value.split(";", 1)[0]:
        return "", {}
    message = Message()
    message["content-type"] = value
    params = {name.lower(): (val if isinstance(val, str) else str(val))
              for name, val in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), params


def check_boundary(boundary: str | None) -> bytes:
    """The boundary as bytes, or :class:`MultipartError` naming what is wrong with it."""
    if not boundary:
        raise MultipartError("the Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY_LENGTH or not boundary.isascii():
        raise MultipartError(f"the boundary is not 1-{MAX_BOUNDARY_LENGTH} ASCII characters "
                             "(RFC 2046 5.1.1)")
    return boundary.encode("ascii")


class MultipartParser:
    """Push parser: :meth:`feed` chunks, act on the events, :meth:`close` at the end.

    The first delimiter may open the body or follow a preamble; the epilogue after the
    closing delimiter is ignored. A part's body is everything between the blank line
    after its headers and the CRLF before the next delimiter (RFC 2046 5.1.1).

    A part's bytes are not copied: each :class:`PartData` is a read-only view of the chunk
    that carried them. Between chunks the parser keeps only what it cannot decide yet
    (headers not complete, the end of a chunk that may begin a delimiter), and joins it to
    the next chunk.
    """

    def __init__(self, boundary: bytes, max_header_bytes: int, max_parts: int) -> None:
        if not boundary:
            raise ValueError("boundary must not be empty")
        self._delimiter = _CRLF + b"--" + boundary
        self.max_header_bytes = max_header_bytes
        self.max_parts = max_parts
        self.parts = 0
        # A delimiter at the very start has no CRLF before it: lend it one.
        self._held = _CRLF
        self._state = _State.PREAMBLE
        self._skipped = 0

    @property
    def finished(self) -> bool:
        """The closing delimiter was seen."""
        return self._state is _State.END

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes, in order."""
        if self._state is _State.END:
            return []  # the epilogue
        data = bytes(chunk)  # the same object for bytes: the views handed out must not change
        if self._held:
            data, self._held = self._held + data, b""
        events: list[Event] = []
        start = 0
        while True:
            state = self._state
            start = self._STEPS[state](self, data, start, events)
            if self._state is state:  # no further without more bytes
                break
            if self._state is _State.END:
                return events
        self._held = data[start:]  # bounded by each state: see the steps
        return events

    def close(self) -> None:
        """The body ended: :class:`MultipartError` unless the closing delimiter was seen."""
        if self._state is _State.END:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body holds no boundary delimiter line")
        where = f" in part {self.parts}" if self.parts else ""
        raise MultipartError(f"the body ended{where} before the closing boundary delimiter")

    # -- the states: each takes the bytes from ``start`` and returns where it stopped -----

    def _preamble(self, data: bytes, start: int, events: list[Event]) -> int:
        found = data.find(self._delimiter, start)
        if found < 0:
            keep = len(self._delimiter) - 1
            end = max(start, len(data) - keep)
            self._skipped += end - start
            if self._skipped > self.max_header_bytes:
                raise MultipartError(f"no boundary delimiter in the first {self._skipped} bytes "
                                     "of the body")
            return end
        self._state = _State.AFTER_BOUNDARY
        return found + len(self._delimiter)

    def _after_boundary(self, data: bytes, start: int, events: list[Event]) -> int:
        if len(data) - start < 2:
            return start
        if data.startswith(b"--", start):
            self._state = _State.END
            return len(data)
        end = data.find(_CRLF, start)
        if end < 0:
            if len(data) - start > _MAX_PADDING:
                raise MultipartError("a boundary delimiter is followed by text, not a line break")
            return start
        if data[start:end].strip(b" \t"):
            raise MultipartError("a boundary delimiter is followed by text, not a line break "
                                 "(does a part contain the boundary?)")
        self.parts += 1
        if self.parts > self.max_parts:
            raise MultipartLimit(f"more than {self.max_parts} parts in one request "
                                 "(dicomweb.max_parts)")
        self._state = _State.HEADERS
        return end + 2

    def _headers(self, data: bytes, start: int, events: list[Event]) -> int:
        if data.startswith(_CRLF, start):  # no header fields at all
            events.append(PartStart({}))
            self._state = _State.BODY
            return start + 2
        end = data.find(_CRLF + _CRLF, start, start + self.max_header_bytes + 4)
        if end < 0:
            if len(data) - start > self.max_header_bytes + 4:
                raise MultipartError(f"the headers of part {self.parts} are longer than "
                                     f"{self.max_header_bytes} bytes "
                                     "(dicomweb.max_part_header_bytes)")
            return start
        events.append(PartStart(self._parse_headers(data[start:end])))
        self._state = _State.BODY
        return end + 4

    def _parse_headers(self, block: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        last = None
        for line in block.decode("latin-1").split("\r\n"):
            if line[:1] in (" ", "\t") and last is not None:  # obsolete line folding
                headers[last] += " " + line.strip()
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or " " in name:
                raise MultipartError(f"part {self.parts} has a header line that is not "
                                     f'"Name: value": {line[:80]!r}')
            last = name.lower()
            headers[last] = value.strip()
        return headers

    def _body(self, data: bytes, start: int, events: list[Event]) -> int:
        found = data.find(self._delimiter, start)
        end = found if found >= 0 else len(data) - self._delimiter_start(data, start)
        if end > start:
            events.append(PartData(memoryview(data)[start:end]))
        if found < 0:
            return end
        events.append(PartEnd())
        self._state = _State.AFTER_BOUNDARY
        return found + len(self._delimiter)

    def _delimiter_start(self, data: bytes, start: int) -> int:
        """How many bytes at the end of ``data`` may be the start of a delimiter (held back).

        A delimiter begins with CR LF, so only an end from a CR on can begin one.
        """
        at = data.find(b"\r", max(start, len(data) - len(self._delimiter) + 1))
        while at >= 0:
            if self._delimiter.startswith(data[at:]):
                return len(data) - at
            at = data.find(b"\r", at + 1)
        return 0

    _STEPS = {
        _State.PREAMBLE: _preamble,
        _State.AFTER_BOUNDARY: _after_boundary,
        _State.HEADERS: _headers,
        _State.BODY: _body,
    }
