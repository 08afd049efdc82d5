"""The eligibility gate: which received images the chest detector may read, and why not.

The model was made for frontal chest radiographs. Anything else (a CT, an extremity, a
lateral view, an image for processing rather than presentation, pixels it cannot use)
is skipped with a reason that is recorded, so a study the AI did not read is never
mistaken for one it read and found normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.dataset import Dataset

from model.preprocess import UnsupportedImage, check_supported

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
# Anatomic Region codes for the chest (PS3.16 CID 4031): SNOMED CT and the legacy SRT code.
CHEST_CODES = frozenset({("SCT", "51185008"), ("SRT", "T-D3000")})
CHEST_WORDS = ("CHEST", "THORAX", "THORACIC", "CXR", "LUNG", "TORAX", "THORAKS")
LATERAL_WORDS = ("LAT", "LATERAL", "LL", "RL")


class View(StrEnum):
    PA = "PA"
    AP = "AP"
    LATERAL_LEFT = "LL"
    LATERAL_RIGHT = "RL"


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reason: str  # why not; "" when eligible


def _words(*values: object) -> set[str]:
    text = " ".join(str(v) for v in values if v)
    return set(text.upper().replace("/", " ").replace("-", " ").replace("_", " ").split())


def _is_chest(ds: Dataset) -> bool | None:
    """True or False when the image says, None when it says nothing about the body part."""
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body_part:
        return body_part in CHEST_WORDS
    regions = ds.get("AnatomicRegionSequence") or []
    if regions:
        code = (str(regions[0].get("CodingSchemeDesignator", "")),
                str(regions[0].get("CodeValue", "")))
        return code in CHEST_CODES
    return None


def check_eligibility(ds: Dataset) -> Eligibility:
    """Decide from the header (and pixel layout) whether the detector may read ``ds``."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class == DX_FOR_PROCESSING or \
            str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING":
        return Eligibility(False, "image is FOR PROCESSING, not for presentation")
    if modality not in ("CR", "DX") or sop_class not in (CR_IMAGE, DX_FOR_PRESENTATION):
        described = f"{modality or 'no modality'}, SOP class {sop_class or 'absent'}"
        return Eligibility(False, f"{described} is not a CR or DX radiograph")
    chest = _is_chest(ds)
    if chest is False:
        return Eligibility(False, f"body part {ds.get('BodyPartExamined') or 'coded'} is not "
                                  "the chest")
    if chest is None and not _words(ds.get("StudyDescription"), ds.get("SeriesDescription"),
                                     ds.get("ProtocolName")) & set(CHEST_WORDS):
        return Eligibility(False, "body part absent and no chest-like study or series "
                                  "description")
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in (View.LATERAL_LEFT, View.LATERAL_RIGHT):
        return Eligibility(False, f"view {view} is lateral; only PA and AP are read")
    if view and view not in (View.PA, View.AP):
        return Eligibility(False, f"view {view} is not PA or AP")
    if not view and _words(ds.get("SeriesDescription"), ds.get("ProtocolName")) & set(
            LATERAL_WORDS):
        return Eligibility(False, "series description says lateral; only PA and AP are read")
    try:
        check_supported(ds)
    except UnsupportedImage as exc:
        return Eligibility(False, f"pixel data not usable: {exc}")
    return Eligibility(True, "")
