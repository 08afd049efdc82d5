"""One reader for every image file a training folder may hold: DICOM, PNG and JPEG.

Public chest X-ray sets publish PNG (NIH ChestX-ray8: 8-bit, 1024 x 1024), and sites
export PNG or JPEG (8 or 16 bit). Such a file becomes an in-memory grey-scale dataset
(MONOCHROME2, SamplesPerPixel 1, BitsStored 8 or 16, no rescale and no window), so that
:func:`model.preprocess.preprocess` treats it exactly as it treats a DICOM image: the same
percentile stretch, the same letterbox. Training, evaluation and inference then have one
preprocessing path, not one per format.

Pillow decodes only 8-bit JPEG. Exporters that keep a detector's full range write JPEG of
more bits: 12-bit extended (SOF1) or lossless (SOF3) up to 16 bits, the codings DICOM
itself uses for radiographs (PS3.5 A.4.1). Which decoder a JPEG needs is read from its
frame header's sample precision (ITU-T T.81 B.2.2), not guessed from its name: above 8 bits
it goes to libjpeg (pylibjpeg-libjpeg, already the node's decoder of DICOM's JPEG), and the
dataset's BitsStored is that precision (12 stays 12, in 16 allocated bits).

A training folder keeps the published files as they are rather than converting them to
DICOM Secondary Capture: the bytes stay those the data set's checksums and papers
describe; the import can hard-link them (NIH is 45 GB of PNG, which uncompressed SC would
more than double); and no converted object has to be kept valid against the SC IOD.
Nothing is lost by it: a PNG carries no header that DICOM would keep, and what the
published CSV files say about the image (patient, view) goes into ``labels.csv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import libjpeg
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
# ITU-T T.81 B.1.1.3 and Table B.1: start and end of image, start of scan; the frame
# headers SOF0-3, 5-7, 9-11, 13-15 (C4, C8 and CC are other segments) and DHP, which
# heads a hierarchical image with the full size; segments without a length (RSTn, TEM).
JPEG_SOI, JPEG_EOI, JPEG_SOS = 0xD8, 0xD9, 0xDA
JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xDE})
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
PILLOW_JPEG_BITS = 8  # Pillow's libjpeg is built for 8-bit samples only
JPEG_MAX_EXTRANEOUS = 4096  # bytes skipped between segments before giving up on a header


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


@dataclass(frozen=True)
class JpegFrame:
    """A JPEG's frame header (T.81 B.2.2), and where its first scan starts (None when the
    file ends before it)."""

    precision: int
    rows: int
    columns: int
    components: int
    first_scan: int | None


def _jpeg_frame(path: str | PathLike) -> JpegFrame | None:
    """The frame header of a JPEG, found by walking its marker segments from the start of
    the file, without reading the scans; None for a file that is not a JPEG or has no frame
    header before its first scan (Pillow then says what is wrong with it).

    A few bytes between segments are skipped up to the next 0xFF, as libjpeg does with such
    "extraneous data", so that a file Pillow reads is not refused here first.
    """
    frame = None
    with open(path, "rb") as handle:
        if handle.read(2) != bytes((0xFF, JPEG_SOI)):
            return None
        while True:
            byte, skipped = handle.read(1), 0
            while byte and byte != b"\xff" and skipped < JPEG_MAX_EXTRANEOUS:
                byte, skipped = handle.read(1), skipped + 1
            if byte != b"\xff":  # the end of the file, or no marker where one belongs
                return frame
            while byte == b"\xff":  # fill bytes (B.1.1.2)
                byte = handle.read(1)
            if not byte or byte[0] == JPEG_EOI:
                return frame
            marker = byte[0]
            if marker == 0 or marker in JPEG_STANDALONE_MARKERS:
                continue
            if marker == JPEG_SOS:
                return frame and replace(frame, first_scan=handle.tell() - 2)
            field = handle.read(2)
            length = int.from_bytes(field, "big")
            if len(field) < 2 or length < 2:
                return frame
            if marker in JPEG_FRAME_MARKERS and frame is None:
                body = handle.read(length - 2)
                if len(body) < 6:
                    return None
                frame = JpegFrame(body[0], int.from_bytes(body[1:3], "big"),
                                  int.from_bytes(body[3:5], "big"), body[5], None)
            else:
                handle.seek(length - 2, os.SEEK_CUR)


def picture_size(path: str | PathLike) -> tuple[int, int]:
    """(rows, columns) of a PNG or JPEG from its header, refusing modes :func:`read_image`
    cannot use; the pixels are not decoded."""
    frame = _high_bit_jpeg(path)
    if frame is not None:
        return frame.rows, frame.columns
    with _open(path) as image:
        _check_mode(path, image.mode)
        return image.height, image.width


def read_image(path: str | PathLike) -> Dataset:
    """A DICOM file as pydicom reads it; a PNG or JPEG as a MONOCHROME2 dataset.

    Raises
    ------
    UnsupportedImage
        For a picture that is not grey (colour channels that differ, a palette), not 8 to
        16 bit, or not readable; the message names the file.
    """
    if not is_picture(path):
        return pydicom.dcmread(path)
    frame = _high_bit_jpeg(path)
    if frame is not None:
        return _grey_dataset(_decode_high_bit_jpeg(path, frame), frame.precision)
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
    return _grey_dataset(pixels, pixels.dtype.itemsize * 8)


def _grey_dataset(pixels: np.ndarray, bits_stored: int) -> Dataset:
    ds = Dataset()
    ds.set_pixel_data(np.ascontiguousarray(pixels), Photometric.MONOCHROME2,
                      bits_stored=bits_stored)
    return ds


def _high_bit_jpeg(path: str | PathLike) -> JpegFrame | None:
    """The frame of a JPEG of more than 8 bits, checked to be one a radiograph can be;
    None for anything else (Pillow's)."""
    try:
        frame = _jpeg_frame(path)
    except OSError as exc:
        raise UnsupportedImage(f"{path}: not readable ({exc})") from None
    if frame is None or frame.precision <= PILLOW_JPEG_BITS:
        return None
    if frame.precision > 16:  # T.81 B.2.2: at most 16, and only lossless goes past 12
        raise UnsupportedImage(f"{path}: a JPEG of {frame.precision}-bit samples; JPEG has "
                               "at most 16")
    if frame.components != 1:
        raise UnsupportedImage(f"{path}: a {frame.precision}-bit JPEG of {frame.components} "
                               "components; a radiograph is one grey channel")
    if not (frame.rows and frame.columns):  # rows 0: given later by a DNL segment (B.2.5)
        raise UnsupportedImage(f"{path}: a JPEG whose frame header gives no size "
                               f"({frame.columns} x {frame.rows})")
    return frame


def _decode_high_bit_jpeg(path: str | PathLike, frame: JpegFrame) -> np.ndarray:
    """libjpeg's decoding, refused when the file is cut short: libjpeg returns an image for
    half a file without an error where Pillow stops, and a half-made image would train the
    detector without a word."""
    data = Path(path).read_bytes()
    if frame.first_scan is None or data.find(bytes((0xFF, JPEG_EOI)), frame.first_scan) < 0:
        raise UnsupportedImage(f"{path}: cannot be decoded (the file ends before the JPEG's "
                               "end-of-image marker: truncated)")
    try:
        pixels = libjpeg.decode(data)
    except (RuntimeError, ValueError) as exc:
        raise UnsupportedImage(f"{path}: cannot be decoded ({exc})") from None
    if pixels.shape != (frame.rows, frame.columns) or pixels.dtype != np.uint16:
        raise UnsupportedImage(f"{path}: cannot be decoded (libjpeg gave {pixels.dtype} "
                               f"{pixels.shape}, the header says {frame.precision}-bit "
                               f"{frame.rows} x {frame.columns})")
    if int(pixels.max()) >> frame.precision:
        raise UnsupportedImage(f"{path}: cannot be decoded (value {pixels.max()} does not "
                               f"fit its {frame.precision} bits)")
    return pixels


def _open(path: str | PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise UnsupportedImage(f"{path}: not a readable PNG or JPEG ({exc})") from None


def _check_mode(path: str | PathLike, mode: str) -> None:
    if mode not in GREY_MODES + COLOUR_MODES:
        raise UnsupportedImage(f'{path}: Pillow mode "{mode}" is not an 8 or 16-bit grey '
                               f"image ({', '.join(GREY_MODES + COLOUR_MODES)})")
