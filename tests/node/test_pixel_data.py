"""The Pixel Data length check the C-STORE path runs before it acknowledges an image."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from node.pixel_data import (
    PixelDataProblem,
    check_file,
    check_pixel_data,
    expected_native_length,
)
from tests.factories import in_syntax, write_dx


def problem(path: Path) -> str | None:
    try:
        check_file(path)
    except PixelDataProblem as exc:
        return str(exc)
    return None


def saved(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_whole_images_pass_in_native_and_compressed_syntaxes(tmp_path):
    plain = write_dx(tmp_path / "plain.dcm")
    implicit = pydicom.dcmread(plain)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    assert problem(plain) is None
    assert problem(saved(implicit, tmp_path / "implicit.dcm")) is None
    assert problem(in_syntax(plain, tmp_path / "j2k.dcm", "jpeg2000")) is None


def test_half_the_pixel_data_names_both_lengths_within_an_error_comment(tmp_path):
    ds = pydicom.dcmread(write_dx(tmp_path / "plain.dcm", rows=64, columns=96))
    ds.PixelData = ds.PixelData[: 64 * 96]

    message = problem(saved(ds, tmp_path / "half.dcm"))

    assert message == "Pixel Data is 6144 bytes; attributes require 12288"
    assert len(message) <= 64  # PS3.7 C.4: Error Comment is at most 64 characters


def test_a_file_that_ends_inside_its_pixel_data_is_caught_from_the_element_header(tmp_path):
    plain = write_dx(tmp_path / "plain.dcm", rows=64, columns=64)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(plain.read_bytes()[:-100])  # the element still declares 8192 bytes

    assert problem(cut) == "Pixel Data is 8092 bytes; attributes require 8192"


def test_frames_and_packed_bits_count_as_the_standard_says(tmp_path):
    ds = pydicom.dcmread(write_dx(tmp_path / "plain.dcm", rows=10, columns=10))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = bytes(14)  # 100 bits need 13 bytes, padded to an even length
    assert expected_native_length(ds) == 13
    assert problem(saved(ds, tmp_path / "bits.dcm")) is None
    ds.PixelData = bytes(12)
    assert problem(saved(ds, tmp_path / "short-bits.dcm")) == (
        "Pixel Data is 12 bytes; attributes require 13")

    frames = pydicom.dcmread(write_dx(tmp_path / "plain.dcm", rows=10, columns=10))
    frames.NumberOfFrames = 3
    frames.PixelData = bytes(10 * 10 * 2 * 2)  # two frames' worth
    assert problem(saved(frames, tmp_path / "frames.dcm")) == (
        "Pixel Data is 400 bytes; attributes require 600")


def test_compressed_pixel_data_must_hold_whole_fragments_one_per_frame_at_least(tmp_path):
    j2k = in_syntax(write_dx(tmp_path / "plain.dcm"), tmp_path / "j2k.dcm", "jpeg2000")
    ds = pydicom.dcmread(j2k)
    encapsulated = bytes(ds.PixelData)

    ds.PixelData = encapsulated[:-40]
    assert problem(saved(ds, tmp_path / "cut.dcm")).startswith("Pixel Data fragments cut:")

    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\x34\x12\x00\xe0" + bytes(4)
    assert problem(saved(ds, tmp_path / "tag.dcm")) == "compressed Pixel Data does not parse"

    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an offset table, no fragment
    assert problem(saved(ds, tmp_path / "empty.dcm")) == "compressed Pixel Data holds no fragment"

    frame = next(generate_frames(encapsulated, number_of_frames=1))
    ds.PixelData = encapsulate([frame])
    ds.NumberOfFrames = 2
    assert problem(saved(ds, tmp_path / "frames.dcm")) == (
        "compressed Pixel Data has 1 fragments for 2 frames")
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless


@pytest.mark.parametrize(("name", "expected"), [
    ("SC_rgb_jpeg.dcm", None),  # implicit VR under an explicit syntax, as pydicom reads it
    ("MR_truncated.dcm", "Pixel Data is 8130 bytes; attributes require 8192"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "Pixel Data fragments cut: 37964 bytes of "
                                                  "37972"),
])
def test_pydicom_test_files_whole_and_truncated(name, expected):
    path = get_testdata_file(name)
    assert path, f"{name} ships with pydicom"
    assert problem(Path(path)) == expected


def test_data_sets_without_pixel_data_pass(tmp_path):
    ds = pydicom.dcmread(write_dx(tmp_path / "plain.dcm"))
    del ds.PixelData
    assert problem(saved(ds, tmp_path / "no-pixels.dcm")) is None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("cut", [False, True])
def test_a_large_image_is_checked_without_reading_its_pixels(tmp_path, cut, syntax):
    ds = pydicom.dcmread(write_dx(tmp_path / "plain.dcm", rows=16, columns=16))
    ds.Rows = ds.Columns = 2048
    pixels = np.random.default_rng(0).integers(0, 4096, (2048, 2048), np.uint16).tobytes()
    ds.PixelData = pixels[: len(pixels) // 2] if cut else pixels  # 8 MiB whole
    ds.file_meta.TransferSyntaxUID = syntax
    path = saved(ds, tmp_path / "large.dcm")
    del ds, pixels

    with open(path, "rb") as fp:
        header = pydicom.dcmread(fp, stop_before_pixels=True)  # ingest has read it already
        gc.collect()
        tracemalloc.start()
        try:
            check_pixel_data(fp, header, syntax)
            message = None
        except PixelDataProblem as exc:
            message = str(exc)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    assert (message == "Pixel Data is 4194304 bytes; attributes require 8388608") == cut
    assert peak < 2 * 1024 * 1024, f"{peak} bytes allocated to check an 8 MiB image"
