"""``cxr-node dataset import``: a public data set, as published, becomes a training folder.

The folder is what ``cxr-node train`` and ``evaluate`` read: ``images/`` and
``labels.csv`` (:mod:`training.dataset`), with ``import_summary.json`` beside them saying
what was taken, what was left out and why. The published CSV files are read by the label
intake's parsers (:mod:`training.labels`: line-numbered errors, the VinDr class table and
reader consensus), so a file means the same to both imports.

- NIH ChestX-ray8: ``BBox_List_2017.csv`` gives the boxes, ``Data_Entry_2017.csv`` the
  patient, the view and the image-level labels. An image without a box is normal only
  when its labels are "No Finding"; one with findings but no box is left out (as normal it
  would teach the detector that the finding is background). Views other than PA and AP
  are left out (the node analyses only those).
- VinDr-CXR: Kaggle's ``train.csv`` or PhysioNet's ``annotations/annotations_train.csv``
  with several readers per image, merged by the configured consensus, or PhysioNet's
  ``annotations_test.csv``, one consensus reading per image (:func:`read_vindr_csv`);
  Nodule/Mass is split by the box's size in mm where the DICOM has a pixel spacing (30 mm
  or more is a mass). ``--images`` may be PhysioNet's root: ``train/`` and ``test/`` are
  searched below it, and an image id names one ``<image_id>.dicom`` in either.
- Our CSV (``sop_instance_uid,label,x1,y1,x2,y2[,reader][,patient_id]``): DICOM images
  are found by their SOP Instance UID, PNG and JPEG ones by their name without suffix.

Boxes of classes outside the vocabulary are counted and dropped; an image left with none
of its boxes is left out. Image files are hard-linked (the sets are tens of GB) or, across
file systems, copied; they stay as published (:mod:`model.image_file` says why). Only
headers are read here: the pixels are decoded by training. Everything is checked first and
written into a hidden folder beside ``out``, renamed at the end: a failure leaves nothing
(a killed process, at most that hidden ``.OUT.*.partial`` folder).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from model.image_file import is_dicom, is_picture, picture_size
from model.preprocess import UnsupportedImage, check_supported, pixel_spacing_mm
from model.vocabulary import DEFAULT_FINDINGS, Finding
from training.dataset import (
    LABEL_COLUMNS,
    LabelledBox,
    LabelledImage,
    read_labels_csv,
    split_by_patient,
)
from training.labels import (
    LabelImportError,
    LabelRecord,
    match_finding,
    read_nih_csv,
    read_nih_data_entry,
    read_plain_csv,
    read_plain_csv_patients,
    read_vindr_csv,
)

FORMATS = ("nih", "vindr", "csv")
VIEWS = ("PA", "AP")
MASS_MM = 30.0  # Fleischner glossary: a nodule is up to 3 cm, a mass larger
SUMMARY = "import_summary.json"


class DatasetImportError(ValueError):
    """Nothing was written; each line of the message is one problem."""


@dataclass
class Candidate:
    """An image the labels want, before its file is found: boxes, or normal."""

    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    normal: bool = False
    patient: str | None = None
    view: str | None = None


@dataclass
class Plan:
    """What the labels files ask for, by image key, and the counts of what they leave out."""

    candidates: dict[str, Candidate] = field(default_factory=dict)
    left_out: Counter = field(default_factory=Counter)
    outside_vocabulary: Counter = field(default_factory=Counter)  # boxes per class
    partly_boxed: int = 0  # NIH: a vocabulary finding of the image has no box
    nodule_mass: Counter = field(default_factory=Counter)  # VinDr: how Nodule/Mass split


def import_dataset(fmt: str, labels_file: Path, images: Path, out: Path, *,
                   data_entry: Path | None = None, test_fraction: float = 0.0, seed: int = 0,
                   vocabulary: Sequence[Finding] = DEFAULT_FINDINGS,
                   pneumonia_as: str | None = "Infiltration", consensus: str = "majority",
                   iou: float = 0.4) -> dict:
    """Write the training folder ``out``; return the summary (also in ``out``)."""
    labels_file, images, out = Path(labels_file), Path(images), Path(out)
    _check_arguments(fmt, labels_file, images, out, data_entry, test_fraction)
    plan = _plan(fmt, labels_file, data_entry, vocabulary, pneumonia_as, consensus, iou)
    index, problems = _index(images, fmt)
    chosen, missing, problems = _images(fmt, plan, index, images, vocabulary, problems)
    if problems:
        raise DatasetImportError("\n".join(problems))
    if not chosen:
        raise DatasetImportError(f"no image to import: none of the {len(plan.candidates)} "
                                 f"images the labels keep is under {images}")
    test: list[LabelledImage] = []
    train_images = chosen
    if test_fraction:
        train_images, test = split_by_patient(chosen, test_fraction, seed)
        if not test:
            raise DatasetImportError(f"--test-fraction {test_fraction} leaves no patient for "
                                     f"the test split ({_patients(chosen)} patients)")
    summary = _summary(fmt, labels_file, data_entry, images, consensus, plan, chosen, missing,
                       index, train_images, test)
    _write(out, images, vocabulary, chosen, train_images, test, summary)
    return summary


def _check_arguments(fmt: str, labels_file: Path, images: Path, out: Path,
                     data_entry: Path | None, test_fraction: float) -> None:
    if fmt not in FORMATS:
        raise DatasetImportError(f'format "{fmt}" is not one of {", ".join(FORMATS)}')
    if (fmt == "nih") != (data_entry is not None):
        raise DatasetImportError("--data-entry (NIH Data_Entry_2017.csv) goes with --format "
                                 "nih, and only with it")
    for path in (labels_file, data_entry):
        if path is not None and not Path(path).is_file():
            raise DatasetImportError(f"{path} is not a file")
    if not images.is_dir():
        raise DatasetImportError(f"--images {images} is not a folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetImportError(f"--out {out} exists and is not an empty folder; give a new "
                                 "one")
    if not 0 <= test_fraction < 1:
        raise DatasetImportError(f"--test-fraction {test_fraction} must be in [0, 1)")


# --------------------------------------------------------------------------- labels


def _plan(fmt: str, labels_file: Path, data_entry: Path | None,
          vocabulary: Sequence[Finding], pneumonia_as: str | None, consensus: str,
          iou: float) -> Plan:
    """Which images to take, with what; every bad row of every file, or a plan."""
    failures: list[str] = []
    entries = patients = None

    def attempt(read, *args, **kwargs):  # noqa: ANN001, ANN202
        try:
            return read(*args, **kwargs)
        except LabelImportError as exc:
            failures.append(str(exc))
            return None

    if fmt == "nih":
        records = attempt(read_nih_csv, labels_file, vocabulary, pneumonia_as=pneumonia_as)
        entries = attempt(read_nih_data_entry, data_entry)
    elif fmt == "vindr":
        records = attempt(read_vindr_csv, labels_file, vocabulary, consensus=consensus,
                          iou=iou)
    else:
        records = attempt(read_plain_csv, labels_file, vocabulary)
        patients = attempt(read_plain_csv_patients, labels_file)
    if failures:
        raise DatasetImportError("\n".join(failures))
    plan = Plan()
    by_image: dict[str, list[LabelRecord]] = defaultdict(list)
    for record in records:
        by_image[record.image_key].append(record)
    if fmt == "nih":
        _plan_nih(plan, by_image, entries, vocabulary, pneumonia_as)
        return plan
    for key, image_records in by_image.items():
        patient = patients.get(key) if patients else None
        _take(plan, key, image_records, Candidate(patient=patient))
    return plan


def _take(plan: Plan, key: str, records: list[LabelRecord], candidate: Candidate) -> bool:
    """Add ``key`` to the plan from its records, or count why not; True when added."""
    candidate.boxes = [(r.label, r.box) for r in records if r.label and r.box]
    candidate.normal = any(r.normal for r in records)
    plan.outside_vocabulary.update(r.code[2] or f"{r.code[0]}:{r.code[1]}"
                                   for r in records if r.label is None and r.code)
    if candidate.normal and candidate.boxes:
        plan.left_out["readers disagree (normal and boxed)"] += 1
    elif not candidate.normal and not candidate.boxes:
        plan.left_out["only findings outside the vocabulary"] += 1
    else:
        plan.candidates[key] = candidate
        return True
    return False


def _plan_nih(plan: Plan, by_image: dict[str, list[LabelRecord]], entries: list,
              vocabulary: Sequence[Finding], pneumonia_as: str | None) -> None:
    """Boxes from the box list; normals and patients from the data entry."""
    listed = {entry.image for entry in entries}
    plan.left_out["boxed, but not in Data_Entry_2017.csv"] = len(set(by_image) - listed)
    for entry in entries:
        if entry.view not in VIEWS:
            plan.left_out[f"view {entry.view}"] += 1
            continue
        candidate = Candidate(patient=entry.patient, view=entry.view)
        if entry.image in by_image:
            if _take(plan, entry.image, by_image[entry.image], candidate):
                named = {_nih_label(text, vocabulary, pneumonia_as) for text in entry.labels}
                plan.partly_boxed += bool(named - {None, *(b[0] for b in candidate.boxes)})
        elif entry.no_finding:
            candidate.normal = True
            plan.candidates[entry.image] = candidate
        else:
            plan.left_out["findings without a box"] += 1
    plan.left_out += Counter()  # drop zero counts


def _nih_label(text: str, vocabulary: Sequence[Finding], pneumonia_as: str | None) -> str | None:
    if text == "Pneumonia":
        return pneumonia_as
    finding = match_finding(text, vocabulary)
    return finding.label if finding else None


# --------------------------------------------------------------------------- image files


def _index(images: Path, fmt: str) -> tuple[dict[str, Path], list[str]]:
    """Image key -> file: NIH by file name ("Image Index"), VinDr by name without suffix
    ("image_id"), our CSV by SOP Instance UID (DICOM) or name without suffix (PNG, JPEG)."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(p for p in images.rglob("*") if p.is_file()):
        if is_picture(path):
            key = path.name if fmt == "nih" else path.stem
        elif fmt != "nih" and is_dicom(path):
            key = path.stem
            if fmt == "csv":
                try:
                    key = str(pydicom.dcmread(path, stop_before_pixels=True)
                              .get("SOPInstanceUID", ""))
                except (InvalidDicomError, OSError) as exc:
                    problems.append(f"{path}: not a readable DICOM file ({exc})")
                    continue
                if not key:
                    problems.append(f"{path}: no SOPInstanceUID to match labels with")
                    continue
        else:
            continue
        if key in found:
            problems.append(f"{path} and {found[key]} are both image {key}")
        found.setdefault(key, path)
    return found, problems


def _images(fmt: str, plan: Plan, index: dict[str, Path], root: Path,
            vocabulary: Sequence[Finding], problems: list[str]) -> tuple[
                list[LabelledImage], list[str], list[str]]:
    """A LabelledImage (path relative to the new folder) per candidate whose file exists."""
    labels = {finding.label for finding in vocabulary}
    chosen, missing = [], []
    for key, candidate in plan.candidates.items():
        path = index.get(key)
        if path is None:
            missing.append(key)
            continue
        try:
            header = _header(fmt, key, path, candidate)
        except (UnsupportedImage, InvalidDicomError, OSError) as exc:
            problems.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
            continue
        patient, study, instance, rows, columns, spacing = header
        boxes = []
        for label, (x1, y1, x2, y2) in candidate.boxes:
            if not (0 <= x1 < x2 <= columns and 0 <= y1 < y2 <= rows):
                problems.append(f"{key}: {label} box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not "
                                f"inside the {columns} x {rows} image {path}")
            if fmt == "vindr" and label == "Nodule" and "Mass" in labels:
                label = _nodule_or_mass(plan, (x1, y1, x2, y2), spacing)
            boxes.append(LabelledBox(label, x1, y1, x2, y2))
        chosen.append(LabelledImage(Path("images") / path.relative_to(root), patient, study,
                                    instance, rows, columns, tuple(boxes)))
    return chosen, missing, problems


def _header(fmt: str, key: str, path: Path, candidate: Candidate) -> tuple:
    """(patient, study UID, instance UID, rows, columns, pixel spacing) from the file's
    header; a PNG or JPEG gets UIDs derived from its key, the same on every import."""
    if is_picture(path):
        rows, columns = picture_size(path)
        instance = key if fmt == "csv" else generate_uid(entropy_srcs=[fmt, "image", key])
        return (candidate.patient or key, generate_uid(entropy_srcs=[fmt, "study", key]),
                instance, rows, columns, None)
    ds = pydicom.dcmread(path, defer_size="1 KB")  # PixelData stays on disk
    try:
        check_supported(ds)
        if not (ds.get("Rows") and ds.get("Columns")):
            raise UnsupportedImage("Rows or Columns is missing")
    except UnsupportedImage as exc:
        raise UnsupportedImage(f"{path}: {exc}") from None
    return (candidate.patient or str(ds.get("PatientID") or "") or key,
            str(ds.get("StudyInstanceUID") or generate_uid(entropy_srcs=[fmt, "study", key])),
            str(ds.get("SOPInstanceUID") or generate_uid(entropy_srcs=[fmt, "image", key])),
            int(ds.Rows), int(ds.Columns), pixel_spacing_mm(ds))


def _nodule_or_mass(plan: Plan, box: tuple[float, ...],
                    spacing: tuple[float, float] | None) -> str:
    """VinDr's Nodule/Mass by the box's longer side in mm; Nodule without a spacing."""
    if spacing is None:
        label, reason = "Nodule", "Nodule (no pixel spacing)"
    else:
        longer = max((box[2] - box[0]) * spacing[1], (box[3] - box[1]) * spacing[0])
        label = reason = "Mass" if longer >= MASS_MM else "Nodule"
    plan.nodule_mass[reason] += 1
    return label


# --------------------------------------------------------------------------- output


def _patients(images: Sequence[LabelledImage]) -> int:
    return len({image.patient_id for image in images})


def _counts(images: Sequence[LabelledImage]) -> dict:
    boxes = Counter(box.label for image in images for box in image.boxes)
    return {"images": len(images), "patients": _patients(images),
            "normal_images": sum(not image.boxes for image in images),
            "boxes": dict(sorted(boxes.items()))}


def _summary(fmt: str, labels_file: Path, data_entry: Path | None, images: Path,
             consensus: str, plan: Plan, chosen: list[LabelledImage], missing: list[str],
             index: dict[str, Path], train_images: list[LabelledImage],
             test: list[LabelledImage]) -> dict:
    left_out = dict(plan.left_out + Counter({"image file not found": len(missing)}))
    summary = {
        "format": fmt,
        "source": {"labels": str(labels_file), "images": str(images),
                   **({"data_entry": str(data_entry)} if data_entry else {})},
        **_counts(chosen),
        "left_out": dict(sorted(left_out.items())),
        "not_found_examples": missing[:20],
        "boxes_outside_vocabulary": dict(sorted(plan.outside_vocabulary.items())),
        "image_files_not_used": len(index) - len(chosen),
    }
    if fmt == "nih":
        summary["views"] = dict(Counter(c.view for key, c in plan.candidates.items()
                                        if key not in missing))
        summary["boxed_with_other_findings_unboxed"] = plan.partly_boxed
    if fmt == "vindr":
        summary["consensus"] = consensus
        summary["nodule_mass"] = dict(sorted(plan.nodule_mass.items()))
    if test:
        summary["split"] = {"labels.csv": _counts(train_images), "test/labels.csv": _counts(test)}
    return summary


def summary_text(summary: dict, out: Path) -> str:
    """What an operator reads after an import: what went in, what stayed out and why."""
    def listing(counts: dict) -> str:
        return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"

    lines = [f"imported {summary['images']} images of {summary['patients']} patients into "
             f"{out} ({summary['normal_images']} normal); boxes: {listing(summary['boxes'])}",
             f"left out: {listing(summary['left_out'])}"]
    if summary["boxes_outside_vocabulary"]:
        lines.append(f"boxes outside the vocabulary (dropped): "
                     f"{listing(summary['boxes_outside_vocabulary'])}")
    if summary.get("nodule_mass"):
        lines.append(f"VinDr Nodule/Mass by size: {listing(summary['nodule_mass'])}")
    if summary.get("views"):
        lines.append(f"views: {listing(summary['views'])}")
    if "split" in summary:
        test = summary["split"]["test/labels.csv"]
        lines.append(f"held out for testing: {test['images']} images of {test['patients']} "
                     f"patients in {out / 'test' / 'labels.csv'}")
    return "\n".join(lines)


def _rows(images: Sequence[LabelledImage], prefix: str) -> list[list]:
    rows = []
    for image in sorted(images, key=lambda i: str(i.path)):
        base = [f"{prefix}{image.path.as_posix()}", image.patient_id, image.study_uid,
                image.sop_instance_uid, image.rows, image.columns]
        rows += [base + [b.label, b.x1, b.y1, b.x2, b.y2] for b in image.boxes] or \
            [base + [""] * 5]
    return rows


def _write_labels(path: Path, rows: list[list]) -> None:
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(source, target)


def _write(out: Path, root: Path, vocabulary: Sequence[Finding],
           chosen: list[LabelledImage], train_images: list[LabelledImage],
           test: list[LabelledImage], summary: dict) -> None:
    """Everything into a hidden folder beside ``out``, read back as training will read it,
    then renamed to ``out``; on any failure the partial folder is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for image in chosen:
            _link_or_copy(root / image.path.relative_to("images"), partial / image.path)
        _write_labels(partial / "labels.csv", _rows(train_images, ""))
        labels = [finding.label for finding in vocabulary]
        read_labels_csv(partial / "labels.csv", vocabulary=labels)
        if test:
            _write_labels(partial / "test" / "labels.csv", _rows(test, "../"))
            read_labels_csv(partial / "test" / "labels.csv", vocabulary=labels)
        (partial / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        os.rename(partial, out)  # an empty ``out`` is replaced (rename(2))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
