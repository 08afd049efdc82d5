"""What every result object shares: who made it, which model, the findings, and the checks.

The builders in :mod:`node.results.sr`, :mod:`.gsps` and :mod:`.secondary_capture` take the
same inputs and refuse, before building anything, sources that do not form one study and
findings that do not lie on one of those sources: a result that points at the wrong image is
worse than no result.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom.dataset import Dataset

from model.vocabulary import Finding

# PS3.5 9.1: components of digits without leading zeros, at most 64 characters.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
LONG_STRING_MAX = 64  # PS3.5 6.2: LO (Manufacturer, Manufacturer's Model Name, ...)
PRODUCT = "cxr-node"


class SeriesDescription(StrEnum):
    """Series Descriptions (0008,103E) a radiologist sees in the PACS series list."""

    FINDINGS = f"AI findings ({PRODUCT})"
    NO_FINDINGS = f"AI no findings ({PRODUCT})"
    NOT_ANALYSED = f"AI not analysed ({PRODUCT})"
    PRESENTATION_STATE = f"AI findings overlay ({PRODUCT})"
    SECONDARY_CAPTURE = f"AI findings burned-in ({PRODUCT}) - not for diagnosis"


def _check_text(owner: str, name: str, value: object, max_length: int | None) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{owner} {name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{owner} {name} must not be empty")
    if "\\" in value or not all(32 <= ord(c) < 127 for c in value):
        # LO values hold no backslash; printable ASCII is the default repertoire, valid
        # whatever Specific Character Set the copied source declares or omits (PS3.5 6.1).
        raise ValueError(f"{owner} {name} {value!r} holds a backslash or a character outside "
                         f"printable ASCII")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{owner} {name} {value!r} is longer than {max_length} characters")


def check_uid(name: str, value: object) -> None:
    """Raise unless ``value`` is a valid DICOM UID (PS3.5 9.1)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > 64 or not _UID_PATTERN.fullmatch(value):
        raise ValueError(f'{name} "{value}" is not a valid DICOM UID (PS3.5 9.1)')


@dataclass(frozen=True)
class ProducingDevice:
    """The node that made an object: Device UID (0018,1002), observer context (TID 1004),
    Manufacturer, Manufacturer's Model Name and Software Versions (all LO, PS3.3 C.7.5.1)."""

    uid: str
    name: str
    manufacturer: str
    software_version: str

    def __post_init__(self) -> None:
        check_uid("ProducingDevice uid", self.uid)
        for name in ("name", "manufacturer", "software_version"):
            _check_text("ProducingDevice", name, getattr(self, name), LONG_STRING_MAX)


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the findings, as TID 4019 Algorithm Identification names it."""

    name: str
    version: str

    def __post_init__(self) -> None:
        for name in ("name", "version"):
            _check_text("Algorithm", name, getattr(self, name), LONG_STRING_MAX)


@dataclass(frozen=True)
class ImageFinding:
    """One detection on one source image.

    ``box`` is XYXY in the source's pixel coordinates with (0, 0) at the top-left corner of
    the first pixel, the convention of SR SCOORD (PS3.3 C.18.6.1.2) and GSPS PIXEL units.
    """

    source_sop_instance_uid: str
    finding: Finding
    score: float
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        check_uid("ImageFinding source_sop_instance_uid", self.source_sop_instance_uid)
        if not isinstance(self.finding, Finding):
            raise TypeError(f"ImageFinding finding must be a Finding, got {self.finding!r}")
        if isinstance(self.score, bool) or not isinstance(self.score, numbers.Real):
            raise TypeError(f"ImageFinding score must be a number, got {self.score!r}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"ImageFinding score must lie in [0, 1], got {self.score}")
        if len(self.box) != 4 or not all(math.isfinite(float(v)) for v in self.box):
            raise ValueError(f"ImageFinding box must be 4 finite numbers, got {self.box!r}")
        x1, y1, x2, y2 = self.box
        if not (0.0 <= x1 < x2 and 0.0 <= y1 < y2):
            raise ValueError(f"ImageFinding box must be XYXY with 0 <= x1 < x2 and "
                             f"0 <= y1 < y2, got {self.box!r}")

    @property
    def percent(self) -> float:
        """The score in percent, to one decimal, as the SR NUM carries it."""
        return round(float(self.score) * 100.0, 1)

    @property
    def label(self) -> str:
        """The text a reader sees beside the box, e.g. "Pneumothorax 87%"."""
        return f"{self.finding.label} {round(float(self.score) * 100.0)}%"


def closed_box(box: Sequence[float]) -> np.ndarray:
    """The box as a closed 5-point (column, row) polyline, last point == first: SR and GSPS
    close a POLYLINE only by repeating its first point (PS3.3 C.10.5.1.2, C.18.6.1.1)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def check_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """The sources as a list, refused unless they are images of one study."""
    if isinstance(sources, Dataset) or not isinstance(sources, Sequence):
        raise TypeError(f"sources must be a sequence of Datasets, got {type(sources).__name__}")
    sources = list(sources)
    if not sources:
        raise ValueError("sources must hold at least one image")
    for index, ds in enumerate(sources):
        if not isinstance(ds, Dataset):
            raise TypeError(f"sources[{index}] must be a Dataset, got {type(ds).__name__}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "SOPClassUID", "Rows", "Columns"):
            if keyword not in ds:
                raise ValueError(f"sources[{index}] lacks {keyword}")
    studies = sorted({str(ds.StudyInstanceUID) for ds in sources})
    if len(studies) != 1:
        raise ValueError(f"sources must belong to one study, got StudyInstanceUIDs {studies}")
    instances = [str(ds.SOPInstanceUID) for ds in sources]
    if len(set(instances)) != len(instances):
        raise ValueError(f"sources hold a SOPInstanceUID twice: {instances}")
    return sources


def check_findings(sources: Sequence[Dataset],
                   findings: Sequence[ImageFinding]) -> list[ImageFinding]:
    """The findings as a list, refused unless each lies inside one of ``sources``."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    findings = list(findings)
    for index, item in enumerate(findings):
        if not isinstance(item, ImageFinding):
            raise TypeError(f"findings[{index}] must be an ImageFinding, got {item!r}")
        source = by_uid.get(item.source_sop_instance_uid)
        if source is None:
            raise ValueError(f'findings[{index}] refers to SOPInstanceUID '
                             f'"{item.source_sop_instance_uid}", which is not among the sources')
        x1, y1, x2, y2 = item.box
        if x2 > source.Columns or y2 > source.Rows:
            raise ValueError(f"findings[{index}] box {item.box} leaves the "
                             f"{source.Columns} x {source.Rows} image")
    return findings


def check_producer(device: ProducingDevice, algorithm: Algorithm) -> None:
    """Refuse a device or algorithm of the wrong type before anything is built."""
    if not isinstance(device, ProducingDevice):
        raise TypeError(f"device must be a ProducingDevice, got {type(device).__name__}")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be an Algorithm, got {type(algorithm).__name__}")


def copy_body_part(target: Dataset, source: Dataset) -> None:
    """Body Part Examined, and Laterality (General Series, PS3.3 C.7.3.1) for GSPS and SC.

    Laterality is Type 2C: required for a paired body part, absent for an unpaired one such
    as the chest; a validator learns which from Body Part Examined, so that is copied. With
    neither in the source, Laterality is sent empty: unknown, which is the truth.
    """
    if "BodyPartExamined" in source:
        target.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality") in ("R", "L"):
        target.Laterality = source.Laterality
    elif "BodyPartExamined" not in source:
        target.Laterality = ""


def stamp_device(ds: Dataset, device: ProducingDevice) -> None:
    """Device UID (0018,1002), General Equipment Module (PS3.3 C.7.5.1): which node made it."""
    ds.DeviceUID = device.uid
