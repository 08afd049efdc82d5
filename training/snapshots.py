"""Dataset snapshots of the site's labelled images, on splits that never change.

Each labelled study is assigned once, by patient, to training, validation or the locked
test set; a patient new to the dataset goes to the test set with probability
``test_fraction`` (a hash of the patient key, so the rate is fixed and the choice
reproducible), to validation with ``validation_fraction``, else to training. A study
keeps its split for ever, so every model version is measured on a test set that only
grows, never on images it was trained on. A snapshot writes each split as a labels file
(training.dataset's format, pointing at the stored images) and records a fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pydicom
from sqlalchemy import select

from config.settings import Settings
from model.vocabulary import Finding
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import DatasetSnapshot, DatasetSplit, Split, Study, utcnow
from training.dataset import LABEL_COLUMNS
from training.label_store import current_labels


def _patient_key(study: Study) -> str:
    return (study.patient_id or f"study:{study.study_uid}")[:64]


def _draw(patient_key: str) -> float:
    """A number in [0, 1) fixed by the patient key alone."""
    digest = hashlib.sha256(f"cxr-node split/{patient_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(db: Database, test_fraction: float, validation_fraction: float) -> int:
    """Give every labelled study without a split one (its patient's, if it has one)."""
    assigned = 0
    with db.session() as session:
        known = {split.patient_key: split.split for split in session.scalars(select(DatasetSplit))}
        has_split = set(session.scalars(select(DatasetSplit.study_id)))
        for study, _, _ in current_labels(session):
            if study.id in has_split:
                continue
            key = _patient_key(study)
            if key not in known:
                draw = _draw(key)
                known[key] = (Split.TEST if draw < test_fraction else Split.VALIDATION
                              if draw < test_fraction + validation_fraction else Split.TRAIN)
            session.add(DatasetSplit(study_id=study.id, patient_key=key, split=known[key]))
            has_split.add(study.id)
            assigned += 1
    return assigned


def create_snapshot(settings: Settings, db: Database, store: DicomFileStore,
                    vocabulary: tuple[Finding, ...]) -> DatasetSnapshot:
    """Freeze the current labels into ``<runs_dir>/snapshots/<time>/<split>/labels.csv``."""
    training = settings.training
    assign_splits(db, training.test_fraction, training.validation_fraction)
    labels = {finding.label for finding in vocabulary}
    root = Path(settings.storage.data_dir) / training.runs_dir / "snapshots" / \
        utcnow().strftime("%Y%m%dT%H%M%S%f")
    rows: dict[Split, list[list]] = {split: [] for split in Split}
    counts: Counter[str] = Counter()
    with db.session() as session:
        splits = dict(session.execute(select(DatasetSplit.study_id, DatasetSplit.split)).all())
        for study, instance, image_labels in current_labels(session):
            boxes = [label for label in image_labels
                     if label.label in labels and label.x1 is not None]
            normal = any(label.normal for label in image_labels)
            if not boxes and not normal:
                continue  # only codes outside the vocabulary, or image-level: not trainable
            path = store.absolute(instance.path)
            header = pydicom.dcmread(path, stop_before_pixels=True)
            common = [str(path), _patient_key(study), study.study_uid, instance.sop_instance_uid,
                      int(header.Rows), int(header.Columns)]
            split = splits[study.id]
            counts[f"{split}.images"] += 1
            if not boxes:
                rows[split].append([*common, "", "", "", "", ""])
            for label in boxes:
                counts[f"{split}.{label.label}"] += 1
                rows[split].append([*common, label.label, label.x1, label.y1, label.x2, label.y2])
    digest = hashlib.sha256()
    for split in Split:
        folder = root / split.value
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LABEL_COLUMNS)
            writer.writerows(rows[split])
        digest.update((folder / "labels.csv").read_bytes())
    with db.session() as session:
        snapshot = DatasetSnapshot(fingerprint=digest.hexdigest(), path=str(root.resolve()),
                                   counts=json.dumps(dict(sorted(counts.items()))))
        session.add(snapshot)
    return snapshot
