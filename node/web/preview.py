"""The study page's previews: the node's Secondary Capture (boxes burned in) as a small PNG.

An admin asked "what did the AI mark?" should not need a DICOM viewer: the SC the node sent
to the PACS is the picture a radiologist sees there, so the console shows that same object,
downscaled, rather than drawing the boxes a second time and risking a picture that differs
from what was sent.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

PREVIEW_PIXELS = 640  # the longer side


class NoPreview(Exception):
    """The file is missing or its pixels cannot be shown; the message says which."""


def preview_png(path: Path, size: int = PREVIEW_PIXELS) -> bytes:
    """The first frame of a DICOM image file as a PNG no larger than ``size`` pixels."""
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except FileNotFoundError:
        raise NoPreview(f"{path.name}: the file is no longer on disk") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure: say it, show no picture
        raise NoPreview(f"{path.name}: pixels not readable ({type(exc).__name__}: {exc})") from None
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 2:
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels.astype(np.float32) - low) * (255.0 / max(high - low, 1.0))
        if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
