"""STOW-RS in (PS3.18 10.5): instances POSTed by DICOMweb peers, through the C-STORE ingest.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a multipart/related
body of application/dicom parts. Each part streams to an incoming file as its bytes
arrive (never the whole body, nor a whole part, in memory) and is then handed to
:class:`node.ingest.Ingest`, the code behind the DIMSE listener: the same checks and
limits, the same durable store (fsync, then commit) and duplicates policy, the same audit
rows and study completion. The answer goes back only once every part has been stored or
refused; a refused part carries the status a C-STORE would get as its Failure Reason.

The body is read with a deadline for each chunk and a bound on all it holds: the
parser's buffer, 1 MiB of a part waiting for its write (the received chunks themselves,
not copies), the parts of a request. Reading overlaps the disk: while one batch of a part
is written, the next is received, and while one part is made durable and registered, the
next is received and written (one of each in flight, in order, so memory stays bounded
and the answer lists the parts in order). A part over ``dicom.max_instance_bytes`` is
refused as it crosses that bound and the rest of the request is not read (the connection
is closed after the answer). Disk writes, the fsync and the commit run in Starlette's
thread pool, never on the event loop.

Served by ``cxr-node serve`` only: the completion monitor, which must not complete a study
while a request is still sending to it, runs there beside the listener.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from config.settings import DicomwebPeer, Settings
from node.ingest import Ingest, StoreRequest, StoreResult
from node.metrics import NodeMetrics
from node.statuses import StoreStatus
from node.web.client_certificates import client_certificate
from node.web.dicomweb.multipart import (
    MultipartError,
    MultipartLimit,
    MultipartParser,
    PartData,
    PartStart,
    check_boundary,
    media_type,
)
from node.web.dicomweb.peers import Peers
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore, IncomingFile, InvalidUID, validate_uid

LOGGER = logging.getLogger("cxr_node.dicomweb")
DICOM_JSON = "application/dicom+json"
PART_TYPE = "application/dicom"
# What an Accept header may ask for and still get our one answer, application/dicom+json.
_ACCEPTABLE = frozenset({"*/*", "application/*", DICOM_JSON, "application/json"})
# Bytes of a part gathered before each write (one thread-pool hop per MiB, not per chunk).
WRITE_BATCH_BYTES = 1024 * 1024
# As the listener allows: the part carries its File Meta Information beside the data set.
FILE_META_ALLOWANCE = 1024
_CLOSE = {"Connection": "close"}
_PARTS_DECIDE = 0


class _Stop(Exception):
    """Ends the reading of a request: ``status`` is the HTTP answer (4xx, with the reason),
    or :data:`_PARTS_DECIDE` where a refused part ended it and the results decide."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Request:
    """One STOW-RS request: who sent it, to which study, and what became of each part."""

    peer: DicomwebPeer
    address: str
    study_uid: str | None
    results: list[StoreResult] = field(default_factory=list)
    # Studies this request holds open in ActiveStudies (node.ingest), released at its end.
    held: set[str] = field(default_factory=set)

    @property
    def stored(self) -> int:
        return sum(1 for r in self.results if r.status == StoreStatus.SUCCESS)


class _Part:
    """A part on its way to disk: its incoming file and the bytes not yet written.

    The bytes wait as the parser's views of the received chunks, not copied into a buffer.
    """

    def __init__(self, incoming: IncomingFile | None) -> None:
        self.incoming = incoming  # None: refused by its headers, its bytes are dropped
        self.pending: list[memoryview] = []
        self.pending_bytes = 0

    @property
    def size(self) -> int:
        return (self.incoming.size if self.incoming else 0) + self.pending_bytes

    @property
    def over_bound(self) -> bool:
        return self.incoming is not None and self.size > self.incoming.max_bytes

    def add(self, data: memoryview) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)

    def take(self) -> list[memoryview]:
        """The bytes not yet written; the part starts a new list for what follows."""
        data, self.pending, self.pending_bytes = self.pending, [], 0
        return data

    def flush(self) -> None:
        data = self.take()
        if self.incoming is not None:
            self.incoming.write_all(data)


def _wrong_type(headers: dict[str, str]) -> bool:
    """A part that is not application/dicom (refused by its headers, its bytes dropped)."""
    return media_type(headers.get("content-type", PART_TYPE))[0] != PART_TYPE


def _acceptable(accept: str | None) -> bool:
    if not accept:
        return True
    return any(media_type(item.strip())[0] in _ACCEPTABLE for item in accept.split(","))


def stow_response(results: list[StoreResult], base_url: str, study_uid: str | None) -> dict:
    """The Store Instances Response (PS3.18 10.5.3) as DICOM JSON (PS3.18 F.2).

    Each stored instance is listed in the Referenced SOP Sequence with its WADO-RS
    Retrieve URL, each refused one in the Failed SOP Sequence with its Failure Reason and,
    as its Error Comment (PS3.7 C.4), the 64 characters a C-STORE would get.
    """
    base = base_url.rstrip("/") + "/dicomweb/studies"
    response = Dataset()
    if study_uid is not None:
        response.RetrieveURL = f"{base}/{study_uid}"
    referenced, failed = [], []
    for result in results:
        item = Dataset()
        if result.sop_class_uid:
            item.ReferencedSOPClassUID = result.sop_class_uid
        if result.sop_instance_uid:
            item.ReferencedSOPInstanceUID = result.sop_instance_uid
        if result.status == StoreStatus.SUCCESS:
            item.RetrieveURL = (f"{base}/{result.study_uid}/series/{result.series_uid}"
                                f"/instances/{result.sop_instance_uid}")
            referenced.append(item)
        else:
            item.FailureReason = int(result.status)
            item.ErrorComment = result.message[:64]
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = referenced
    if failed:
        response.FailedSOPSequence = failed
    return response.to_json_dict()


def http_status(results: list[StoreResult]) -> int:
    """PS3.18 10.5.3: 200 all stored, 202 some refused, 409 none stored."""
    stored = sum(1 for r in results if r.status == StoreStatus.SUCCESS)
    if stored == len(results):
        return 200
    return 202 if stored else 409


class StowService:
    """The STOW-RS endpoints of the receiving node, on its ingest."""

    def __init__(self, settings: Settings, db: Database, store: DicomFileStore, ingest: Ingest,
                 metrics: NodeMetrics) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.ingest = ingest
        self.metrics = metrics
        self.peers = Peers(settings.dicomweb.peers)

    def routes(self) -> list[Route]:
        # Plain routes, not a Mount: the QIDO-RS/WADO-RS GETs on the same paths stay reachable.
        return [Route("/dicomweb/studies", self.store_instances, methods=["POST"]),
                Route("/dicomweb/studies/{study}", self.store_instances, methods=["POST"])]

    async def store_instances(self, request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        peer, why = self.peers.identify(request.headers.get("authorization"),
                                        client_certificate(request.scope))
        if peer is None:
            await run_in_threadpool(self._audit_unauthorised, why, address)
            return PlainTextResponse(f"{why}\n", status_code=401, headers={
                "WWW-Authenticate": 'Bearer realm="dicomweb"', **_CLOSE})
        try:
            study_uid = self._target_study(request)
            boundary = self._check_headers(request)
        except _Stop as stop:
            await run_in_threadpool(self._audit_request, peer, address, None, stop.status,
                                    [], str(stop))
            return PlainTextResponse(f"{stop}\n", status_code=stop.status, headers=_CLOSE)
        stow = _Request(peer, address, study_uid)
        try:
            stop = await self._read(request, boundary, stow)
        finally:
            for uid in stow.held:
                self.ingest.active.release(uid)
        return await self._answer(request, stow, stop)

    # -- the request's headers ---------------------------------------------------------

    @staticmethod
    def _target_study(request: Request) -> str | None:
        study = request.path_params.get("study")
        if study is None:
            return None
        try:
            return validate_uid(study, "the Study Instance UID in the URL")
        except InvalidUID as exc:
            raise _Stop(400, str(exc)) from None

    def _check_headers(self, request: Request) -> bytes:
        """The boundary, or the 4xx that the headers alone already decide."""
        given = request.headers.get("content-type", "")
        kind, params = media_type(given)
        part_type = media_type(params.get("type", PART_TYPE))[0]
        if kind != "multipart/related" or part_type != PART_TYPE:
            raise _Stop(415, f'Content-Type must be multipart/related; type="{PART_TYPE}"; '
                        f"boundary=... (got {given[:120]!r})")
        if not _acceptable(request.headers.get("accept")):
            raise _Stop(406, f"the response is {DICOM_JSON}; the Accept header does not "
                        "allow it")
        try:
            boundary = check_boundary(params.get("boundary"))
        except MultipartError as exc:
            raise _Stop(400, f"not a valid multipart/related request: {exc}") from None
        length = request.headers.get("content-length")
        bound = self.settings.dicomweb.max_request_bytes
        if length is not None and length.isdigit() and int(length) > bound:
            raise _Stop(413, f"Content-Length {length} exceeds dicomweb.max_request_bytes "
                        f"({bound})")
        return boundary

    # -- the body ----------------------------------------------------------------------

    async def _read(self, request: Request, boundary: bytes, stow: _Request) -> _Stop | None:
        """Store or refuse each part as it ends; None once the whole body was read."""
        limits = self.settings.dicomweb
        parser = MultipartParser(boundary, limits.max_part_header_bytes, limits.max_parts)
        part: _Part | None = None
        received = 0
        writing: asyncio.Future | None = None  # the current part's last batch going to disk
        storing: asyncio.Future | None = None  # the previous part being stored

        async def written() -> None:
            nonlocal writing
            if writing is not None:
                batch, writing = writing, None
                await batch

        async def stored() -> None:
            nonlocal storing
            if storing is not None:
                previous, storing = storing, None
                stow.results.append(await previous)

        try:
            while True:
                message = await self._receive(request)
                if message["type"] == "http.disconnect":
                    raise _Stop(400, "the client closed the connection before the body ended")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limits.max_request_bytes:
                    raise _Stop(413, f"the body exceeds dicomweb.max_request_bytes "
                                f"({limits.max_request_bytes})")
                for event in parser.feed(chunk):
                    if isinstance(event, PartStart):
                        if _wrong_type(event.headers):
                            await stored()  # its result first: the answer keeps part order
                        part = await self._open(event.headers, parser.parts, stow)
                    elif isinstance(event, PartData):
                        if part.incoming is None:
                            continue
                        part.add(event.data)
                        if part.over_bound:
                            # Refused now (0xA700, as a C-STORE), not after the rest arrives.
                            await written()
                            await stored()
                            done, part = part, None
                            stow.results.append(await run_in_threadpool(self._store, done, stow))
                            raise _Stop(_PARTS_DECIDE, "a part exceeded the instance size "
                                        "bound; the rest of the request was not read")
                        if part.pending_bytes >= WRITE_BATCH_BYTES:
                            await written()
                            writing = asyncio.ensure_future(
                                run_in_threadpool(part.incoming.write_all, part.take()))
                    else:
                        done, part = part, None
                        if done.incoming is not None:
                            await written()
                            await stored()
                            storing = asyncio.ensure_future(
                                run_in_threadpool(self._store, done, stow))
                if not message.get("more_body", False):
                    parser.close()
                    await stored()
                    return None
        except MultipartLimit as exc:
            await stored()
            return _Stop(413, str(exc))
        except MultipartError as exc:
            await stored()
            return _Stop(400, f"not a valid multipart/related body: {exc}")
        except _Stop as stop:
            await stored()
            return stop
        finally:
            if part is not None and part.incoming is not None:
                # Close and unlink (no thread hop, safe when cancelled), after a write still
                # going to that file has ended.
                if writing is not None and not writing.done():
                    writing.add_done_callback(lambda _, f=part.incoming: f.discard())
                else:
                    part.incoming.discard()

    async def _receive(self, request: Request) -> dict:
        timeout = self.settings.dicomweb.read_timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # no task per chunk, as wait_for makes
                return await request.receive()
        except TimeoutError:
            raise _Stop(408, f"no bytes of the body for {timeout:g} s "
                        "(dicomweb.read_timeout_seconds)") from None

    async def _open(self, headers: dict[str, str], number: int, stow: _Request) -> _Part:
        given = headers.get("content-type", PART_TYPE)
        if _wrong_type(headers):
            result = StoreResult(StoreStatus.CANNOT_UNDERSTAND,
                                 f"part {number} is {given[:60]!r}, not {PART_TYPE}")
            await run_in_threadpool(self._audit_part_refused, result, stow)
            self.metrics.instances_refused.labels(status=f"0x{result.status:04X}").inc()
            stow.results.append(result)
            return _Part(None)
        return _Part(await run_in_threadpool(self._new_incoming))

    def _new_incoming(self) -> IncomingFile:
        """As the listener starts one: nothing is written while the disk is below the floor."""
        dicom = self.settings.dicom
        low_disk = self.store.free_bytes() < dicom.min_free_disk_bytes
        return self.store.new_incoming(0 if low_disk
                                       else dicom.max_instance_bytes + FILE_META_ALLOWANCE)

    def _store(self, part: _Part, stow: _Request) -> StoreResult:
        """Through the C-STORE ingest (a thread-pool thread): durable, or refused and audited."""
        started = time.perf_counter()
        incoming = part.incoming
        try:
            part.flush()
            result = self.ingest.store_instance(incoming, StoreRequest(
                sop_class_uid=None, sop_instance_uid=None, calling_ae_title=stow.peer.name,
                called_ae_title=self.settings.dicom.ae_title, peer_address=stow.address,
                service="STOW-RS", study_uid=stow.study_uid), stow.held)
        except Exception:  # noqa: BLE001 - our failure (database down?): the part fails, logged
            LOGGER.exception("STOW-RS from %s: storing a part failed", stow.peer.name)
            incoming.discard()
            result = StoreResult(StoreStatus.PROCESSING_FAILURE,
                                 "processing failure on the node; retry")
        self.metrics.store_answered(int(result.status), incoming.size,
                                    time.perf_counter() - started)
        return result

    # -- the answer and the audit trail ------------------------------------------------

    async def _answer(self, request: Request, stow: _Request, stop: _Stop | None) -> Response:
        results = stow.results
        if stop is not None and stop.status != _PARTS_DECIDE:
            # The body could not be read to its end: 400, 408 or 413 with the reason.
            reason = str(stop)
            if stow.stored:
                reason += (f"; {stow.stored} instance(s) before that were stored (sending them "
                           "again is acknowledged as a duplicate)")
            await run_in_threadpool(self._audit_request, stow.peer, stow.address,
                                    stow.study_uid, stop.status, results, reason)
            return PlainTextResponse(f"{reason}\n", status_code=stop.status, headers=_CLOSE)
        if not results:
            await run_in_threadpool(self._audit_request, stow.peer, stow.address,
                                    stow.study_uid, 400, results, "no parts")
            return PlainTextResponse("not a valid multipart/related body: it holds no part\n",
                                     status_code=400)
        status = http_status(results)
        await run_in_threadpool(self._audit_request, stow.peer, stow.address, stow.study_uid,
                                status, results, str(stop) if stop else "")
        return JSONResponse(stow_response(results, str(request.base_url), stow.study_uid),
                            status_code=status, media_type=DICOM_JSON,
                            headers=_CLOSE if stop is not None else None)

    def _audit_unauthorised(self, why: str, address: str) -> None:
        """As an unknown calling AE title is: a Security Alert with the source address."""
        LOGGER.warning("STOW-RS from %s refused (401): %s", address, why)
        with self.db.session() as session:
            audit.record(session, AuditEventId.SECURITY_ALERT, "dicomweb-unauthorised",
                         Outcome.MINOR_FAILURE, f"STOW-RS refused (HTTP 401): {why}",
                         called_ae_title=self.settings.dicom.ae_title, peer_address=address)

    def _audit_part_refused(self, result: StoreResult, stow: _Request) -> None:
        """A part refused for its headers, before the ingest saw it (same row as its refusals)."""
        with self.db.session() as session:
            audit.record(session, AuditEventId.INSTANCES_TRANSFERRED, "instance-refused",
                         Outcome.SERIOUS_FAILURE,
                         f"STOW-RS status 0x{result.status:04X}: {result.message}",
                         calling_ae_title=stow.peer.name,
                         called_ae_title=self.settings.dicom.ae_title, peer_address=stow.address)

    def _audit_request(self, peer: DicomwebPeer, address: str, study_uid: str | None,
                       status: int, results: list[StoreResult], reason: str) -> None:
        """One row per request, as an association has one: who, the HTTP status, the counts."""
        stored = sum(1 for r in results if r.status == StoreStatus.SUCCESS)
        message = (f"STOW-RS request answered {status}: {stored} stored, "
                   f"{len(results) - stored} refused" + (f" ({reason})" if reason else ""))
        with self.db.session() as session:
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "stow-request",
                         Outcome.SUCCESS if status == 200 else Outcome.MINOR_FAILURE, message,
                         calling_ae_title=peer.name, called_ae_title=self.settings.dicom.ae_title,
                         peer_address=address, study_uid=study_uid)
