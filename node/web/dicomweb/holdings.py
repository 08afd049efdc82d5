"""What the node holds, as QIDO-RS and WADO-RS show it: received images and its own results.

Two tables name DICOM files: ``instances`` (what peers sent, under ``dicom/``) and
``result_objects`` (the SR, GSPS and SC this node wrote, under ``results/``). A viewer must
see both as one study, or it would show the images without the findings, so both are read
into :class:`HeldInstance`. A result that came back to the node (a PACS forwarding it) is in
both tables and is listed once. An instance whose file retention deleted is no longer held.

The database has the attributes a search needs most (patient, accession, date, modality);
the rest of what PS3.18 asks a search to return (study time, referring physician, birth
date, sex, instance number, rows...) is read from the files' headers, which
:class:`HeaderCache` reads once (``stop_before_pixels``: a few kilobytes of a 10 MB image)
and keeps while the file is unchanged. The alternative, new columns filled at ingest,
would need a migration and a back-fill of every stored study, and still not cover
``includefield`` of any attribute.

Files are opened only from these rows' paths, joined to the data directory and checked to
stay inside it: a URL never becomes a path.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.web.dicomweb.json_model import JsonDataset, dataset_json
from storage.models import Instance, ResultKind, ResultObject, Series, Study

LOGGER = logging.getLogger("cxr_node.web.dicomweb")
HEADER_CACHE_ENTRIES = 4096
_IN_CHUNK = 500  # ids per IN (...): well under SQLite's variable limit
# What the node writes for each kind of result (node.results): the SR and its "not
# analysed" twin, the GSPS, and highdicom's Secondary Capture, whose Modality is OT.
RESULT_MODALITY = {ResultKind.SR: "SR", ResultKind.NOT_ANALYSED_SR: "SR",
                   ResultKind.GSPS: "PR", ResultKind.SC: "OT"}


class UnreadableFile(RuntimeError):
    """A file the database names is missing or is not DICOM: a storage fault, not a 404."""


@dataclass(frozen=True)
class HeldStudy:
    """A study row: what the database knows of the study."""

    id: int
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None


@dataclass(frozen=True)
class HeldInstance:
    """One instance that a viewer may read, received or written by the node (``ours``)."""

    study: HeldStudy
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str  # relative to the data directory
    modality: str | None
    series_number: int | None
    series_description: str | None
    ours: bool


@dataclass(frozen=True)
class Header:
    """An instance's attributes before its pixel data, as DICOM JSON, and how its pixel
    data is encoded (WADO-RS frames and the BulkDataURI need both)."""

    model: JsonDataset
    transfer_syntax_uid: str
    has_pixels: bool
    pixel_vr: str
    frames: int


def study_of(row: Study) -> HeldStudy:
    return HeldStudy(row.id, row.study_uid, row.patient_id, row.patient_name,
                     row.accession_number, row.study_date, row.study_description)


class HeaderCache:
    """Headers read from disk, kept (up to ``entries``) while a file's size and mtime stay.

    Shared by the web service's threads, hence the lock; what it hands out is never
    changed by a caller (answers copy the dict they extend).
    """

    def __init__(self, data_dir: Path, entries: int = HEADER_CACHE_ENTRIES) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.entries = entries
        self._headers: collections.OrderedDict[tuple, Header] = collections.OrderedDict()
        self._lock = threading.Lock()

    def file(self, relative: str) -> Path:
        """The file a row names, refusing any path that leaves the data directory."""
        target = (self.data_dir / relative).resolve()
        if not target.is_relative_to(self.data_dir):
            raise UnreadableFile(f'stored path "{relative}" leaves the data directory')
        return target

    def header(self, held: HeldInstance) -> Header:
        path = self.file(held.path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise UnreadableFile(f"{held.sop_instance_uid}: {path} is missing ({exc})") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            header = self._headers.get(key)
            if header is not None:
                self._headers.move_to_end(key)
                return header
        header = _read_header(path, held.sop_instance_uid)
        with self._lock:
            self._headers[key] = header
            while len(self._headers) > self.entries:
                self._headers.popitem(last=False)
        return header


def _read_header(path: Path, sop_instance_uid: str) -> Header:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise UnreadableFile(f"{sop_instance_uid}: {path} does not read as DICOM "
                             f"({exc})") from None
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    # The Image Pixel Module (PS3.3 C.7.6.3) has Rows and Columns with the Pixel Data;
    # an SR or a presentation state has neither.
    has_pixels = "Rows" in ds and "Columns" in ds
    bits = int(ds.get("BitsAllocated") or 8)
    pixel_vr = "OB" if syntax.is_encapsulated or bits <= 8 else "OW"
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return Header(dataset_json(ds), str(syntax), has_pixels, pixel_vr, max(frames, 1))


def study_rows(session: Session, study_uids: Iterable[str]) -> list[Study]:
    return list(session.scalars(select(Study).where(Study.study_uid.in_(list(study_uids)))))


def held_instances(session: Session, studies: list[HeldStudy],
                   cache: HeaderCache) -> list[HeldInstance]:
    """Every instance of ``studies`` a viewer may read, in study, series, instance order.

    A result's series number and description are in its file only (the result_objects
    row has neither); results are a handful per study and their headers are cached.
    """
    by_id = {study.id: study for study in studies}
    held: dict[str, HeldInstance] = {}
    ids = list(by_id)
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        for result in session.scalars(select(ResultObject)
                                      .where(ResultObject.study_id.in_(chunk))
                                      .order_by(ResultObject.id)):
            held[result.sop_instance_uid] = _result(by_id[result.study_id], result, cache)
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.path,
                   Series.series_uid, Series.modality, Series.series_number,
                   Series.series_description, Series.study_id)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.study_id.in_(chunk), Instance.purged_at.is_(None))
            .order_by(Series.study_id, Series.series_number, Series.id, Instance.id))
        for row in rows:
            if row.sop_instance_uid not in held:  # a result that came back: listed once
                held[row.sop_instance_uid] = HeldInstance(
                    by_id[row.study_id], row.series_uid, row.sop_class_uid,
                    row.sop_instance_uid, row.path, row.modality, row.series_number,
                    row.series_description, ours=False)
    order = {study.id: n for n, study in enumerate(studies)}
    return sorted(held.values(), key=lambda h: (order[h.study.id], h.ours))


def _result(study: HeldStudy, result: ResultObject, cache: HeaderCache) -> HeldInstance:
    """A result row, with its series' number and description from its file."""
    held = HeldInstance(study, result.series_instance_uid, result.sop_class_uid,
                        result.sop_instance_uid, result.path,
                        RESULT_MODALITY.get(result.kind), None, None, ours=True)
    try:
        model = cache.header(held).model
    except UnreadableFile as exc:
        LOGGER.warning("a result of study %s is not readable: %s", study.study_uid, exc)
        return held
    return dataclasses.replace(held, modality=_str(model.get("00080060")) or held.modality,
                               series_number=_int(model.get("00200011")),
                               series_description=_str(model.get("0008103E")))


def _int(element: dict | None) -> int | None:
    try:
        return int(element["Value"][0]) if element and element.get("Value") else None
    except (TypeError, ValueError):
        return None


def _str(element: dict | None) -> str | None:
    return str(element["Value"][0]) if element and element.get("Value") else None
