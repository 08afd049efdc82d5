"""The DICOM listener, one module per layer as pynetdicom is split (see :mod:`.listener`)."""

from node.scp.listener import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PREFERRED_TRANSFER_SYNTAXES,
    Listener,
    accepted_transfer_syntaxes,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PREFERRED_TRANSFER_SYNTAXES",
    "Listener",
    "accepted_transfer_syntaxes",
]
