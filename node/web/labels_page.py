"""The console's Labels page: the label batches, and an admin's import of a labels file.

A label batch is one labelling of one study (a radiologist's SR, or the rows of an
imported file about that study); a newer batch of a study supersedes the older ones, which
stay as history. An import writes one batch per study it matches, all at one time, and
its audit row (``110100 labels-imported``) carries that time and the file's SHA-256: that
is how the page names who imported a batch (see :func:`training.label_store.import_file`).
Rows whose image the node does not hold are reported and not kept, so there is no "waiting
for its images" state: such a file is imported again once the images have arrived.

The upload goes through :func:`training.label_store.import_file`, the function behind
``cxr-node labels import``: the same parsing, the same all-or-nothing validation and the
same line-numbered errors. Its size is bounded (``web.max_upload_bytes``) before any of it
is read, Starlette spools the file part to a temporary file, and the import reads a copy
under ``<data_dir>/incoming/`` that is removed whatever happens (and, after a crash, at the
next start with the other unfinished files there).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import quote

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import Message

from node.web.auth import Accounts, Endpoint, client_address, message_page, require
from node.web.limits import BodyTooLarge
from storage.files import DicomFileStore
from storage.models import (
    AuditEvent,
    DatasetSnapshot,
    Instance,
    Label,
    LabelBatch,
    ModelVersion,
    Study,
    UserRole,
)
from training.label_store import FORMATS, IntakeSummary, import_file
from training.labels import LabelImportError

BATCHES_SHOWN = 200
LABELS_SHOWN = 500  # of one batch, on its page
PROBLEMS_SHOWN = 200  # of a refused file; the count says how many more
NAME_CHARS = 128  # LabelBatch.labeller holds the file name
COPY_BLOCK = 1 << 20
FORMAT_TITLES = {
    "nih": "NIH ChestX-ray8 box list (BBox_List_2017.csv)",
    "vindr": "VinDr-CXR (image_id, class_name, class_id, rad_id, x_min, …)",
    "csv": "CSV (sop_instance_uid, label, x1, y1, x2, y2[, reader])",
}
FORMAT_CHOICES = tuple((fmt, FORMAT_TITLES[fmt]) for fmt in FORMATS)  # the CLI's choices


def _size_words(size: int) -> str:
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size / 1024:g} KiB"


def bounded_body(limit: int, accounts_: Accounts,
                 templates: Jinja2Templates) -> Callable[[Endpoint], Endpoint]:
    """Refuse (413) a request body past ``limit`` bytes before anything has read it all.

    It wraps :func:`require`, which reads the form for its CSRF field, so the bound is in
    place before the first byte is parsed. A Content-Length past the limit is refused
    unread; a body without one (chunked) is counted as it arrives and refused at the
    first block past the limit, Starlette's parser closing the files it spooled. The
    form's spooled files are closed here too, when the request is done.
    """
    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)  # keeps require's required_role
        async def bounded(request: Request) -> Response:
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                return await too_large(request)
            received = 0

            async def receive() -> Message:
                nonlocal received
                message = await request.receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge
                return message

            counted = Request(request.scope, receive)
            try:
                return await endpoint(counted)
            except BodyTooLarge:
                return await too_large(request)
            finally:
                await counted.close()

        return bounded

    async def too_large(request: Request) -> Response:
        user = await run_in_threadpool(accounts_.current, request)
        response = message_page(templates, request, 413, "File too large",
                                f"The upload is larger than {_size_words(limit)} "
                                "(web.max_upload_bytes); nothing was imported.", user)
        response.headers["Connection"] = "close"  # the rest of the body is not read
        return response

    return wrap


def _file_name(given: str) -> str:
    """The name without a client's folders (some browsers send a full Windows path)."""
    name = given.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:NAME_CHARS] or "upload"


def _batch_words(ids: Sequence[int]) -> str:
    studies = f"{len(ids)} {'study' if len(ids) == 1 else 'studies'}"
    if len(ids) == 1:
        return f"batch {ids[0]} ({studies})"
    low, high = min(ids), max(ids)
    if high - low + 1 == len(ids):
        return f"batches {low}-{high} ({studies})"
    shown = ", ".join(map(str, sorted(ids)[:5]))
    return f"batches {shown}{f' and {len(ids) - 5} more' if len(ids) > 5 else ''} ({studies})"


def import_notice(summary: IntakeSummary, name: str) -> str:
    """What the page says after an import: the labels, their batches, what was left out."""
    words = [f"imported {summary.labels} labels from {name} as "
             f"{_batch_words(summary.batch_ids)}" if summary.batch_ids
             else f"imported nothing from {name}: no row matches a stored image"]
    if summary.unmatched_keys:
        words.append(f"{len(summary.unmatched_keys)} image keys match no stored image (such "
                     f"as {summary.unmatched_keys[0][:64]}); their rows are not kept, so "
                     "import the file again once those images have arrived")
    if summary.unmapped_codes:
        words.append(f"{len(summary.unmapped_codes)} codes outside the model's vocabulary "
                     "kept unmapped")
    return "; ".join(words)


def _importers(session: Session, batches: Sequence[LabelBatch]) -> dict[int, AuditEvent]:
    """The audit row of the import that wrote each imported batch, by batch id.

    An import's batches and its audit row share one time, and the row names the file's
    SHA-256; batches imported before that rule simply have none.
    """
    times = sorted({b.created_at for b in batches if b.source != "sr"})
    if not times:
        return {}
    events: dict[datetime, list[AuditEvent]] = defaultdict(list)
    for event in session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "labels-imported", AuditEvent.occurred_at.in_(times))):
        events[event.occurred_at].append(event)
    found = {}
    for batch in batches:
        for event in events.get(batch.created_at, ()):
            if f"(sha256 {batch.source_reference})" in event.message:
                found[batch.id] = event
    return found


def _snapshots_while_current(session: Session,
                             batches: Sequence[LabelBatch]) -> dict[int, list[dict[str, Any]]]:
    """Per batch, the dataset snapshots taken while it was current, and their models.

    Snapshots do not list their batches, so this is read from the times: a snapshot
    freezes every current label, and a batch is current from its creation until a newer
    one of its study. (A batch with only image-level labels or codes outside the
    vocabulary adds no image to a snapshot's training file.)
    """
    snapshots = session.execute(select(DatasetSnapshot.id, DatasetSnapshot.created_at)
                                .order_by(DatasetSnapshot.created_at)).all()
    if not snapshots:
        return {}
    models: dict[int, list[str]] = defaultdict(list)
    for snapshot_id, name, version, state in session.execute(
            select(ModelVersion.snapshot_id, ModelVersion.name, ModelVersion.version,
                   ModelVersion.state).where(ModelVersion.snapshot_id.is_not(None))
            .order_by(ModelVersion.id)):
        models[snapshot_id].append(f"{name} {version} ({state})")
    used = {}
    for batch in batches:
        used[batch.id] = [
            {"id": snapshot_id, "created_at": taken, "models": models.get(snapshot_id, [])}
            for snapshot_id, taken in snapshots
            if taken >= batch.created_at
            and (batch.superseded_at is None or taken < batch.superseded_at)]
    return used


def _batch_row(batch: LabelBatch, study_uid: str, counts: tuple[int, int],
               importer: AuditEvent | None, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": batch.id, "study_uid": study_uid, "source": batch.source,
            "labeller": batch.labeller, "reference": batch.source_reference,
            "created_at": batch.created_at, "superseded_at": batch.superseded_at,
            "labels": counts[0], "images": counts[1],
            "imported_by": importer.user_name if importer else None,
            "import_message": importer.message if importer else None,
            "snapshots": snapshots}


def labels_overview(session: Session) -> dict[str, Any]:
    """The newest batches with their counts, importer and snapshots; the totals."""
    rows = session.execute(select(LabelBatch, Study.study_uid).join(Study)
                           .order_by(LabelBatch.id.desc()).limit(BATCHES_SHOWN)).all()
    batches = [batch for batch, _ in rows]
    counts = {batch_id: (labels, images) for batch_id, labels, images in session.execute(
        select(Label.batch_id, func.count(Label.id), func.count(distinct(Label.instance_id)))
        .where(Label.batch_id.in_([b.id for b in batches])).group_by(Label.batch_id))}
    importers = _importers(session, batches)
    snapshots = _snapshots_while_current(session, batches)
    totals = {
        "batches": session.scalar(select(func.count(LabelBatch.id))),
        "current": session.scalar(select(func.count(LabelBatch.id))
                                  .where(LabelBatch.superseded_at.is_(None))),
        "labels": session.scalar(select(func.count(Label.id))),
    }
    return {"totals": totals, "shown": BATCHES_SHOWN, "batches": [
        _batch_row(batch, study_uid, counts.get(batch.id, (0, 0)), importers.get(batch.id),
                   snapshots.get(batch.id, [])) for batch, study_uid in rows]}


def batch_detail(session: Session, batch_id: int) -> dict[str, Any] | None:
    """One batch, its labels (the first LABELS_SHOWN) and what superseded it; None if none."""
    row = session.execute(select(LabelBatch, Study.study_uid).join(Study)
                          .where(LabelBatch.id == batch_id)).first()
    if row is None:
        return None
    batch, study_uid = row
    labels = session.execute(select(Label, Instance.sop_instance_uid).join(Instance)
                             .where(Label.batch_id == batch_id).order_by(Label.id)
                             .limit(LABELS_SHOWN)).all()
    count, images = session.execute(
        select(func.count(Label.id), func.count(distinct(Label.instance_id)))
        .where(Label.batch_id == batch_id)).one()
    later = (session.scalar(select(func.min(LabelBatch.id)).where(
        LabelBatch.study_id == batch.study_id, LabelBatch.id > batch.id))
        if batch.superseded_at else None)
    return {"batch": _batch_row(batch, study_uid, (count, images),
                                _importers(session, [batch]).get(batch.id),
                                _snapshots_while_current(session, [batch]).get(batch.id, [])),
            "superseded_by": later, "shown": LABELS_SHOWN, "labels": [
                {"sop_uid": sop_uid, "label": label.label, "code": (
                    f"{label.code_scheme}:{label.code_value} {label.code_meaning or ''}".strip()
                    if label.code_value else ""), "normal": label.normal,
                 "box": (label.x1, label.y1, label.x2, label.y2) if label.x1 is not None
                 else None, "reader": label.reader}
                for label, sop_uid in labels]}


def labels_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    """/console/labels (viewer), a batch's page (viewer), and the import (admin)."""
    db = accounts_.db
    settings = accounts_.settings
    limit = settings.web.max_upload_bytes

    def overview() -> dict[str, Any]:
        with db.session() as session:
            return labels_overview(session)

    async def page(request: Request, status: int = 200, **refusal: Any) -> Response:
        user = request.state.user
        context = await run_in_threadpool(overview)
        return templates.TemplateResponse(request, "labels.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "formats": FORMAT_CHOICES, "max_upload": _size_words(limit),
            "notice": request.query_params.get("notice") if status == 200 else None,
            "refused": refusal or None, **context}, status_code=status)

    @require(UserRole.VIEWER, accounts_, templates)
    async def labels(request: Request) -> Response:
        return await page(request)

    def detail(batch_id: int) -> dict[str, Any] | None:
        with db.session() as session:
            return batch_detail(session, batch_id)

    @require(UserRole.VIEWER, accounts_, templates)
    async def batch(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(detail, request.path_params["batch_id"])
        if context is None:
            return message_page(templates, request, 404, "No such label batch",
                                "No label batch has this number.", user)
        return templates.TemplateResponse(request, "label_batch.html", {
            "user": user, **context})

    def import_upload(upload: BinaryIO, name: str, fmt: str, actor: str,
                      address: str | None) -> IntakeSummary:
        """Copy the spooled upload to a file of its own and import it, then remove it."""
        store = DicomFileStore(settings.storage.data_dir)
        incoming = store.new_incoming(limit)
        try:
            while block := upload.read(COPY_BLOCK):
                incoming.write(block)
            incoming.close()
            if incoming.oversize:  # the body's bound comes first; this one never truncates
                raise BodyTooLarge
            return import_file(settings, db, store, incoming.path, fmt, source_name=name,
                               user_name=actor, peer_address=address)
        finally:
            incoming.discard()

    @bounded_body(limit, accounts_, templates)
    @require(UserRole.ADMIN, accounts_, templates)
    async def import_labels(request: Request) -> Response:
        form = await request.form()
        fmt = form.get("format")
        upload = form.get("file")
        if fmt not in FORMATS:
            return await page(request, 400, format=None, problem="Choose the file's format: "
                              + ", ".join(FORMATS) + ". Nothing was imported.")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return await page(request, 400, format=fmt, problem="Choose a file to import. "
                              "Nothing was imported.")
        name = _file_name(upload.filename)
        try:
            summary = await run_in_threadpool(import_upload, upload.file, name, str(fmt),
                                              request.state.user.name, client_address(request))
        except LabelImportError as exc:
            return await page(request, 400, format=fmt, name=name,
                              errors=exc.errors[:PROBLEMS_SHOWN], count=len(exc.errors))
        return RedirectResponse(f"/console/labels?notice={quote(import_notice(summary, name))}",
                                status_code=303)

    return [
        Route("/console/labels", labels, methods=["GET"]),
        Route("/console/labels/{batch_id:int}", batch, methods=["GET"]),
        Route("/console/labels/import", import_labels, methods=["POST"]),
    ]
