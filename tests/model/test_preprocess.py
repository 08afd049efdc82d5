"""DICOM -> model input: grey levels as a radiologist sees them, boxes that map back exactly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from model.phantom import dx_dataset
from model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Letterbox,
    PreprocessConfig,
    UnsupportedImage,
    pixel_spacing_mm,
    pixels_for_display,
    preprocess,
    to_tensor,
)

SIZES = [(2500, 2048), (2048, 2500), (300, 1000), (512, 512)]
FULL_RANGE = PreprocessConfig(low_percentile=0.0, high_percentile=100.0)


def read_testdata(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name, download=False))


def anatomy(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """Smooth 12-bit 'anatomy' with noise: values in [200, 3800], never constant."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    field = np.sin(7 * x + seed) * np.cos(5 * y) + rng.normal(0, 0.1, (rows, columns))
    field = (field - field.min()) / (field.max() - field.min())
    return (200 + 3600 * field).astype(np.uint16)


def random_boxes(rng: np.random.Generator, rows: int, columns: int, n: int = 200) -> np.ndarray:
    corners = rng.uniform(0, 1, (n, 2, 2)) * [columns, rows]
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def with_voi_lut(ds: Dataset, lut: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(lut), 0, 16])
    item.add_new("LUTData", "US", [int(v) for v in lut])
    ds.VOILUTSequence = [item]
    return ds


# --- geometry ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "columns"), SIZES)
def test_letterbox_boxes_round_trip(rows, columns):
    box = Letterbox.fit(rows, columns, 512)
    boxes = random_boxes(np.random.default_rng(rows + columns), rows, columns)
    boxes = np.vstack([boxes, [0, 0, columns, rows]])

    model = box.to_model(boxes)

    np.testing.assert_allclose(box.to_original(model), boxes, rtol=0, atol=1e-6)
    assert model.min() >= 0 and model.max() <= 512 + 1e-9
    assert max(box.resized_rows, box.resized_columns) == 512  # the longer side fills the input


def test_letterbox_pads_centrally_and_clips_boxes_in_the_padding():
    box = Letterbox.fit(300, 1000, 512)  # wide: padding above and below
    assert (box.pad_left, box.resized_columns) == (0, 512)
    assert box.pad_top == (512 - box.resized_rows) // 2 > 0

    in_padding = box.to_original(np.array([[-5.0, 0.0, 600.0, 512.0]]))

    np.testing.assert_allclose(in_padding, [[0, 0, 1000, 300]])


@pytest.mark.parametrize("shape", [(4,), (2, 5), (1, 2, 4)])
def test_letterbox_refuses_boxes_that_are_not_n_by_4(shape):
    with pytest.raises(ValueError, match="boxes"):
        Letterbox.fit(100, 100, 64).to_model(np.zeros(shape))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(("rows", "columns"), SIZES)
def test_bright_rectangle_lands_at_to_model_box(rows, columns, photometric):
    rng = np.random.default_rng(1)
    pixels = rng.integers(1000, 1400, (rows, columns)).astype(np.uint16)
    x0, y0, x1, y1 = int(0.3 * columns), int(0.4 * rows), int(0.6 * columns), int(0.7 * rows)
    pixels[y0:y1, x0:x1] = 3800
    if photometric == "MONOCHROME1":  # bright on screen is a low stored value
        pixels = 4095 - pixels
    ds = dx_dataset(pixels, photometric=photometric)

    image, box = preprocess(ds, PreprocessConfig())
    mx0, my0, mx1, my1 = box.to_model(np.array([[x0, y0, x1, y1]], float))[0]

    inside = image[int(np.ceil(my0)) + 1:int(my1) - 1, int(np.ceil(mx0)) + 1:int(mx1) - 1]
    ring = np.zeros(image.shape, bool)
    ring[int(my0) - 4:int(np.ceil(my1)) + 4, int(mx0) - 4:int(np.ceil(mx1)) + 4] = True
    ring[int(my0) - 1:int(np.ceil(my1)) + 1, int(mx0) - 1:int(np.ceil(mx1)) + 1] = False
    assert inside.mean() > 0.95
    assert image[ring].mean() < 0.2
    np.testing.assert_allclose(box.to_original(box.to_model(np.array([[x0, y0, x1, y1]]))),
                               [[x0, y0, x1, y1]], atol=1e-6)


@pytest.mark.parametrize(("rows", "columns"), SIZES)
def test_resized_pixels_sit_where_letterbox_says(rows, columns):
    """A horizontal ramp (value = column index) read back at model pixel centres."""
    pixels = np.broadcast_to(np.arange(columns, dtype=np.uint16), (rows, columns)).copy()
    ds = dx_dataset(pixels)
    del ds.WindowCenter, ds.WindowWidth

    image, box = preprocess(ds, FULL_RANGE)

    centres = np.arange(512) + 0.5
    source_x = box.to_original(np.stack([centres, centres, centres, centres], axis=1))[:, 0]
    expected = (source_x - 0.5) / (columns - 1)  # pixel c has its centre at c + 0.5
    row = box.pad_top + box.resized_rows // 2
    interior = slice(box.pad_left + 4, box.pad_left + box.resized_columns - 4)
    np.testing.assert_allclose(image[row, interior], expected[interior], atol=2e-4)


def test_downscaling_does_not_alias_fine_texture_into_stripes():
    stripes = np.zeros((2000, 2000), np.uint16)
    stripes[:, ::2] = 4000  # one-pixel lines, far above what 512 pixels can show

    image, _ = preprocess(dx_dataset(stripes), PreprocessConfig())

    assert image.mean() == pytest.approx(0.5, abs=0.01)
    assert image.std() < 0.02


# --- grey levels ------------------------------------------------------------------------------

def test_monochrome1_and_monochrome2_of_the_same_anatomy_display_alike():
    mono2 = anatomy(300, 240)
    mono1 = 4095 - mono2

    shown1 = pixels_for_display(dx_dataset(mono1, photometric="MONOCHROME1"))
    shown2 = pixels_for_display(dx_dataset(mono2, photometric="MONOCHROME2"))

    np.testing.assert_allclose(shown1, shown2, atol=1e-5)
    assert shown1[np.unravel_index(mono1.argmin(), mono1.shape)] == 1.0  # inverted, once


def test_voi_lut_sequence_takes_precedence_over_the_window():
    stored = np.broadcast_to(np.arange(4096, dtype=np.uint16), (8, 4096)).copy()
    lut = np.round((np.arange(4096) / 4095) ** 2 * 65535).astype(np.uint16)
    ds = with_voi_lut(dx_dataset(stored), lut)
    ds.WindowCenter, ds.WindowWidth = 1000, 200

    shown = pixels_for_display(ds, FULL_RANGE)

    np.testing.assert_allclose(shown[0], lut / 65535, atol=1e-6)


def test_voi_lut_clips_values_outside_its_input_range():
    stored = np.broadcast_to(np.arange(0, 4096, 16, dtype=np.uint16), (4, 256)).copy()
    ds = with_voi_lut(dx_dataset(stored), np.arange(1024, dtype=np.uint16) * 64)

    shown = pixels_for_display(ds, FULL_RANGE)

    np.testing.assert_allclose(shown[0], np.minimum(np.arange(256) * 16, 1023) / 1023, atol=1e-6)


def test_voi_lut_indexes_rescaled_values_past_16_bits_without_wrapping():
    stored = np.array([[0, 10, 20, 655, 656, 1000]], np.uint16).repeat(2, axis=0)
    lut = np.arange(4096, dtype=np.uint16) * 16
    ds = with_voi_lut(dx_dataset(stored), lut)
    ds.RescaleSlope = 100  # modality values 0 ... 100000, past a uint16 LUT index

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor pydicom's "VOI LUT on a float input" warning
        shown = pixels_for_display(ds, FULL_RANGE)

    np.testing.assert_allclose(shown[0], [0, 1000 / 4095, 2000 / 4095, 1, 1, 1], atol=1e-6)


@pytest.mark.parametrize(("center", "width"), [(1000, 500), ([1000, 3000], [500, 100])],
                         ids=["single", "first-of-several"])
def test_window_is_applied(center, width):
    stored = np.broadcast_to(np.arange(4096, dtype=np.uint16), (4, 4096)).copy()
    ds = dx_dataset(stored)
    ds.WindowCenter, ds.WindowWidth = center, width

    shown = pixels_for_display(ds)

    x = np.arange(4096)
    expected = np.clip((x - 999.5) / 499 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1, LINEAR
    np.testing.assert_allclose(shown[0], expected, atol=1e-6)


def test_rescale_then_window_matches_a_hand_computation():
    """CT-like: stored 0..4095, HU = stored - 1024, soft-tissue window 40/400."""
    stored = np.zeros((100, 100), np.uint16)  # air, well below the window
    stored[50:] = 4000  # metal, well above it
    probes = {(10, 10): 1064, (20, 20): 1024, (30, 30): 1200, (40, 40): 900}
    for (r, c), value in probes.items():
        stored[r, c] = value
    ds = dx_dataset(stored)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400

    shown = pixels_for_display(ds)

    for (r, c), value in probes.items():
        hu = value - 1024
        assert shown[r, c] == pytest.approx(np.clip((hu - 39.5) / 399 + 0.5, 0, 1), abs=1e-6)


def test_without_voi_the_percentiles_alone_set_the_contrast():
    stored = anatomy(200, 300, seed=3)
    ds = dx_dataset(stored)
    del ds.WindowCenter, ds.WindowWidth

    shown = pixels_for_display(ds, PreprocessConfig(low_percentile=2, high_percentile=98))

    low, high = np.percentile(stored, [2, 98])
    np.testing.assert_allclose(shown, np.clip((stored - low) / (high - low), 0, 1), atol=1e-6)
    assert shown.dtype == np.float32 and shown.min() == 0 and shown.max() == 1


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_every_supported_bits_allocated_displays_the_same_anatomy(bits):
    reference = anatomy(120, 100, seed=4)  # 12 significant bits
    if bits == 8:
        ds = dx_dataset((reference >> 4).astype(np.uint8), bits_stored=8)
    else:
        ds = dx_dataset(reference)
    if bits == 32:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 28, 27
        ds.PixelData = (reference.astype(np.uint32) << 16).tobytes()
    del ds.WindowCenter, ds.WindowWidth

    shown = pixels_for_display(ds)

    expected = pixels_for_display(dx_dataset(reference, bits_stored=12))
    np.testing.assert_allclose(shown, expected, atol=0.01 if bits == 8 else 1e-6)


# --- transfer syntaxes and the real chest radiograph -------------------------------------------

def test_rg1_jpeg2000_twin_preprocesses_identically():
    uncompressed, compressed = read_testdata("RG1_UNCR.dcm"), read_testdata("RG1_J2KR.dcm")
    assert compressed.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"

    np.testing.assert_array_equal(compressed.pixel_array, uncompressed.pixel_array)
    (image_u, box_u), (image_c, box_c) = (preprocess(d, PreprocessConfig())
                                          for d in (uncompressed, compressed))
    np.testing.assert_array_equal(image_c, image_u)
    assert box_c == box_u


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm"])
def test_compressed_mr_decodes_like_its_uncompressed_twin_but_is_refused(name):
    compressed, uncompressed = read_testdata(name), read_testdata("emri_small.dcm")

    np.testing.assert_array_equal(compressed.pixel_array, uncompressed.pixel_array)
    with pytest.raises(UnsupportedImage, match="NumberOfFrames"):
        preprocess(compressed, PreprocessConfig())


def test_rg1_chest_radiograph_becomes_a_letterboxed_512_image():
    ds = read_testdata("RG1_UNCR.dcm")
    assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (1955, 1841, "MONOCHROME1")

    image, box = preprocess(ds, PreprocessConfig())

    assert image.shape == (512, 512) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert (box.pad_top, box.resized_rows) == (0, 512)
    assert box.pad_left > 0 and box.pad_left + box.resized_columns < 512
    assert not image[:, :box.pad_left].any()
    assert not image[:, box.pad_left + box.resized_columns:].any()
    content = image[:, box.pad_left:box.pad_left + box.resized_columns]
    assert content.std() > 0.15 and content.max() == pytest.approx(1.0, abs=0.01)


# --- refusals ---------------------------------------------------------------------------------

def several_frames() -> Dataset:
    ds = dx_dataset(anatomy(64, 64))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return ds


def without(keyword: str) -> Dataset:
    ds = dx_dataset(anatomy(64, 64))
    delattr(ds, keyword)
    return ds


def with_value(keyword: str, value) -> Dataset:
    ds = dx_dataset(anatomy(64, 64))
    setattr(ds, keyword, value)
    return ds


def corrupt_jpeg2000() -> Dataset:
    ds = read_testdata("RG1_J2KR.dcm")
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    return ds


@pytest.mark.parametrize(("make", "attribute"), [
    (lambda: read_testdata("SC_rgb.dcm"), "SamplesPerPixel"),
    (several_frames, "NumberOfFrames"),
    (lambda: without("PixelData"), "PixelData"),
    (lambda: with_value("PhotometricInterpretation", "PALETTE COLOR"),
     "PhotometricInterpretation"),
    (lambda: with_value("BitsAllocated", 1), "BitsAllocated"),
    (corrupt_jpeg2000, "1.2.840.10008.1.2.4.90"),
    (lambda: dx_dataset(np.full((32, 32), 700, np.uint16)), "no contrast"),
    (lambda: with_value("WindowWidth", 0), "Window Width"),
], ids=["rgb", "frames", "no-pixels", "palette", "1-bit", "corrupt-j2k", "flat", "zero-width"])
def test_refusals_name_the_attribute(make, attribute):
    with pytest.raises(UnsupportedImage, match=attribute):
        preprocess(make(), PreprocessConfig())


def test_unsupported_image_is_a_value_error_and_a_non_dataset_a_type_error():
    assert issubclass(UnsupportedImage, ValueError)
    with pytest.raises(TypeError, match="Dataset"):
        pixels_for_display(np.zeros((4, 4)))


# --- configuration and tensors ----------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"image_size": 0}, ValueError, "image_size"),
    ({"image_size": -512}, ValueError, "image_size"),
    ({"image_size": 512.0}, TypeError, "image_size"),
    ({"low_percentile": 99.5, "high_percentile": 0.5}, ValueError, "low_percentile"),
    ({"low_percentile": 5, "high_percentile": 5}, ValueError, "low_percentile"),
    ({"high_percentile": 100.5}, ValueError, "high_percentile"),
    ({"low_percentile": -1}, ValueError, "low_percentile"),
])
def test_config_refuses_bad_values(kwargs, error, name):
    with pytest.raises(error, match=name):
        PreprocessConfig(**kwargs)


def test_config_round_trips_through_a_json_model_card():
    config = PreprocessConfig(image_size=768, low_percentile=1.0, high_percentile=99.0)

    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(("data", "message"), [
    ({"image_size": 512, "low_percentile": 0.5}, "high_percentile"),
    ({"image_size": 512, "low_percentile": 0.5, "high_percentile": 99.5, "gamma": 2}, "gamma"),
])
def test_config_from_dict_refuses_missing_or_unknown_keys(data, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_dict(data)


def test_to_tensor_repeats_grey_into_imagenet_normalised_channels():
    black, white = np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)

    batch = to_tensor([black, white])

    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch[0, :, 5, 5], -mean / std)
    torch.testing.assert_close(batch[1, :, 5, 5], (1 - mean) / std)


@pytest.mark.parametrize("images", [[], [np.zeros((64, 64)), np.zeros((32, 32))],
                                    [np.zeros((64, 32))]], ids=["empty", "mixed", "not-square"])
def test_to_tensor_refuses_images_that_cannot_form_a_batch(images):
    with pytest.raises(ValueError, match="images"):
        to_tensor(images)


def test_pixel_spacing_prefers_the_detector_spacing_and_ignores_zero():
    ds = dx_dataset(np.zeros((8, 8), np.uint16), patient_id="P1")
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = [0.2, 0.3]
    assert pixel_spacing_mm(ds) == (0.2, 0.3)
    ds.ImagerPixelSpacing = [0.14, 0.15]
    assert pixel_spacing_mm(ds) == (0.14, 0.15)
    ds.ImagerPixelSpacing, ds.PixelSpacing = [0, 0], [0, 0]  # as some CR plates write
    assert pixel_spacing_mm(ds) is None
