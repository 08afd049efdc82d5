"""multipart/related bodies (RFC 2387 over RFC 2046 5.1), parsed as their bytes arrive.

STOW-RS (PS3.18 10.5) sends instances as the parts of one multipart/related body, which
may be gigabytes long, so the parser never holds a part: it is fed chunks as they come
off the socket and answers with events, the part's bytes in slices, keeping back only
what may be the start of a delimiter split across two chunks. Everything it buffers is
bounded: a part's header block by ``max_header_bytes``, the parts by ``max_parts``.
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
    data: bytes


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
    """

    def __init__(self, boundary: bytes, max_header_bytes: int, max_parts: int) -> None:
        if not boundary:
            raise ValueError("boundary must not be empty")
        self._delimiter = _CRLF + b"--" + boundary
        self.max_header_bytes = max_header_bytes
        self.max_parts = max_parts
        self.parts = 0
        # A delimiter at the very start has no CRLF before it: lend it one.
        self._buffer = bytearray(_CRLF)
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
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: :class:`MultipartError` unless the closing delimiter was seen."""
        if self._state is _State.END:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body holds no boundary delimiter line")
        where = f" in part {self.parts}" if self.parts else ""
        raise MultipartError(f"the body ended{where} before the closing boundary delimiter")

    # -- the states -------------------------------------------------------------------

    def _step(self, events: list[Event]) -> bool:
        """Advance as far as the buffer allows; True if another step may make progress."""
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.AFTER_BOUNDARY:
            return self._after_boundary()
        if self._state is _State.HEADERS:
            return self._headers(events)
        if self._state is _State.BODY:
            return self._body(events)
        self._buffer.clear()  # END: ignore the epilogue
        return False

    def _preamble(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            keep = len(self._delimiter) - 1
            drop = max(0, len(self._buffer) - keep)
            self._skipped += drop
            del self._buffer[:drop]
            if self._skipped > self.max_header_bytes:
                raise MultipartError(f"no boundary delimiter in the first {self._skipped} bytes "
                                     "of the body")
            return False
        del self._buffer[:found + len(self._delimiter)]
        self._state = _State.AFTER_BOUNDARY
        return True

    def _after_boundary(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = _State.END
            self._buffer.clear()
            return False
        end = self._buffer.find(_CRLF)
        if end < 0:
            if len(self._buffer) > _MAX_PADDING:
                raise MultipartError("a boundary delimiter is followed by text, not a line break")
            return False
        if self._buffer[:end].strip(b" \t"):
            raise MultipartError("a boundary delimiter is followed by text, not a line break "
                                 "(does a part contain the boundary?)")
        del self._buffer[:end + 2]
        self.parts += 1
        if self.parts > self.max_parts:
            raise MultipartLimit(f"more than {self.max_parts} parts in one request "
                                 "(dicomweb.max_parts)")
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        if self._buffer.startswith(_CRLF):  # no header fields at all
            del self._buffer[:2]
            events.append(PartStart({}))
            self._state = _State.BODY
            return True
        end = self._buffer.find(_CRLF + _CRLF)
        if end > self.max_header_bytes or (end < 0
                                           and len(self._buffer) > self.max_header_bytes + 4):
            raise MultipartError(f"the headers of part {self.parts} are longer than "
                                 f"{self.max_header_bytes} bytes (dicomweb.max_part_header_bytes)")
        if end < 0:
            return False
        block = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        events.append(PartStart(self._parse_headers(block)))
        self._state = _State.BODY
        return True

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

    def _body(self, events: list[Event]) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                events.append(PartData(bytes(memoryview(self._buffer)[:cut])))  # one copy
                del self._buffer[:cut]
            return False
        if found:
            events.append(PartData(bytes(memoryview(self._buffer)[:found])))
        events.append(PartEnd())
        del self._buffer[:found + len(self._delimiter)]
        self._state = _State.AFTER_BOUNDARY
        return True
