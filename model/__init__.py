"""The detector library: DICOM in, coded detections out (no database, no sockets)."""

from pathlib import Path

# The model that ships with cxr-node (trained on synthetic images; see its card).
BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled"
