"""WADO-RS (PS3.18 10.4): the node's studies for a viewer, its own results among them.

- ``…/metadata`` of a study, series or instance: DICOM JSON of each instance's header,
  its Pixel Data as a ``BulkDataURI`` (``…/bulkdata/7FE00010``), never inline.
- ``/studies/{study}[/series/{series}[/instances/{instance}]]``: the stored files as they
  are, ``multipart/related; type="application/dicom"``, streamed from disk a chunk at a
  time. A file is sent in the transfer syntax it was stored in: a request that names
  another gets 406 (this node does not transcode).
- ``…/frames/{n[,m…]}``: ``multipart/related; type="application/octet-stream"``, one part
  per frame. Uncompressed (Explicit VR Little Endian) by default, decoded from a compressed
  file if need be; with ``transfer-syntax=*`` (what OHIF asks) a compressed file's frames
  go as stored, each part naming its transfer syntax, so the browser decodes them.
- ``…/rendered`` and ``…/frames/{n}/rendered``: one frame as image/jpeg or image/png,
  grey levels as a radiologist sees them (model.preprocess's display pipeline).

Reads of metadata and of whole instances are audited (110103, with the reader's name);
frames, bulk data and renderings are not: they follow a metadata read, and one row per
frame would drown the trail.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from node.web.auth import Accounts
from node.web.dicomweb.access import Reader, reader_only
from node.web.dicomweb.holdings import (
    HeaderCache,
    HeldInstance,
    UnreadableFile,
    held_instances,
    study_of,
)
from node.web.dicomweb.json_model import MEDIA_TYPE, PIXEL_DATA, bulk_data, encode
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.files import InvalidUID, validate_uid
from storage.models import Study

LOGGER = logging.getLogger("cxr_node.web.dicomweb")
CHUNK_BYTES = 1024 * 1024
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
ANY_SYNTAX = "*"
_FRAMES = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$")
_QUOTED_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


class WadoError(Exception):
    """An answer other than 200: the status and the reason, sent as text."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type=…; transfer-syntax=…``."""

    media_type: str
    params: dict[str, str]

    def param(self, name: str) -> str | None:
        return self.params.get(name)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The header's media ranges in order (q-values are not weighed: first acceptable wins)."""
    ranges = []
    for part in _QUOTED_SPLIT.split(header or ""):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        ranges.append(MediaRange(pieces[0].lower(), params))
    return ranges


def _multipart_of(ranges: list[MediaRange], part_type: str) -> Iterator[MediaRange | None]:
    """Each range that accepts ``multipart/related`` parts of ``part_type``; None for a
    range that accepts anything (``*/*``, ``multipart/*``), or when there is no header."""
    if not ranges:
        yield None
    for media in ranges:
        if media.media_type in ("*/*", "multipart/*"):
            yield None
        elif media.media_type == "multipart/related" and media.param("type") in (
                None, part_type, "*/*", part_type.split("/")[0] + "/*"):
            yield media


def instance_syntax_acceptable(accept: str | None, stored: set[str]) -> bool:
    """Whether the files may go as stored: the client accepts any transfer syntax, or
    names none, or names the one every file has (PS3.18 8.7.3.5)."""
    for media in _multipart_of(parse_accept(accept), DICOM):
        syntax = media.param("transfer-syntax") if media else None
        if syntax in (None, ANY_SYNTAX) or stored == {syntax}:
            return True
    return False


def frame_syntax(accept: str | None, stored: str) -> str | None:
    """The transfer syntax frames go in: the stored one when the client accepts it (``*``
    or by name), Explicit VR Little Endian (uncompressed) when it asks for that or names
    none; None: not acceptable (406)."""
    for media in _multipart_of(parse_accept(accept), OCTET_STREAM):
        syntax = media.param("transfer-syntax") if media else None
        if syntax in (ANY_SYNTAX, stored) and UID(stored).is_encapsulated:
            return stored
        if syntax in (None, ANY_SYNTAX, stored, ExplicitVRLittleEndian):
            # native pixels are the same bytes in any little endian syntax; a big endian
            # (retired) or deflated file is sent as they are once read
            return ExplicitVRLittleEndian
            return ExplicitVRLittleEndian
    return None


def multipart(parts: Iterable[tuple[str, Iterable[bytes]]],
              boundary: str) -> Iterator[bytes]:
    """A multipart/related body (RFC 2387), each part's bytes as they come."""
    for content_type, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _file_chunks(cache: HeaderCache, held: HeldInstance) -> Iterator[bytes]:
    with cache.file(held.path).open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


def frames_of(path, header_syntax: str, numbers: list[int],  # noqa: ANN001 - a Path
              syntax: str) -> list[bytes]:
    """Frames ``numbers`` (1-based) of the file at ``path`` in ``syntax``: as stored, or
    native little endian (decoded when the file is compressed or big endian)."""
    ds = pydicom.dcmread(path)
    stored = UID(header_syntax)
    frames = int(ds.get("NumberOfFrames") or 1)
    if "PixelData" not in ds:
        raise WadoError(404, "this instance has no Pixel Data (7FE0,0010)")
    if max(numbers) > frames:
        raise WadoError(404, f"frame {max(numbers)} asked; the instance has {frames}")
    if stored.is_encapsulated and syntax == stored:
        every = list(generate_frames(ds.PixelData, number_of_frames=frames))
        return [every[n - 1] for n in numbers]
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * samples
    if not stored.is_encapsulated and stored.is_little_endian and (pixels * bits) % 8 == 0:
        size = pixels * bits // 8
        data = ds.PixelData
        return [bytes(data[(n - 1) * size:n * size]) for n in numbers]
    try:
        array = ds.pixel_array
    except Exception as exc:  # each decoder plugin raises its own types
        raise WadoError(406, f"the stored frames ({stored.name}) cannot be decoded here: {exc}; "
                             "ask with transfer-syntax=* for them as stored") from None
    if frames == 1:
        array = array[np.newaxis]
    return [np.ascontiguousarray(array[n - 1], dtype=array.dtype.newbyteorder("<")).tobytes()
            for n in numbers]


def render(path, number: int, accept: str | None) -> tuple[bytes, str]:  # noqa: ANN001
    """Frame ``number`` as JPEG (the default of PS3.18 8.7.4) or PNG: grey levels through
    the display pipeline a radiologist's viewer applies (modality LUT, window, MONOCHROME1),
    colour as stored."""
    wanted = [m.media_type for m in parse_accept(accept)] or ["image/jpeg"]
    kind = next((m for m in wanted if m in ("image/jpeg", "image/png")),
                "image/jpeg" if any(m in ("*/*", "image/*") for m in wanted) else None)
    if kind is None:
        raise WadoError(406, "rendered frames are image/jpeg or image/png")
    from PIL import Image

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise WadoError(404, "this instance has no Pixel Data to render")
    if number != 1 or int(ds.get("NumberOfFrames") or 1) != 1:
        raise WadoError(404, "only single-frame images are rendered here")
    if ds.get("SamplesPerPixel", 1) == 1:
        from model.preprocess import UnsupportedImage, pixels_for_display

        try:
            image = Image.fromarray(np.rint(pixels_for_display(ds) * 255).astype(np.uint8))
        except UnsupportedImage as exc:
            raise WadoError(406, f"cannot render this image: {exc}") from None
    else:
        image = Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG" if kind == "image/jpeg" else "PNG", quality=90)
    return out.getvalue(), kind


def wado_routes(accounts: Accounts, cache: HeaderCache) -> list[Route]:
    """PS3.18 10.4 retrieve resources, each behind :func:`reader_only`."""
    guard = reader_only(accounts)
    db: Database = accounts.db

    def find(request: Request) -> list[HeldInstance]:
        params = request.path_params
        try:
            study_uid = validate_uid(params["study"], "Study Instance UID")
            series_uid = (validate_uid(params["series"], "Series Instance UID")
                          if "series" in params else None)
            sop_uid = (validate_uid(params["instance"], "SOP Instance UID")
                       if "instance" in params else None)
        except InvalidUID as exc:
            raise WadoError(400, str(exc)) from None
        with db.session() as session:
            row = session.scalar(select(Study).where(Study.study_uid == study_uid))
            if row is None:
                raise WadoError(404, f"study {study_uid} is not held by this node")
            held = held_instances(session, [study_of(row)], cache)
        if series_uid is not None:
            held = [h for h in held if h.series_uid == series_uid]
            if not held:
                raise WadoError(404, f"series {series_uid} is not in study {study_uid} here")
        if sop_uid is not None:
            held = [h for h in held if h.sop_instance_uid == sop_uid]
            if not held:
                raise WadoError(404, f"instance {sop_uid} is not in series {series_uid} here")
        if not held:
            raise WadoError(404, f"study {study_uid} has no instance this node can serve")
        return held

    def audit(request: Request, held: list[HeldInstance], what: str) -> None:
        reader: Reader = request.state.reader
        with db.session() as session:
            record(session, AuditEventId.INSTANCES_ACCESSED, "dicomweb-retrieve",
                   Outcome.SUCCESS, f"WADO-RS {what} of {len(held)} instance(s)",
                   peer_address=reader.address, user_name=reader.name,
                   study_uid=held[0].study.study_uid,
                   sop_instance_uid=held[0].sop_instance_uid if len(held) == 1 else None)

    def base(request: Request) -> str:
        return f"{request.base_url}dicomweb"

    def metadata(request: Request) -> Response:
        held = find(request)
        models = []
        for h in held:
            try:
                header = cache.header(h)
            except UnreadableFile as exc:
                if len(held) == 1:
                    raise WadoError(500, f"the stored file cannot be read: {exc}") from None
                LOGGER.error("WADO-RS metadata leaves out %s: %s", h.sop_instance_uid, exc)
                continue
            model = dict(header.model)
            if header.has_pixels:
                model[PIXEL_DATA] = bulk_data(header.pixel_vr, (
                    f"{base(request)}/studies/{h.study.study_uid}/series/{h.series_uid}"
                    f"/instances/{h.sop_instance_uid}/bulkdata/{PIXEL_DATA}"))
            models.append(model)
        audit(request, held, "metadata")
        return Response(encode(models), media_type=MEDIA_TYPE)

    def instances(request: Request) -> Response:
        held = find(request)
        try:
            syntaxes = {cache.header(h).transfer_syntax_uid for h in held}
        except UnreadableFile as exc:
            raise WadoError(500, f"a stored file cannot be read: {exc}") from None
        if not instance_syntax_acceptable(request.headers.get("accept"), syntaxes):
            raise WadoError(406, "instances are sent as stored, in "
                            f"{', '.join(sorted(syntaxes))}; accept transfer-syntax=* or that")
        audit(request, held, "retrieve")
        boundary = secrets.token_hex(16)
        parts = ((f"{DICOM}; transfer-syntax={cache.header(h).transfer_syntax_uid}",
                  _file_chunks(cache, h)) for h in held)
        return StreamingResponse(
            multipart(parts, boundary),
            media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}')

    def one(request: Request) -> tuple[HeldInstance, str]:
        (held,) = find(request)
        try:
            return held, cache.header(held).transfer_syntax_uid
        except UnreadableFile as exc:
            raise WadoError(500, f"the stored file cannot be read: {exc}") from None

    def frames_answer(request: Request, numbers: list[int], whole: bool) -> Response:
        held, stored = one(request)
        syntax = frame_syntax(request.headers.get("accept"), stored)
        if syntax is None:
            raise WadoError(406, f'frames are multipart/related; type="{OCTET_STREAM}", '
                            f"uncompressed or (with transfer-syntax=*) as stored ({stored})")
        if whole:
            numbers = list(range(1, cache.header(held).frames + 1))
        data = frames_of(cache.file(held.path), stored, numbers, syntax)
        if syntax == ExplicitVRLittleEndian and whole:
            data = [b"".join(data)]  # native Pixel Data is one value (PS3.5 8.2)
        boundary = secrets.token_hex(16)
        part_type = f"{OCTET_STREAM}; transfer-syntax={syntax}"
        body = b"".join(multipart(((part_type, [frame]) for frame in data), boundary))
        return Response(body, media_type=(f'multipart/related; type="{OCTET_STREAM}"; '
                                          f"boundary={boundary}"))

    def frames(request: Request) -> Response:
        listed = request.path_params["frames"]
        if not _FRAMES.match(listed):
            raise WadoError(400, f'frames "{listed[:40]}" is not a list of frame numbers '
                            "(1-based, comma-separated)")
        return frames_answer(request, [int(n) for n in listed.split(",")], whole=False)

    def bulkdata(request: Request) -> Response:
        if request.path_params["tag"].upper() != PIXEL_DATA:
            raise WadoError(404, f"bulk data is served for Pixel Data ({PIXEL_DATA}) only")
        return frames_answer(request, [], whole=True)

    def rendered(request: Request) -> Response:
        listed = request.path_params.get("frames", "1")
        if not listed.isdigit():
            raise WadoError(400, f'frame "{listed[:40]}" is not a frame number')
        held, _ = one(request)
        body, kind = render(cache.file(held.path), int(listed), request.headers.get("accept"))
        return Response(body, media_type=kind)

    def endpoint(handler: Callable[[Request], Response]) -> Callable:
        @guard
        async def wado(request: Request) -> Response:
            try:
                return await run_in_threadpool(handler, request)
            except WadoError as exc:
                return PlainTextResponse(f"{exc}\n", status_code=exc.status)

        wado.__name__ = f"wado_{handler.__name__}"
        return wado

    study = "/dicomweb/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    routes = [(study, instances), (study + "/metadata", metadata),
              (series, instances), (series + "/metadata", metadata),
              (instance, instances), (instance + "/metadata", metadata),
              (instance + "/frames/{frames}", frames),
              (instance + "/bulkdata/{tag}", bulkdata),
              (instance + "/rendered", rendered),
              (instance + "/frames/{frames}/rendered", rendered)]
    return [Route(path, endpoint(handler), methods=["GET"]) for path, handler in routes]
