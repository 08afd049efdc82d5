"""Is the received Pixel Data as long as the image attributes say, without decoding it?

A sender that cuts Pixel Data short (a broken export, a truncated file forwarded as is)
must hear so in its C-STORE status, not learn later from a "not analysed" report. The
check reads only element headers: the value's length and where it starts are in the file
(the position after ``dcmread(..., stop_before_pixels=True)``), so a large image is never
read into memory for it. Native (uncompressed) Pixel Data must hold at least Rows x
Columns x Samples per Pixel x ceil(Bits Allocated / 8) x Number of Frames bytes (PS3.5
8.1.1; 1-bit data packed, PS3.5 8.1.1 and D); encapsulated Pixel Data must be a Basic Offset
Table item, then fragment items that lie inside the file, then the sequence delimiter, with
at least one fragment per frame (PS3.5 A.4).
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRBigEndian

PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
_CHUNK_BYTES = 256 * 1024


class PixelDataProblem(ValueError):
    """Pixel Data that cannot be what the image attributes describe.

    The message fits the 64 characters of a C-STORE Error Comment (PS3.7 C.4);
    ``detail`` adds what the audit trail and the log should also say.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def _count(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value in (None, ""):
        if default is None:
            raise PixelDataProblem(f"Pixel Data without {keyword}: its size is unknown")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PixelDataProblem(f"{keyword} {str(value)[:20]!r} is not a number") from None
    if number < 0 or (number == 0 and keyword == "SamplesPerPixel"):
        raise PixelDataProblem(f"{keyword} {number} is not a usable count")
    if number == 0 and keyword == "NumberOfFrames":
        return 1  # seen from some senders; readers (pydicom too) take it as one frame
    return number


def expected_native_length(ds: pydicom.Dataset) -> int:
    """Bytes that uncompressed Pixel Data needs for ``ds``'s Image Pixel attributes."""
    rows = _count(ds, "Rows")
    columns = _count(ds, "Columns")
    bits_allocated = _count(ds, "BitsAllocated")
    if bits_allocated == 0:
        raise PixelDataProblem("BitsAllocated 0 is not a usable count")
    samples = _count(ds, "SamplesPerPixel", default=1)
    frames = _count(ds, "NumberOfFrames", default=1)
    if bits_allocated == 1:
        # Packed bits (PS3.5 8.1.1), frames not padded to a byte boundary.
        length = -(-rows * columns * samples * frames // 8)
    else:
        length = rows * columns * samples * -(-bits_allocated // 8) * frames
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        length = length // 3 * 2  # two chrominance samples shared by each pair (PS3.3 C.7.6.3)
    return length


def _pixel_data_length(fp: BinaryIO, endianness: str) -> int | None:
    """The declared length of the Pixel Data element at ``fp``, leaving ``fp`` at its value.

    None when the element there is not Pixel Data (none at all, or Float Pixel Data).
    The VR is told from the bytes, not from the transfer syntax, as pydicom does: some
    writers use implicit VR under an explicit syntax. The two cannot be confused here:
    explicit Pixel Data reads "OB", "OW" or "UN" and two zero bytes (PS3.5 7.1.2), which
    as an implicit length would be odd, and Pixel Data lengths are even.
    """
    raw_tag = fp.read(4)
    if len(raw_tag) < 4:
        return None
    group, element = struct.unpack(f"{endianness}HH", raw_tag)
    if group << 16 | element != PIXEL_DATA_TAG:
        return None
    raw = fp.read(4)
    if raw[:2] in (b"OB", b"OW", b"UN") and raw[2:] == b"\0\0":
        raw = fp.read(4)
    if len(raw) != 4:
        raise PixelDataProblem("Pixel Data element header is cut short")
    return struct.unpack(f"{endianness}L", raw)[0]


def _check_native(declared: int, available: int, ds: pydicom.Dataset) -> None:
    if declared == _UNDEFINED_LENGTH:
        raise PixelDataProblem("Pixel Data has an undefined length in a native syntax")
    expected = expected_native_length(ds)
    actual = min(declared, available)
    if actual < expected:
        raise PixelDataProblem(
            f"Pixel Data is {actual} bytes; attributes require {expected}",
            f"Rows {ds.get('Rows')} x Columns {ds.get('Columns')} x Samples per Pixel "
            f"{ds.get('SamplesPerPixel', 1)} x Bits Allocated {ds.get('BitsAllocated')} x "
            f"Number of Frames {ds.get('NumberOfFrames', 1)}; the element declares {declared} "
            f"bytes and {available} follow it in the data set")


def _check_encapsulated(fp: BinaryIO, declared: int, end: int, endianness: str,
                        ds: pydicom.Dataset) -> None:
    if declared != _UNDEFINED_LENGTH:
        raise PixelDataProblem("compressed Pixel Data must have an undefined length")
    start = fp.tell()
    try:
        offsets = parse_basic_offsets(fp, endianness=endianness)
        count, positions = parse_fragments(fp, endianness=endianness)
    except (ValueError, struct.error) as exc:
        raise PixelDataProblem("compressed Pixel Data does not parse", str(exc)) from None
    if count == 0:
        raise PixelDataProblem("compressed Pixel Data holds no fragment")
    # parse_fragments seeks past each fragment, so one that runs past the end of the
    # file, or a missing delimiter, shows only here.
    fp.seek(positions[-1] + 4)
    last_length = struct.unpack(f"{endianness}L", fp.read(4))[0]
    delimiter_at = positions[-1] + 8 + last_length
    fp.seek(delimiter_at)
    raw = fp.read(8)
    if delimiter_at + 8 > end or len(raw) < 8:
        raise PixelDataProblem(f"Pixel Data fragments cut: {end - start} bytes of "
                               f"{delimiter_at + 8 - start}",
                               "the data set ends inside an encapsulated fragment or before "
                               "the sequence delimiter")
    group, element = struct.unpack(f"{endianness}HH", raw[:4])
    if group << 16 | element != _SEQUENCE_DELIMITER_TAG:
        raise PixelDataProblem("compressed Pixel Data lacks its sequence delimiter")
    frames = _count(ds, "NumberOfFrames", default=1)
    if count < frames:
        raise PixelDataProblem(f"compressed Pixel Data has {count} fragments for {frames} frames")
    first_fragment = positions[0]
    if any(offset >= delimiter_at - first_fragment for offset in offsets):
        raise PixelDataProblem("Pixel Data offset table points past its fragments",
                               f"offsets {offsets[:8]}, fragments span "
                               f"{delimiter_at - first_fragment} bytes")


def check_pixel_data(fp: BinaryIO, ds: pydicom.Dataset, transfer_syntax: str) -> None:
    """Raise :class:`PixelDataProblem` if the Pixel Data at ``fp`` cannot fit ``ds``.

    ``fp`` is the file that ``ds`` was read from with ``stop_before_pixels=True``,
    positioned where that read stopped. Data sets without Pixel Data (SR, presentation
    states) pass, as do transfer syntaxes pydicom does not know.
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        return
    if syntax.is_deflated:
        # The data set is one zlib stream (PS3.5 A.5): inflate it to a temporary file in
        # chunks, then read element headers there as for any explicit little endian file.
        with _inflated(fp) as inflated:
            if inflated is not None:
                _check_at(inflated, ds, syntax, "<")
        return
    _check_at(fp, ds, syntax, ">" if syntax == ExplicitVRBigEndian else "<")


def _check_at(fp: BinaryIO, ds: pydicom.Dataset, syntax: UID, endianness: str) -> None:
    start = fp.tell()
    end = fp.seek(0, 2)
    fp.seek(start)
    declared = _pixel_data_length(fp, endianness)
    if declared is None:
        return  # no Pixel Data (or Float Pixel Data, which is not checked here)
    available = end - fp.tell()
    if syntax.is_encapsulated:
        _check_encapsulated(fp, declared, end, endianness, ds)
    else:
        _check_native(declared, available, ds)


_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, PIXEL_DATA_TAG}


@contextmanager
def _inflated(fp: BinaryIO) -> Iterator[BinaryIO | None]:
    """The inflated data set, positioned at its first pixel element (or its end).

    None when the file has no File Meta Information group length to find the data set by.
    """
    fp.seek(128)
    if fp.read(4) != b"DICM" or fp.read(8) != b"\x02\x00\x00\x00UL\x04\x00":
        yield None
        return
    fp.seek(144 + struct.unpack("<L", fp.read(4))[0])
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    with tempfile.TemporaryFile() as inflated:
        # Bounded output per call: a chunk of zeros inflates a thousandfold.
        while chunk := inflate.unconsumed_tail or fp.read(_CHUNK_BYTES):
            inflated.write(inflate.decompress(chunk, _CHUNK_BYTES))
        inflated.write(inflate.flush())
        inflated.seek(0)
        read_dataset(inflated, is_implicit_VR=False, is_little_endian=True,
                     stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
        yield inflated


def check_file(path: Path) -> None:
    """:func:`check_pixel_data` for a DICOM file on disk (tests, and a manual check)."""
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        check_pixel_data(fp, ds, str(ds.file_meta.TransferSyntaxUID))
