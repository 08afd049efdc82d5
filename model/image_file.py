"""One reader for every image file a training folder may hold: DICOM, PNG and JPEG.

Public chest X-ray sets publish PNG (NIH ChestX-ray8: 8-bit, 1024 x 1024), and sites
export PNG or JPEG (8 or 16 bit). Such a file becomes an in-memory grey-scale dataset
(MONOCHROME2, SamplesPerPixel 1, BitsStored 8 or 16, no rescale and no window), so that
:func:`model.preprocess.preprocess` treats it exactly as it treats a DICOM image: the same
percentile stretch, the same letterbox. Training, evaluation and inference then have one
preprocessing path, not one per format.

A training folder keeps the published files as they are rather than converting them to
DICOM Secondary Capture: the bytes stay those the data set's checksums and papers
describe; the import can hard-link them (NIH is 45 GB of PNG, which uncompressed SC would
more than double); and no converted object has to be kept valid against the SC IOD.
Nothing is lost by it: a PNG carries no header that DICOM would keep, and what the
published CSV files say about the image (patient, view) goes into ``labels.csv``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset

from model.preprocess import Photometric, UnsupportedImage

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
# Pillow modes of one grey channel; 16-bit PNG opens as "I;16" (or "I" in older Pillow).
GREY_MODES = ("L", "I;16", "I;16B", "I")
# Grey stored in colour channels (some NIH PNGs are RGBA): accepted when R = G = B.
COLOUR_MODES = ("LA", "RGB", "RGBA")


def is_picture(path: str | PathLike) -> bool:
    return Path(path).suffix.lower() in PICTURE_SUFFIXES


def is_dicom(path: str | PathLike) -> bool:
    """By suffix, or, for a file without one (PACS exports often have none), by the "DICM"
    marker after the 128-byte preamble (PS3.10 7.1)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def picture_size(path: str | PathLike) -> tuple[int, int]:
    """(rows, columns) of a PNG or JPEG from its header, refusing modes :func:`read_image`
    cannot use; the pixels are not decoded."""
    with _open(path) as image:
        _check_mode(path, image.mode)
        return image.height, image.width


def read_image(path: str | PathLike) -> Dataset:
    """A DICOM file as pydicom reads it; a PNG or JPEG as a MONOCHROME2 dataset.

    Raises
    ------
    UnsupportedImage
        For a picture that is not grey (colour channels that differ, a palette), not 8 or
        16 bit, or not readable; the message names the file.
    """
    if not is_picture(path):
        return pydicom.dcmread(path)
    with _open(path) as image:
        _check_mode(path, image.mode)
        try:
            pixels = np.asarray(image)
        except OSError as exc:  # a truncated or corrupt file fails only as it decodes
            raise UnsupportedImage(f"{path}: cannot be decoded ({exc})") from None
    if pixels.ndim == 3:  # LA, RGB, RGBA: grey only when the colour channels agree
        colour = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
        if not (colour == colour[..., :1]).all():
            raise UnsupportedImage(f"{path}: a colour image ({image.mode} with channels that "
                                   "differ); a radiograph is grey")
        pixels = colour[..., 0]
    if pixels.dtype != np.uint8:
        if pixels.min() < 0 or pixels.max() > 65535:
            raise UnsupportedImage(f"{path}: values {pixels.min()} to {pixels.max()} do not "
                                   "fit 16 bits")
        pixels = pixels.astype(np.uint16)
    ds = Dataset()
    ds.set_pixel_data(np.ascontiguousarray(pixels), Photometric.MONOCHROME2,
                      bits_stored=pixels.dtype.itemsize * 8)
    return ds


def _open(path: str | PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise UnsupportedImage(f"{path}: not a readable PNG or JPEG ({exc})") from None


def _check_mode(path: str | PathLike, mode: str) -> None:
    if mode not in GREY_MODES + COLOUR_MODES:
        raise UnsupportedImage(f'{path}: Pillow mode "{mode}" is not an 8 or 16-bit grey '
                               f"image ({', '.join(GREY_MODES + COLOUR_MODES)})")
