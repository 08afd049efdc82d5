"""Labels into the database: radiologists' SRs as they arrive, and imported files.

Parsing lives in training.labels; this module finds the images the labels are about,
writes one label batch per study (a newer batch supersedes the older ones, which stay
as history), and audits what was taken, what did not match an image, and which codes
fall outside the model's vocabulary (kept, with an empty label, never dropped).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pydicom
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config.settings import Settings
from model.vocabulary import DEFAULT_FINDINGS, Finding
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import Instance, Label, LabelBatch, Series, Study, utcnow
from training.labels import (
    LabelRecord,
    is_tid1500,
    read_nih_csv,
    read_plain_csv,
    read_sr_labels,
    read_vindr_csv,
)

LOGGER = logging.getLogger("cxr_node.labels")
FORMATS = ("nih", "vindr", "csv")


@dataclass
class IntakeSummary:
    studies: int = 0
    labels: int = 0
    unmatched_keys: list[str] = field(default_factory=list)
    unmapped_codes: list[tuple[str, str, str]] = field(default_factory=list)
    batch_ids: list[int] = field(default_factory=list)  # one per study labelled

    def text(self) -> str:
        parts = [f"{self.labels} labels on {self.studies} studies"]
        if self.unmatched_keys:
            shown = ", ".join(self.unmatched_keys[:5])
            more = len(self.unmatched_keys) - 5
            parts.append(f"{len(self.unmatched_keys)} image keys match no stored image "
                         f"({shown}{f' and {more} more' if more > 0 else ''})")
        if self.unmapped_codes:
            parts.append("codes outside the vocabulary kept unmapped: " + ", ".join(
                f"{scheme} {value} {meaning!r}" for scheme, value, meaning in self.unmapped_codes))
        return "; ".join(parts)


def save_batch(session: Session, study_id: int, source: str, labeller: str, reference: str,
               records: Sequence[tuple[Instance, LabelRecord]],
               at: datetime | None = None) -> LabelBatch:
    """One labelling of a study; earlier current batches of the study become history.

    ``at``: the batches of one import share their time with its audit row (the link from a
    batch to who imported it; :func:`import_file`).
    """
    now = at or utcnow()
    session.execute(update(LabelBatch)
                    .where(LabelBatch.study_id == study_id, LabelBatch.superseded_at.is_(None))
                    .values(superseded_at=now).execution_options(synchronize_session=False))
    batch = LabelBatch(study_id=study_id, source=source, labeller=labeller[:128],
                       source_reference=reference[:128], created_at=now)
    session.add(batch)
    for instance, record in records:
        x1, y1, x2, y2 = record.box if record.box else (None, None, None, None)
        scheme, value, meaning = record.code if record.code else (None, None, None)
        session.add(Label(batch=batch, instance_id=instance.id, label=record.label,
                          code_scheme=scheme, code_value=value,
                          code_meaning=meaning[:128] if meaning else None, normal=record.normal,
                          x1=x1, y1=y1, x2=x2, y2=y2, reader=record.reader))
    session.flush()
    return batch


def _save_by_study(summary: IntakeSummary, session: Session,
                   matched: list[tuple[Instance, LabelRecord]], source: str, labeller: str,
                   reference: str, at: datetime | None = None) -> None:
    """One batch per study; the summary counts them and keeps their ids."""
    by_study: dict[int, list[tuple[Instance, LabelRecord]]] = defaultdict(list)
    for instance, record in matched:
        by_study[instance.series.study_id].append((instance, record))
    for study_id, records in by_study.items():
        batch = save_batch(session, study_id, source, labeller, reference, records, at)
        summary.batch_ids.append(batch.id)
        summary.labels += len(records)
    summary.studies = len(by_study)


def _unmapped(records: Sequence[LabelRecord]) -> list[tuple[str, str, str]]:
    return sorted({r.code for r in records if r.label is None and r.code and not r.normal})


class LabelIntake:
    """Reads TID 1500 SRs stored from peers; a labeller's or a person's SR becomes labels."""

    def __init__(self, settings: Settings, db: Database,
                 vocabulary: Sequence[Finding] = DEFAULT_FINDINGS) -> None:
        self.settings = settings
        self.db = db
        self.vocabulary = tuple(vocabulary)

    def __call__(self, path: Path, calling_ae_title: str) -> IntakeSummary | None:
        ds = pydicom.dcmread(path)
        if not is_tid1500(ds):
            return None
        parsed = read_sr_labels(ds, self.vocabulary)
        from_labeller = calling_ae_title.strip() in self.settings.labels.labeller_ae_titles
        if not (from_labeller or parsed.observer_is_person):
            return None  # another system's report, not a radiologist's labels
        labeller = parsed.observer or calling_ae_title
        summary = IntakeSummary(unmapped_codes=_unmapped(parsed.records))
        with self.db.session() as session:
            instances = _instances_by_uid(session, {r.image_key for r in parsed.records})
            matched = [(instances[r.image_key], r) for r in parsed.records
                       if r.image_key in instances]
            summary.unmatched_keys = sorted({r.image_key for r in parsed.records} - set(instances))
            if not parsed.records and parsed.reviewed_normal:
                summary.unmatched_keys.append("(no referenced image)")
            _save_by_study(summary, session, matched, "sr", labeller, parsed.sop_instance_uid)
            audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "labels-received",
                         Outcome.SUCCESS if matched else Outcome.MINOR_FAILURE,
                         f"SR from {labeller}"
                         + (" (reviewed normal)" if parsed.reviewed_normal else "")
                         + f": {summary.text()}", calling_ae_title=calling_ae_title,
                         study_uid=parsed.study_uid, sop_instance_uid=parsed.sop_instance_uid)
        return summary


def _instances_by_uid(session: Session, uids: set[str]) -> dict[str, Instance]:
    if not uids:
        return {}
    rows = session.scalars(select(Instance).join(Series).where(
        Instance.sop_instance_uid.in_(sorted(uids)), Instance.produced_by_node.is_(False)))
    return {instance.sop_instance_uid: instance for instance in rows}


def _instances_by_attribute(session: Session, store: DicomFileStore,
                            attribute: str) -> dict[str, Instance]:
    """Every stored image keyed by ``attribute``: one header read per image (imports only)."""
    index = {}
    for instance in session.scalars(select(Instance).where(
            Instance.produced_by_node.is_(False))):
        ds = pydicom.dcmread(store.absolute(instance.path), stop_before_pixels=True,
                             specific_tags=[attribute])
        value = str(ds.get(attribute, "") or "").strip()
        if value:
            index[value] = instance
            index.setdefault(Path(value).stem, instance)
    return index


def import_file(settings: Settings, db: Database, store: DicomFileStore, path: Path, fmt: str,
                vocabulary: Sequence[Finding] = DEFAULT_FINDINGS, *,
                source_name: str | None = None, user_name: str | None = None,
                peer_address: str | None = None) -> IntakeSummary:
    """Import a labels file: all or nothing (training.labels.LabelImportError lists bad rows).

    Rows whose image the node does not hold are reported, not imported: a public box list
    covers far more images than a site holds. ``source_name`` is the file's name as its
    owner knows it (the console imports an upload from a temporary file), kept as each
    batch's labeller; ``user_name`` and ``peer_address`` name who imported it in the audit
    row. That row's time is every batch's ``created_at`` and its message carries the file's
    SHA-256 (each batch's ``source_reference``): the schema has no column for the importer,
    and this ties each batch to the import that wrote it without one.
    """
    labels = settings.labels
    if fmt == "nih":
        records = read_nih_csv(path, vocabulary, pneumonia_as=labels.nih_pneumonia_as)
    elif fmt == "vindr":
        records = read_vindr_csv(path, vocabulary, consensus=labels.vindr_consensus,
                                 iou=labels.vindr_iou)
    elif fmt == "csv":
        records = read_plain_csv(path, vocabulary)
    else:
        raise ValueError(f'format "{fmt}" is not one of {", ".join(FORMATS)}')
    reference = _sha256(Path(path))
    name = source_name or Path(path).name
    summary = IntakeSummary(unmapped_codes=_unmapped(records))
    with db.session() as session:
        keys = {r.image_key for r in records}
        if labels.match_attribute == "SOPInstanceUID":
            instances = _instances_by_uid(session, keys)
        else:
            instances = _instances_by_attribute(session, store, labels.match_attribute)
        matched = [(instances[r.image_key], r) for r in records if r.image_key in instances]
        summary.unmatched_keys = sorted(keys - set(instances))
        at = utcnow()
        _save_by_study(summary, session, matched, fmt, name, reference, at)
        event = audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "labels-imported",
                             Outcome.SUCCESS, f"{fmt} file {name} (sha256 {reference}): "
                             f"{summary.text()}", user_name=user_name,
                             peer_address=peer_address)
        event.occurred_at = at  # the batches' time: who imported a batch is found by it
    return summary


def _sha256(path: Path) -> str:
    """In blocks: an upload may be tens of megabytes, and this runs beside the web service."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def current_labels(session: Session) -> list[tuple[Study, Instance, list[Label]]]:
    """The current (not superseded) labels of every labelled image, by study and image."""
    rows = session.execute(
        select(Study, Instance, Label)
        .join(LabelBatch, LabelBatch.study_id == Study.id)
        .join(Label, Label.batch_id == LabelBatch.id)
        .join(Instance, Instance.id == Label.instance_id)
        .where(LabelBatch.superseded_at.is_(None))
        .order_by(Study.id, Instance.id, Label.id)).all()
    grouped: dict[tuple[int, int], tuple[Study, Instance, list[Label]]] = {}
    for study, instance, label in rows:
        grouped.setdefault((study.id, instance.id), (study, instance, []))[2].append(label)
    return list(grouped.values())
