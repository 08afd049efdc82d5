"""PNG and JPEG files reach the model through the same preprocessing as DICOM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_fragmented_frames

from model.image_file import is_dicom, picture_size, read_image
from model.phantom import dx_dataset
from model.preprocess import PreprocessConfig, UnsupportedImage, preprocess

CONFIG = PreprocessConfig(image_size=128)


def radiograph(rows: int, columns: int, peak: int, dtype) -> np.ndarray:  # noqa: ANN001
    """Smooth grey levels with a bright square: no two preprocessings agree by chance."""
    y, x = np.mgrid[0:rows, 0:columns]
    pixels = (0.3 + 0.5 * np.sin(x / 37.0) * np.cos(y / 23.0) ** 2) * peak
    pixels[rows // 3:rows // 2, columns // 4:columns // 3] = peak * 0.95
    return pixels.clip(0, peak).astype(dtype)


def same_as_dicom(path, pixels: np.ndarray, bits: int, tmp_path) -> None:  # noqa: ANN001
    dicom = tmp_path / "same.dcm"
    dx_dataset(pixels, bits_stored=bits).save_as(dicom, enforce_file_format=True)
    from_picture, box = preprocess(read_image(path), CONFIG)
    from_dicom, dicom_box = preprocess(read_image(dicom), CONFIG)
    assert box == dicom_box
    np.testing.assert_array_equal(from_picture, from_dicom)


def test_a_16_bit_png_is_preprocessed_exactly_as_the_same_pixels_in_dicom(tmp_path):
    pixels = radiograph(300, 260, 40000, np.uint16)
    Image.fromarray(pixels).save(tmp_path / "wide.png")

    ds = read_image(tmp_path / "wide.png")

    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.SamplesPerPixel) == \
        ("MONOCHROME2", 16, 1)
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    same_as_dicom(tmp_path / "wide.png", pixels, 16, tmp_path)


def test_an_8_bit_png_and_its_rgba_twin_read_as_the_same_grey_image(tmp_path):
    """Some NIH ChestX-ray8 PNGs are RGBA with equal colour channels."""
    pixels = radiograph(256, 256, 255, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")

    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").pixel_array, pixels)
    same_as_dicom(tmp_path / "grey.png", pixels, 8, tmp_path)
    same_as_dicom(tmp_path / "rgba.png", pixels, 8, tmp_path)
    assert picture_size(tmp_path / "rgba.png") == (256, 256)


def test_a_jpeg_is_its_decoded_pixels_through_the_dicom_path(tmp_path):
    pixels = radiograph(200, 240, 255, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=90)
    decoded = np.asarray(Image.open(tmp_path / "x.jpg"))

    ds = read_image(tmp_path / "x.jpg")

    assert ds.BitsStored == 8 and ds.pixel_array.shape == (200, 240)
    assert np.abs(ds.pixel_array.astype(int) - pixels).mean() < 3  # lossy, but this image
    same_as_dicom(tmp_path / "x.jpg", decoded, 8, tmp_path)


def high_bit_jpeg(tool, folder: Path, pixels: np.ndarray, bits: int,  # noqa: ANN001
                  options: list[str]) -> tuple[Path, pydicom.Dataset]:
    """A JPEG of more than 8 bits as an exporter writes one: dcmtk's dcmcjpeg compresses a
    DICOM of ``pixels``, and the one fragment of its pixel data (PS3.5 A.4) is the file.
    Returns the file and the compressed DICOM."""
    plain, compressed = folder / "plain.dcm", folder / "compressed.dcm"
    dx_dataset(pixels, bits_stored=bits).save_as(plain, enforce_file_format=True)
    subprocess.run([tool("dcmcjpeg"), *options, str(plain), str(compressed)], check=True,
                   capture_output=True, timeout=60)
    ds = pydicom.dcmread(compressed)
    (fragment,) = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))
    path = folder / "export.jpg"
    path.write_bytes(fragment)
    return path, ds


def start_of_frame(path: Path) -> int:
    """The SOF marker's code: which JPEG process wrote the file (T.81 Table B.1)."""
    data = path.read_bytes()
    return min((data.find(bytes((0xFF, code))), code) for code in (0xC0, 0xC1, 0xC3)
               if bytes((0xFF, code)) in data)[1]


@pytest.mark.parametrize(("bits", "options"), [
    (16, ["+e1"]),  # lossless, selection value 1: the JPEG's precision is 16
    (12, ["+e1", "+pl", "+bt"]),  # the same at a precision of 12 bits
])
def test_a_lossless_high_bit_jpeg_reads_exactly_as_its_pixels(tool, tmp_path, bits, options):
    pixels = radiograph(300, 260, 2 ** bits - 1, np.uint16)
    path, _ = high_bit_jpeg(tool, tmp_path, pixels, bits, options)
    assert start_of_frame(path) == 0xC3  # SOF3, lossless: Pillow cannot open it
    with pytest.raises(OSError):
        Image.open(path)

    ds = read_image(path)

    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated,
            ds.BitsStored) == ("MONOCHROME2", 1, 16, bits)
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    assert picture_size(path) == (300, 260)
    same_as_dicom(path, pixels, bits, tmp_path)


def test_a_12_bit_extended_jpeg_reads_as_dicom_decodes_the_same_bytes(tool, tmp_path):
    """SOF1, lossy: the pixels are those the DICOM it came from decodes to."""
    pixels = radiograph(240, 200, 4095, np.uint16)
    path, compressed = high_bit_jpeg(tool, tmp_path, pixels, 12, ["+ee", "+bt"])
    assert start_of_frame(path) == 0xC1

    ds = read_image(path)

    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    np.testing.assert_array_equal(ds.pixel_array, compressed.pixel_array)
    assert np.abs(ds.pixel_array.astype(int) - pixels).mean() < 20  # lossy, but this image
    assert picture_size(path) == (240, 200)


def _cut_in_half(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _header_only(data: bytes) -> bytes:
    return data[:data.find(b"\xff\xda")]


def _garbled_scan(data: bytes) -> bytes:
    scan = data.find(b"\xff\xda") + 40
    return data[:scan] + b"\xff\x00" * 50 + data[scan + 100:]


def _corrupt_huffman_table(data: bytes) -> bytes:
    table = data.find(b"\xff\xc4")
    return data[:table + 5] + b"\xff" * 16 + data[table + 21:]  # code counts past 2^16


def _three_components(data: bytes) -> bytes:
    frame = data.find(b"\xff\xc3")
    return data[:frame + 9] + b"\x03" + data[frame + 10:]


@pytest.mark.parametrize(("damage", "message"), [
    (_cut_in_half, r"cannot be decoded \(the file ends before the JPEG's end-of-image "
                   r"marker: truncated\)"),
    (_header_only, "cannot be decoded .*truncated"),
    (_garbled_scan, r"cannot be decoded \(libjpeg error .*huffman code"),
    (_corrupt_huffman_table, r"cannot be decoded \(libjpeg error .*huffman table"),
    (_three_components, "a 16-bit JPEG of 3 components; a radiograph is one grey channel"),
])
def test_a_damaged_high_bit_jpeg_is_refused_naming_the_file(tool, tmp_path, damage, message):
    path, _ = high_bit_jpeg(tool, tmp_path, radiograph(200, 200, 65535, np.uint16), 16,
                            ["+e1"])
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(UnsupportedImage, match=message) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(("write", "message"), [
    (lambda path: Image.fromarray(np.dstack([radiograph(64, 64, 255, np.uint8)] * 2
                                            + [np.zeros((64, 64), np.uint8)])).save(path),
     "a colour image"),
    (lambda path: Image.fromarray(radiograph(64, 64, 255, np.uint8)).convert("P").save(path),
     'Pillow mode "P" is not an 8 or 16-bit grey image'),
    (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
     "not a readable PNG or JPEG"),
])
def test_pictures_the_model_must_not_see_are_refused_naming_the_file(tmp_path, write, message):
    path = tmp_path / "bad.png"
    write(path)

    with pytest.raises(UnsupportedImage, match=message) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_a_truncated_jpeg_is_refused_when_it_is_decoded(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(radiograph(200, 200, 255, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])

    with pytest.raises(UnsupportedImage, match="cannot be decoded"):
        read_image(path)


def test_dicom_files_are_known_by_suffix_or_by_their_marker(tmp_path):
    dx_dataset(radiograph(32, 32, 4000, np.uint16)).save_as(tmp_path / "plain",
                                                            enforce_file_format=True)
    (tmp_path / "notes").write_text("not an image")

    assert is_dicom(tmp_path / "plain") and not is_dicom(tmp_path / "notes")
    assert is_dicom(tmp_path / "x.dicom") and not is_dicom(tmp_path / "x.png")
