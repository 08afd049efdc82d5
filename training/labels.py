"""Radiologist labels from TID 1500 SRs and public-dataset CSV files, as plain records.

A viewer (e.g. OHIF) sends back a TID 1500 Measurement Report (PS3.16 TID 1500) in which a
reader drew and named findings, or an admin imports the box list of a public dataset (NIH
ChestX-ray8, VinDr-CXR) or a CSV of our own. Each reader turns one source into
:class:`LabelRecord` objects and nothing more: the caller stores them.

- Boxes are XYXY in image pixels, (0, 0) the top-left corner of the first pixel: the SCOORD
  convention (PS3.3 C.18.6.1.2), so SR coordinates are taken as they are.
- A region with no area (a single POINT, as OHIF's probe and arrow write) gives an
  image-level record (box None): the reader still put the finding on that image, and
  dropping it could leave the image looking normal. SCOORD3D regions are skipped with a note
  (3D patient coordinates do not apply to a projection radiograph).
- A code outside the vocabulary is kept as a record with label None, never dropped. CSV
  classes outside it keep the dataset's class in a private scheme ("99NIH", "99VINDR"; PS3.3
  8.2 reserves designators beginning with "99" for private coding schemes).
- An SR reads as normal only when every group in it states a normal finding, or it has no
  group. A group without a finding, such as our detector's "All algorithms succeeded;
  without findings" (DCM 111241), never does: an algorithm finding nothing is not a reader
  calling the image normal.
- Imports are all or nothing: one :class:`LabelImportError` names every bad row by line.
"""

from __future__ import annotations

import codecs
import csv
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from os import PathLike

from pydicom.dataset import Dataset

from model.vocabulary import DEFAULT_FINDINGS, Finding

Code = tuple[str, str, str]  # (scheme designator, code value, code meaning)
Box = tuple[float, float, float, float]

NOT_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.",  # SR Storage (PS3.4 B.5)
                      "1.2.840.10008.5.1.4.1.1.11.")  # Presentation State Storage
REPORT = ("DCM", "126000")  # Imaging Measurement Report, the TID 1500 root
GROUP_CONCEPTS = {("DCM", "125007"),  # Measurement Group (TID 1410, 1411, 1501)
                  ("UMLS", "C0034375")}  # Qualitative Evaluations (TID 1500 document level)
FINDING = ("DCM", "121071")
TRACKING_IDENTIFIER = ("DCM", "112039")
OBSERVER_TYPE = ("DCM", "121005")  # TID 1002
PERSON = ("DCM", "121006")
PERSON_NAME = ("DCM", "121008")  # TID 1003
DEVICE_UID = ("DCM", "121012")  # TID 1004
DEVICE_NAME = ("DCM", "121013")
SNOMED_SCHEMES = {"SCT", "SRT"}  # SRT is the legacy designator for the same SNOMED ids
NORMAL_CODES = {("SCT", "17621005"), ("SRT", "17621005")}  # "Normal"
NORMAL_TEXTS = {"normal", "no finding", "no findings"}
SYNONYMS = {"effusion": "Pleural effusion", "infiltrate": "Infiltration",
            "lung nodule": "Nodule", "pulmonary nodule": "Nodule", "lung mass": "Mass",
            "enlarged heart": "Cardiomegaly"}

NIH_SCHEME = "99NIH"
NIH_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule",
               "Pneumonia", "Pneumothorax")
# Data_Entry_2017.csv "Finding Labels": "|"-separated, or "No Finding" alone.
NIH_IMAGE_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                    "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule",
                    "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NIH_NO_FINDING = "No Finding"
VINDR_SCHEME = "99VINDR"
# The Kaggle competition's train.csv: index = class_id.
VINDR_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                 "Consolidation", "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass",
                 "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
                 "Pulmonary fibrosis", "No finding")
VINDR_NO_FINDING = "No finding"
# PhysioNet's vindr-cxr 1.0.0 annotations_*.csv (no class_id): the paper's 22 local labels,
# of which Kaggle kept the 14 above, and "No finding".
VINDR_LOCAL_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                       "Clavicle fracture", "Consolidation", "Edema", "Emphysema",
                       "Enlarged PA", "ILD", "Infiltration", "Lung cavity", "Lung cyst",
                       "Lung Opacity", "Mediastinal shift", "Nodule/Mass", "Other lesion",
                       "Pleural effusion", "Pleural thickening", "Pneumothorax",
                       "Pulmonary fibrosis", "Rib fracture", VINDR_NO_FINDING)
# The reader of a file without rad_id: PhysioNet's annotations_test.csv, the consensus of
# five radiologists, which is one reading of each image.
VINDR_CONSENSUS_READER = "consensus"
# VinDr-CXR class -> the default vocabulary's label; None: kept out (the record keeps the
# VinDr class with label None, and imports count it). The one table of this mapping: the
# label intake and `cxr-node dataset import` both read it, for both published layouts.
# Another vocabulary that has a class under its own name (e.g. "Aortic enlargement",
# "Edema") gets it by name.
VINDR_MAPPING: dict[str, str | None] = {
    "Aortic enlargement": None,  # mediastinal, not in the vocabulary
    "Atelectasis": "Atelectasis",
    "Calcification": None,
    "Cardiomegaly": "Cardiomegaly",
    # PhysioNet only. A bone finding: the vocabulary has no skeletal class.
    "Clavicle fracture": None,
    # Air-space opacity the image alone does not tell from infiltrate (as NIH's Pneumonia).
    "Consolidation": "Infiltration",
    # PhysioNet only. NIH, whose box classes the vocabulary is, labels Edema apart from
    # Infiltration; boxes drawn over both lungs' fluid would teach Infiltration the wrong shape.
    "Edema": None,
    # PhysioNet only. Hyperinflation of whole lungs, not a focal finding.
    "Emphysema": None,
    # PhysioNet only. Vascular (pulmonary artery), as Aortic enlargement is mediastinal.
    "Enlarged PA": None,
    "ILD": None,  # a diffuse interstitial pattern over whole lungs, not a focal finding
    "Infiltration": "Infiltration",
    # PhysioNet only. A gas-filled space in a lesion (Fleischner glossary): its box is the
    # cavity, not the solid nodule or mass that the vocabulary's classes are.
    "Lung cavity": None,
    # PhysioNet only. A thin-walled air space: lucent, the opposite of a nodule.
    "Lung cyst": None,
    # A catch-all that VinDr readers draw over nodules, effusions and consolidation alike.
    "Lung Opacity": None,
    # PhysioNet only. A displacement of the mediastinum, not a lesion of its own.
    "Mediastinal shift": None,
    # One class in VinDr; `dataset import` splits it by the box's size in mm where the DICOM
    # gives the pixel spacing (a mass is 30 mm or more, Fleischner glossary), else Nodule.
    "Nodule/Mass": "Nodule",
    "Other lesion": None,
    "Pleural effusion": "Pleural effusion",
    "Pleural thickening": None,
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": None,
    # PhysioNet only. A bone finding, as Clavicle fracture.
    "Rib fracture": None,
}
XYXY = ("x1", "y1", "x2", "y2")
VINDR_XYXY = ("x_min", "y_min", "x_max", "y_max")


class Consensus(StrEnum):
    """How many of an image's VinDr readers must agree on a box (or on "No finding")."""

    MAJORITY = "majority"  # more than half
    ANY = "any"
    ALL = "all"


class LabelImportError(ValueError):
    """Raised with every bad row; an import is all or nothing."""

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = sorted(errors)
        listing = "\n".join(f"line {line}: {message}" for line, message in self.errors)
        super().__init__(f"{source}: {len(self.errors)} bad row(s), nothing imported\n{listing}")


@dataclass(frozen=True)
class LabelRecord:
    """One reader's statement about one image: a finding (with or without a box) or normal.

    ``image_key`` is a SOP Instance UID (SR, plain CSV) or the dataset's image id. ``label``
    is None for a code outside the vocabulary and for a normal record; ``code`` is None only
    for a normal record; ``box`` None means image-level.
    """

    image_key: str
    label: str | None
    code: Code | None
    box: Box | None
    normal: bool = False
    reader: str | None = None

    def __post_init__(self) -> None:
        if not self.image_key:
            raise ValueError("LabelRecord image_key must not be empty")
        if self.normal and (self.label, self.code, self.box) != (None, None, None):
            raise ValueError("a normal LabelRecord has no label, code or box")
        if not self.normal and self.code is None:
            raise ValueError(f"LabelRecord for {self.image_key} needs a code or normal=True")
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise ValueError(f"LabelRecord box {self.box} must be XYXY with x2 > x1, y2 > y1")


@dataclass(frozen=True)
class SrLabels:
    """What one TID 1500 SR says; ``notes`` lists what was skipped, and why."""

    study_uid: str
    sop_instance_uid: str
    observer: str
    observer_is_person: bool
    records: list[LabelRecord]
    unmapped: list[Code]
    reviewed_normal: bool
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- codes


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _split_code(text: str) -> tuple[str, str] | None:
    """ "SCT:36118008" -> ("SCT", "36118008"); None for anything else."""
    scheme, colon, value = text.strip().partition(":")
    if colon and scheme and value and not any(c.isspace() for c in scheme + value):
        return scheme, value
    return None


def match_finding(text_or_code: str | tuple[str, ...] | Dataset,
                  vocabulary: Sequence[Finding] = DEFAULT_FINDINGS) -> Finding | None:
    """The vocabulary finding for a label text, a "SCHEME:CODE" string, a (scheme, value[,
    meaning]) tuple or a code sequence item; None when nothing matches.

    Codes match first, SCT and SRT by their shared numeric SNOMED id; then the meaning (or
    text) matches a label or code meaning case-insensitively, with common synonyms, because
    viewers store free-text labels as a code meaning (OHIF: scheme "CORNERSTONEJS"/"99dcmjs").
    """
    if isinstance(text_or_code, Dataset):
        scheme, value, meaning = _code(text_or_code)
    elif isinstance(text_or_code, tuple) and len(text_or_code) in (2, 3) and all(
            isinstance(part, str) for part in text_or_code):
        scheme, value, meaning = (*text_or_code, "")[:3]
    elif isinstance(text_or_code, str):
        scheme, value = _split_code(text_or_code) or ("", "")
        meaning = "" if scheme else text_or_code
    else:
        raise TypeError(f"expected a text, a code tuple or a code item, got {text_or_code!r}")
    for finding in vocabulary:
        if (scheme, value) == (finding.scheme, finding.code):
            return finding
    if scheme.upper() in SNOMED_SCHEMES and value.isdigit():
        for finding in vocabulary:
            if finding.scheme in SNOMED_SCHEMES and finding.code == value:
                return finding
    text = _normalise(meaning)
    text = _normalise(SYNONYMS.get(text, text))
    for finding in vocabulary:
        if text and text in (_normalise(finding.label), _normalise(finding.meaning)):
            return finding
    return None


def _is_normal(code: Code) -> bool:
    return code[:2] in NORMAL_CODES or _normalise(code[2]) in NORMAL_TEXTS


def _record_code(finding: Finding | None, given: Code) -> Code:
    return (finding.scheme, finding.code, finding.meaning) if finding else given


# --------------------------------------------------------------------------- SR (TID 1500)


def _code(item: Dataset) -> Code:
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return (str(item.get("CodingSchemeDesignator", "")), str(value or ""),
            str(item.get("CodeMeaning", "")))


def _concept(item: Dataset) -> tuple[str, str]:
    names = item.get("ConceptNameCodeSequence")
    return _code(names[0])[:2] if names else ("", "")


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _image_uid(item: Dataset) -> str:
    references = item.get("ReferencedSOPSequence")
    return str(references[0].get("ReferencedSOPInstanceUID", "")) if references else ""


def _is_sr(ds: Dataset) -> bool:
    return (str(ds.get("SOPClassUID", "")).startswith(NOT_IMAGE_PREFIXES[0])
            or ds.get("Modality") == "SR")


def is_tid1500(ds: Dataset) -> bool:
    """An SR whose Content Template Sequence names TID 1500 (DCMR), or whose root concept is
    (126000, DCM, "Imaging Measurement Report"): writers do not all fill in the template."""
    if not isinstance(ds, Dataset) or not _is_sr(ds):
        return False
    for template in ds.get("ContentTemplateSequence") or []:
        if (str(template.get("TemplateIdentifier", "")).strip() == "1500"
                and template.get("MappingResource", "DCMR") == "DCMR"):
            return True
    return _concept(ds) == REPORT


def region_box(graphic_type: str, graphic_data: Sequence[float]) -> Box | None:
    """Bounding box of a 2D SCOORD (PS3.3 C.18.6.1.2, (column, row) pairs); None when it has
    no area. A POLYLINE rectangle (4 or 5 points) gives itself; an ELLIPSE (major axis ends,
    then minor axis ends) gives the exact box of the ellipse, even when it is rotated."""
    data = [float(v) for v in graphic_data]
    if not data or len(data) % 2 or not all(math.isfinite(v) for v in data):
        raise ValueError(f"GraphicData must be finite (column, row) pairs, got {data}")
    xs, ys = data[0::2], data[1::2]
    kind = str(graphic_type).upper()
    if kind in ("POINT", "MULTIPOINT", "POLYLINE", "POLYGON"):
        box = (min(xs), min(ys), max(xs), max(ys))
    elif kind == "CIRCLE" and len(xs) == 2:
        radius = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
        box = (xs[0] - radius, ys[0] - radius, xs[0] + radius, ys[0] + radius)
    elif kind == "ELLIPSE" and len(xs) == 4:
        cx, cy = (xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2
        # x(t) = cx + a_x cos t + b_x sin t with half-axis vectors a, b: extent hypot(a_x, b_x)
        half_w = math.hypot((xs[1] - xs[0]) / 2, (xs[3] - xs[2]) / 2)
        half_h = math.hypot((ys[1] - ys[0]) / 2, (ys[3] - ys[2]) / 2)
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    else:
        raise ValueError(f'GraphicType "{graphic_type}" with {len(xs)} points is not a 2D '
                         f"region this reader knows")
    return box if box[2] > box[0] and box[3] > box[1] else None


def _observer(ds: Dataset) -> tuple[str, bool]:
    """TID 1002 at the document root; a person (the labeller) wins over a device."""
    context = [c for c in _children(ds) if c.get("RelationshipType") == "HAS OBS CONTEXT"]
    names = {key: [] for key in (PERSON_NAME, DEVICE_NAME, DEVICE_UID)}
    is_person = False
    for item in context:
        key = _concept(item)
        if key == OBSERVER_TYPE and item.get("ConceptCodeSequence"):
            is_person |= _code(item.ConceptCodeSequence[0])[:2] == PERSON
        elif key == PERSON_NAME and item.get("PersonName"):
            names[key].append(str(item.PersonName))
        elif key == DEVICE_NAME and item.get("TextValue"):
            names[key].append(str(item.TextValue))
        elif key == DEVICE_UID and item.get("UID"):
            names[key].append(str(item.UID))
    if names[PERSON_NAME] or is_person:
        return (names[PERSON_NAME] or [""])[0], True
    return (names[DEVICE_NAME] or names[DEVICE_UID] or [""])[0], False


def _evidence_images(ds: Dataset) -> list[str]:
    """Images of Current Requested Procedure Evidence (PS3.3 C.17.2), SR and PR left out."""
    uids: list[str] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                uid = str(sop.get("ReferencedSOPInstanceUID", ""))
                sop_class = str(sop.get("ReferencedSOPClassUID", ""))
                if uid and uid not in uids and not sop_class.startswith(NOT_IMAGE_PREFIXES):
                    uids.append(uid)
    return uids


def _groups(item: Dataset) -> Iterator[Dataset]:
    for child in _children(item):
        if child.get("ValueType") == "CONTAINER":
            if _concept(child) in GROUP_CONCEPTS:
                yield child
            else:
                yield from _groups(child)


def _places(group: Dataset, name: str, evidence: list[str],
            notes: list[str]) -> list[tuple[str, Box | None]]:
    """(image, box) for each region of a group; a group without regions is image-level on
    its source images (TID 1501 "Source"), else on every image of the evidence."""
    children = _children(group)
    sources = [_image_uid(c) for c in children if c.get("ValueType") == "IMAGE"]
    sources = [uid for uid in sources if uid]
    regions = [c for c in children if c.get("ValueType") in ("SCOORD", "SCOORD3D")]
    places: list[tuple[str, Box | None]] = []
    for region in regions:
        if region.ValueType == "SCOORD3D":
            notes.append(f"{name}: SCOORD3D region skipped (no 3D space on a radiograph)")
            continue
        images = [_image_uid(c) for c in _children(region) if c.get("ValueType") == "IMAGE"]
        uid = images[0] if images else (sources[0] if len(sources) == 1 else "")
        if not uid:
            notes.append(f"{name}: region references no image; skipped")
            continue
        try:
            places.append((uid, region_box(region.GraphicType, region.GraphicData)))
        except (AttributeError, ValueError) as exc:
            notes.append(f"{name}: {exc}; skipped")
    if regions:
        return places
    if not sources and not evidence:
        notes.append(f"{name}: no region and no image to put the finding on; skipped")
    return [(uid, None) for uid in sources or evidence]


def read_sr_labels(ds: Dataset, vocabulary: Sequence[Finding] = DEFAULT_FINDINGS) -> SrLabels:
    """The labels of a TID 1500 SR: one record per region of each finding group, or, when
    the reader stated no finding, one normal record per evidence image."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a pydicom Dataset, got {type(ds).__name__}")
    if not _is_sr(ds):
        raise ValueError(f'SOPClassUID "{ds.get("SOPClassUID", "")}" (Modality '
                         f'"{ds.get("Modality", "")}") is not a Structured Report')
    if not is_tid1500(ds):
        raise ValueError(f'SR "{ds.get("SOPInstanceUID", "")}" is not a TID 1500 Measurement '
                         f"Report (root concept {_concept(ds)})")
    observer, is_person = _observer(ds)
    reader = observer or None
    evidence = _evidence_images(ds)
    records: list[LabelRecord] = []
    unmapped: list[Code] = []
    notes: list[str] = []
    normal_only = True
    for number, group in enumerate(_groups(ds), start=1):
        children = _children(group)
        if not children:
            continue
        name = next((str(c.TextValue) for c in children
                     if _concept(c) == TRACKING_IDENTIFIER and c.get("TextValue")),
                    f"group {number}")
        findings = [_code(c.ConceptCodeSequence[0]) for c in children
                    if _concept(c) == FINDING and c.get("ConceptCodeSequence")]
        abnormal = [code for code in findings if not _is_normal(code)]
        normal_only &= bool(findings) and not abnormal
        if not findings:
            notes.append(f"{name}: no finding type; not a label")
        if not abnormal:
            continue
        places = _places(group, name, evidence, notes)
        for code in abnormal:
            finding = match_finding(code, vocabulary)
            if finding is None and code not in unmapped:
                unmapped.append(code)
            records += [LabelRecord(uid, finding.label if finding else None, code, box,
                                    reader=reader) for uid, box in places]
    if normal_only:
        records = [LabelRecord(uid, None, None, None, normal=True, reader=reader)
                   for uid in evidence]
        if not evidence:
            notes.append("normal reading, but the evidence lists no image")
    return SrLabels(str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", "")),
                    observer, is_person, records, unmapped, normal_only, notes)


# --------------------------------------------------------------------------- CSV files


def _column(cell: str) -> str:
    return cell.strip().lower()


def _nih_column(cell: str) -> str:
    """NIH's header splits "Bbox [x,y,w,h]" over four cells: "Bbox [x", "y", "w", "h]"."""
    return _column(cell).replace("bbox", "").replace("[", "").replace("]", "").strip()


def _read_table(path: str | PathLike, required: Sequence[str], optional: Sequence[str] = (),
                column: Callable[[str], str] = _column) -> tuple[list, list[tuple[int, str]]]:
    """(line, {column: stripped text}) per row, and the rows with a wrong field count.

    Empty trailing fields are allowed (NIH's header and rows end in ",,,"); blank rows are
    skipped. A bad header stops at once: no row can be read without it, and neither can
    anything after bytes that are not UTF-8 or a line the csv module refuses (a NUL byte, a
    field past its size limit): a spreadsheet or an image chosen by mistake is one line.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            return _read_rows(path, reader, required, optional, column)
        except UnicodeDecodeError as exc:
            raise LabelImportError(str(path), [(_first_bad_utf8(path), (
                f"not UTF-8 text ({exc.reason}); save the file as CSV in UTF-8"))]) from None
        except csv.Error as exc:
            raise LabelImportError(str(path), [(reader.line_num, f"not CSV: {exc}")]) from None


def _read_rows(path: str | PathLike, reader: Iterator[list[str]], required: Sequence[str],
               optional: Sequence[str],
               column: Callable[[str], str]) -> tuple[list, list[tuple[int, str]]]:
    rows, errors = [], []
    header = [column(cell) for cell in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise LabelImportError(str(path), [(1, f"missing column(s) {', '.join(missing)} "
                                               f"in the header")])
    width = max(i for i, name in enumerate(header) if name) + 1
    wanted = {name: header.index(name) for name in (*required, *optional) if name in header}
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        used = max(i for i, f in enumerate(fields) if f.strip()) + 1
        if len(fields) < width or used > width:
            found = len(fields) if len(fields) < width else used
            errors.append((reader.line_num, f"{found} fields, expected {width}"))
            continue
        rows.append((reader.line_num, {n: fields[i].strip() for n, i in wanted.items()}))
    return rows, errors


def _first_bad_utf8(path: str | PathLike) -> int:
    """The line of the first byte that is not UTF-8: the text layer decodes blocks ahead of
    the csv reader, so its line count does not say where the bad byte is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 16)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return line + exc.object.count(b"\n", 0, exc.start)
            if not block:
                return line
            line += block.count(b"\n")


def _number(text: str, name: str, minimum: float | None = 0.0) -> float:
    if not text:
        raise ValueError(f"{name} is empty")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'{name} "{text}" is not a number') from None
    if not math.isfinite(value):
        raise ValueError(f'{name} "{text}" is not a finite number')
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {text}")
    return value


def _xyxy(row: dict[str, str], names: Sequence[str]) -> Box:
    x1, y1, x2, y2 = (_number(row[name], name) for name in names)
    for low, high, a, b in ((x1, x2, names[0], names[2]), (y1, y2, names[1], names[3])):
        if high <= low:
            raise ValueError(f"{b} must be > {a}, got {a} {row[a]}, {b} {row[b]}")
    return x1, y1, x2, y2


def _key(row: dict[str, str], column: str, name: str | None = None) -> str:
    if not row[column]:
        raise ValueError(f"{name or column} is empty")
    return row[column]


def _finish(path: str | PathLike, records: list[LabelRecord],
            errors: list[tuple[int, str]]) -> list[LabelRecord]:
    if errors:
        raise LabelImportError(str(path), errors)
    return records


def read_nih_csv(path: str | PathLike, vocabulary: Sequence[Finding] = DEFAULT_FINDINGS,
                 pneumonia_as: str | None = "Infiltration") -> list[LabelRecord]:
    """NIH ChestX-ray8 ``BBox_List_2017.csv``: box (x, y, x + w, y + h) per row, keyed by
    "Image Index". Pneumonia becomes ``pneumonia_as`` (a clinical diagnosis that the image
    alone does not separate from infiltration), or a label-None record when it is None."""
    labels = {finding.label: finding for finding in vocabulary}
    if pneumonia_as is not None and pneumonia_as not in labels:
        raise ValueError(f'pneumonia_as "{pneumonia_as}" is not a vocabulary label '
                         f"({', '.join(labels)})")
    rows, errors = _read_table(path, ("image index", "finding label", "x", "y", "w", "h"),
                               column=_nih_column)
    known = {_normalise(name) for name in NIH_CLASSES}
    records = []
    for line, row in rows:
        try:
            key = _key(row, "image index", "Image Index")
            text = _key(row, "finding label", "Finding Label")
            if _normalise(text) == "pneumonia":
                finding = labels[pneumonia_as] if pneumonia_as else None
            else:
                finding = match_finding(text, vocabulary)
            if finding is None and _normalise(text) not in known:
                raise ValueError(f'Finding Label "{text}" is not an NIH box class '
                                 f"({', '.join(NIH_CLASSES)})")
            x, y = _number(row["x"], "Bbox x"), _number(row["y"], "Bbox y")
            w, h = (_number(row[n], f"Bbox {n}", minimum=None) for n in ("w", "h"))
            for name, value in (("w", w), ("h", h)):
                if value <= 0:
                    raise ValueError(f"Bbox {name} must be > 0, got {row[name]}")
            code = _record_code(finding, (NIH_SCHEME, text, text))
            records.append(LabelRecord(key, finding.label if finding else None, code,
                                       (x, y, x + w, y + h)))
        except ValueError as exc:
            errors.append((line, str(exc)))
    return _finish(path, records, errors)


@dataclass(frozen=True)
class NihEntry:
    """One row of NIH ChestX-ray8 ``Data_Entry_2017.csv``: whose image, which view, and
    the image-level labels (text-mined from the reports; ``("No Finding",)`` for none)."""

    image: str
    patient: str
    follow_up: str
    view: str
    labels: tuple[str, ...]

    @property
    def no_finding(self) -> bool:
        return self.labels == (NIH_NO_FINDING,)


def read_nih_data_entry(path: str | PathLike) -> list[NihEntry]:
    """NIH ``Data_Entry_2017.csv`` (and its v2020 revision): one entry per image, keyed by
    "Image Index", the name of the PNG. The header's bracketed columns
    ("OriginalImage[Width,Height]") split over two cells, as in the file."""
    rows, errors = _read_table(path, ("image index", "finding labels", "follow-up #",
                                      "patient id", "view position"))
    entries, seen = [], {}
    for line, row in rows:
        try:
            image = _key(row, "image index", "Image Index")
            if image in seen:
                raise ValueError(f"Image Index {image} again (first on line {seen[image]})")
            labels = tuple(label.strip() for label in
                           _key(row, "finding labels", "Finding Labels").split("|"))
            unknown = [label for label in labels
                       if label not in (*NIH_IMAGE_LABELS, NIH_NO_FINDING)]
            if unknown:
                raise ValueError(f'Finding Labels "{"|".join(unknown)}" not among '
                                 f"{', '.join(NIH_IMAGE_LABELS)}, {NIH_NO_FINDING}")
            if NIH_NO_FINDING in labels and len(labels) > 1:
                raise ValueError(f'"{NIH_NO_FINDING}" together with findings')
            seen[image] = line
            entries.append(NihEntry(image, _key(row, "patient id", "Patient ID"),
                                    row["follow-up #"], _key(row, "view position",
                                                             "View Position"), labels))
        except ValueError as exc:
            errors.append((line, str(exc)))
    _finish(path, [], errors)
    return entries


def _iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


def _clusters(drawn: list[tuple[str, Box]], iou: float) -> list[list[tuple[str, Box]]]:
    """Greedy, in file order: a box joins the first cluster whose first box it overlaps by
    ``iou`` and that has no box of its reader yet (one reader's two nodules stay two). A
    box overlapping its own reader's box in that cluster by ``iou`` is one finding under two
    classes that map to one label (Consolidation and Infiltration), and is dropped."""
    clusters: list[list[tuple[str, Box]]] = []
    for reader, box in drawn:
        for cluster in clusters:
            if _iou(cluster[0][1], box) < iou:
                continue
            own = [b for r, b in cluster if r == reader]
            if not own:
                cluster.append((reader, box))
                break
            if any(_iou(b, box) >= iou for b in own):
                break
        else:
            clusters.append([(reader, box)])
    return clusters


def _vindr_finding(name: str, vocabulary: Sequence[Finding]) -> Finding | None:
    mapped = VINDR_MAPPING[name]
    return match_finding(mapped or name, vocabulary)


def _vindr_code_value(name: str) -> str:
    """Kaggle's class_id where the class has one, so that a class has one code whichever
    layout it came in; else its name (PhysioNet gives its eight extra classes no number)."""
    return str(VINDR_CLASSES.index(name)) if name in VINDR_CLASSES else name


def _vindr_class(row: dict[str, str]) -> str:
    """The row's class_name, checked against the layout its header says it is in."""
    name = row["class_name"]
    if name not in VINDR_LOCAL_CLASSES:
        raise ValueError(f'class_name "{name}" is not a VinDr-CXR class')
    if "class_id" in row:  # Kaggle's train.csv: the id must be that of the name
        if name not in VINDR_CLASSES:
            raise ValueError(f'class_name "{name}" is one of PhysioNet\'s 22 classes, which '
                             f"Kaggle's train.csv (with class_id) does not have")
        if row["class_id"] != str(VINDR_CLASSES.index(name)):
            raise ValueError(f'class_id "{row["class_id"]}" is not that of "{name}" '
                             f"({VINDR_CLASSES.index(name)})")
    return name


def read_vindr_csv(path: str | PathLike, vocabulary: Sequence[Finding] = DEFAULT_FINDINGS,
                   consensus: str = "majority", iou: float = 0.4) -> list[LabelRecord]:
    """VinDr-CXR box lists as published, several readers per image merged by ``consensus``.

    Two layouts, told apart by the header (column order does not matter):

    - Kaggle's competition ``train.csv``: ``image_id,class_name,class_id,rad_id,x_min,…``,
      14 classes and "No finding"; each class_id must be that of its class_name.
    - PhysioNet's vindr-cxr 1.0.0 ``annotations/annotations_train.csv``:
      ``image_id,rad_id,class_name,x_min,…``, no class_id, the paper's 22 local labels
      (:data:`VINDR_LOCAL_CLASSES`). Its ``annotations_test.csv`` is the consensus of five
      radiologists; without a rad_id column every row is that one reading
      (:data:`VINDR_CONSENSUS_READER`), so each of its boxes is kept whatever the rule
      (a finding named under two classes of one label, as Consolidation and Infiltration,
      still counts once, as for any reader).

    Classes map to the vocabulary by :data:`VINDR_MAPPING`. Boxes of one label (or of one
    unmapped class) are clustered (:func:`_clusters`); a cluster with boxes from at least k
    readers (majority: more than half of the image's readers; any: 1; all: every one) gives
    its coordinate-wise mean box, with ``reader`` the cluster's rad_ids. An image with no
    kept box is normal when k readers said "No finding"; otherwise it gives no record.
    """
    try:
        rule = Consensus(consensus)
    except ValueError:
        raise ValueError(f'consensus "{consensus}" must be one of '
                         f"{', '.join(c.value for c in Consensus)}") from None
    if isinstance(iou, bool) or not isinstance(iou, int | float) or not 0 < iou <= 1:
        raise ValueError(f"iou must be a number in (0, 1], got {iou!r}")
    rows, errors = _read_table(path, ("image_id", "class_name", *VINDR_XYXY),
                               ("class_id", "rad_id"))
    readers: dict[str, list[str]] = {}
    said_normal: dict[str, list[str]] = {}
    boxes: dict[str, dict[tuple[Finding | None, Code], list[tuple[str, Box]]]] = {}
    for line, row in rows:
        try:
            image = _key(row, "image_id")
            rad = _key(row, "rad_id") if "rad_id" in row else VINDR_CONSENSUS_READER
            name = _vindr_class(row)
            if name == VINDR_NO_FINDING:
                if any(row[n] for n in VINDR_XYXY):
                    raise ValueError("No finding with coordinates")
                said_normal.setdefault(image, []).append(rad)
            else:
                box = _xyxy(row, VINDR_XYXY)
                finding = _vindr_finding(name, vocabulary)
                code = _record_code(finding, (VINDR_SCHEME, _vindr_code_value(name), name))
                boxes.setdefault(image, {}).setdefault((finding, code), []).append((rad, box))
            if rad not in readers.setdefault(image, []):
                readers[image].append(rad)
        except ValueError as exc:
            errors.append((line, str(exc)))
    records = []
    for image, image_readers in readers.items():
        needed = {Consensus.MAJORITY: len(image_readers) // 2 + 1, Consensus.ANY: 1,
                  Consensus.ALL: len(image_readers)}[rule]
        kept = []
        for (finding, code), drawn in boxes.get(image, {}).items():
            for cluster in _clusters(drawn, iou):
                if len(cluster) >= needed:
                    mean = tuple(sum(b[i] for _, b in cluster) / len(cluster) for i in range(4))
                    kept.append(LabelRecord(image, finding.label if finding else None, code,
                                            mean, reader=",".join(r for r, _ in cluster)))
        normal = said_normal.get(image, [])
        if not kept and normal and len(normal) >= needed:
            kept.append(LabelRecord(image, None, None, None, normal=True,
                                    reader=",".join(normal)))
        records += kept
    return _finish(path, records, errors)


def read_plain_csv(path: str | PathLike,
                   vocabulary: Sequence[Finding] = DEFAULT_FINDINGS) -> list[LabelRecord]:
    """Our own ``sop_instance_uid,label,x1,y1,x2,y2[,reader]`` CSV (other columns are
    ignored, so a training labels file reads too). An empty label with empty coordinates
    is a normal image; a label is a vocabulary label or "SCHEME:CODE" (a code outside the
    vocabulary gives a label-None record, as in an SR)."""
    rows, errors = _read_table(path, ("sop_instance_uid", "label", *XYXY), ("reader",))
    records: list[LabelRecord] = []
    seen: dict[tuple[str, str | None], str] = {}  # (image, reader) -> "normal" or "boxed"
    for line, row in rows:
        try:
            key = _key(row, "sop_instance_uid")
            reader = row.get("reader") or None
            text = row["label"]
            if not text:
                if any(row[n] for n in XYXY):
                    raise ValueError("coordinates without a label")
                if (key, reader) in seen:
                    raise ValueError(f"{key} already has a {seen[key, reader]} row")
                seen[key, reader] = "normal"
                records.append(LabelRecord(key, None, None, None, normal=True, reader=reader))
                continue
            if not any(row[n] for n in XYXY):
                raise ValueError(f'label "{text}" without coordinates')
            finding = match_finding(text, vocabulary)
            split = _split_code(text)
            if finding is None and split is None:
                raise ValueError(f'label "{text}" is neither a vocabulary label '
                                 f"({', '.join(f.label for f in vocabulary)}) nor SCHEME:CODE")
            if seen.get((key, reader)) == "normal":
                raise ValueError(f"{key} already has a normal row")
            box = _xyxy(row, XYXY)
            if split:
                code = (*split, finding.meaning if finding else "")
            else:
                code = (finding.scheme, finding.code, finding.meaning)
            seen[key, reader] = "boxed"
            records.append(LabelRecord(key, finding.label if finding else None, code, box,
                                       reader=reader))
        except ValueError as exc:
            errors.append((line, str(exc)))
    return _finish(path, records, errors)


def read_plain_csv_patients(path: str | PathLike) -> dict[str, str]:
    """The optional ``patient_id`` column of our CSV, per image key: a PNG or JPEG has no
    header to give it, and without it a patient's images could land on both sides of a
    split. Empty cells are left out; two patients for one image is a bad row."""
    rows, errors = _read_table(path, ("sop_instance_uid",), ("patient_id",))
    patients: dict[str, str] = {}
    for line, row in rows:
        key, patient = row["sop_instance_uid"], row.get("patient_id", "")
        if key and patient:
            if patients.setdefault(key, patient) != patient:
                errors.append((line, f"{key} has patient_id {patient} here but "
                                     f"{patients[key]} on an earlier row"))
    _finish(path, [], errors)
    return patients
