"""Every DIMSE status and association rejection the node sends, named in one place.

C-STORE statuses are from PS3.4 B.2.3 (Storage Service Class); association rejections
(result, source, reason) from PS3.8 9.3.4 (A-ASSOCIATE-RJ PDU). STOW-RS answers each
instance it refuses with the same codes as its Failure Reason (PS3.18 I.2.2, Table I.2-2).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    # Refused: Out of Resources -- transient; the sender should retry later.
    OUT_OF_RESOURCES = 0xA700
    # Error: Data Set does not match SOP Class.
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # Error: Cannot understand (0xC000-0xCFFF); the low bits say what we could not use.
    CANNOT_UNDERSTAND = 0xC000
    UID_MISSING = 0xC001
    UID_INVALID = 0xC002
    UID_DIFFERS_FROM_REQUEST = 0xC003
    # STOW-RS only (a C-STORE of such a class finds no presentation context): PS3.18
    # Table I.2-2 "Referenced SOP Class not supported".
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # STOW-RS to /studies/{study}: the instance belongs to another study. PS3.18 names no
    # code for it and allows others; 0xA901 is the one Azure's DICOM service uses.
    STUDY_UID_MISMATCH = 0xA901
    # STOW-RS: the node itself failed on a part (logged), PS3.18 Table I.2-2 "Processing
    # failure"; a C-STORE handler that fails is answered 0xC211 by pynetdicom instead.
    PROCESSING_FAILURE = 0x0110
    # pynetdicom's answer when a handler raises (a bug on our side, logged with a trace).
    HANDLER_FAILED = 0xC211


class Rejection(NamedTuple):
    result: int
    source: int
    reason: int
    text: str


CALLING_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x03, "calling AE title not recognised")
CALLED_AE_NOT_RECOGNISED = Rejection(0x01, 0x01, 0x07, "called AE title not recognised")
# Transient, service-provider (presentation) related: the sender should try again later.
TEMPORARY_CONGESTION = Rejection(0x02, 0x03, 0x01, "temporary congestion")
LOCAL_LIMIT_EXCEEDED = Rejection(0x02, 0x03, 0x02, "local limit exceeded")
