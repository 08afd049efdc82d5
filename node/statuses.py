"""Every DIMSE status and association rejection the node sends, named in one place.

C-STORE statuses are from PS3.4 B.2.3 (Storage Service Class); association rejections
(result, source, reason) from PS3.8 9.3.4 (A-ASSOCIATE-RJ PDU).
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
