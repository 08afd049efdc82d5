"""The torch preprocessing (the GPU path), run on the CPU device, against the numpy path.

Metric: the largest absolute difference, over every pixel of the letterboxed model input
(grey levels in [0, 1], before ImageNet normalisation), in 8-bit grey levels (x 255); the
bound is one grey level. On the CPU both paths share the resize call and the percentile
bounds are numpy's to the bit, so the difference seen is 0; a GPU's own interpolation
kernel may differ in the last float bits.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from model.detector import Detector, Preprocessing
from model.phantom import dx_dataset, synthesize_case
from model.preprocess import (
    PreprocessConfig,
    UnsupportedImage,
    display_values,
    normalise,
    preprocess,
    stored_pixels,
    to_tensor,
)
from model.preprocess_torch import HostImage, StoredImage, display_batch, stored_image, unusable
from tests.conftest import unavailable
from tests.model.test_preprocess import anatomy, with_voi_lut

ONE_GREY_LEVEL = 1 / 255
CONFIG = PreprocessConfig(image_size=256)


def grey_levels(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference in 8-bit grey levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() * 255)


def windowed(function: str, center: float = 1800, width: float = 1500) -> Dataset:
    ds = dx_dataset(anatomy(310, 260, seed=5))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    return ds


def rescaled_ct_like() -> Dataset:
    ds = dx_dataset(anatomy(200, 333, seed=6))
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


def signed(pixel_shift: int = 2048) -> Dataset:
    ds = dx_dataset(anatomy(240, 180, seed=7))
    values = ds.pixel_array.astype(np.int32) - pixel_shift
    ds.PixelRepresentation = 1
    ds.PixelData = values.astype(np.int16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 0, 3000
    return ds


def eight_bit() -> Dataset:
    ds = dx_dataset((anatomy(150, 400, seed=8) >> 4).astype(np.uint8), bits_stored=8)
    del ds.WindowCenter, ds.WindowWidth
    return ds


def thirty_two_bit(shift: int) -> Dataset:
    """Narrow range (shift 0: 12 bits) takes a table; wide (16: 28 bits) the host path."""
    reference = anatomy(120, 100, seed=4)
    ds = dx_dataset(reference)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 28, 27
    ds.PixelData = (reference.astype(np.uint32) << shift).tobytes()
    del ds.WindowCenter, ds.WindowWidth
    return ds


def voi_lut() -> Dataset:
    lut = np.round((np.arange(4096) / 4095) ** 2 * 65535).astype(np.uint16)
    return with_voi_lut(dx_dataset(anatomy(280, 280, seed=9)), lut)


def modality_lut() -> Dataset:
    ds = dx_dataset(anatomy(180, 260, seed=10))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "US", [int(v) for v in np.sqrt(np.arange(4096) / 4095) * 60000])
    ds.ModalityLUTSequence = [item]
    del ds.WindowCenter, ds.WindowWidth
    return ds


def phantom(index: int, photometric: str | None = None) -> Dataset:
    ds = synthesize_case(11, index, size_range=(300, 900)).dataset
    if photometric and ds.PhotometricInterpretation != photometric:
        top = 2 ** int(ds.BitsStored) - 1
        ds.PixelData = (top - ds.pixel_array).astype(np.uint16).tobytes()
        ds.PhotometricInterpretation = photometric
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    return ds


def chest_radiograph() -> Dataset:
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        unavailable("RG1_UNCR.dcm from the PyPI package pydicom-data is not installed")
    return pydicom.dcmread(path)


CASES = {
    "phantom-mono2": lambda: phantom(0, "MONOCHROME2"),
    "phantom-mono1": lambda: phantom(1, "MONOCHROME1"),
    "window-linear": lambda: windowed("LINEAR"),
    "window-linear-exact": lambda: windowed("LINEAR_EXACT"),
    "window-sigmoid": lambda: windowed("SIGMOID"),
    "rescale-and-window": rescaled_ct_like,
    "signed-16-bit": signed,
    "8-bit": eight_bit,
    "32-bit-narrow": lambda: thirty_two_bit(0),
    "32-bit-wide": lambda: thirty_two_bit(16),
    "voi-lut-sequence": voi_lut,
    "modality-lut-sequence": modality_lut,
    "rg1-chest-radiograph": chest_radiograph,
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_torch_path_equals_numpy_path_within_one_grey_level(make):
    ds = make()
    expected, expected_box = preprocess(ds, CONFIG)

    prepared = stored_image(ds, CONFIG)
    [image], bounds = display_batch([prepared], CONFIG)

    assert prepared.letterbox == expected_box
    assert image.dtype == torch.float32 and tuple(image.shape) == (256, 256)
    assert grey_levels(image.numpy(), expected) <= 1.0
    assert unusable(bounds.numpy()) == [None]


@pytest.mark.parametrize("make", [CASES["phantom-mono1"], signed, voi_lut, thirty_two_bit],
                         ids=["phantom", "signed", "voi-lut", "32-bit"])
def test_percentile_bounds_from_the_histogram_are_numpys_to_the_bit(make):
    ds = make(0) if make is thirty_two_bit else make()
    values = display_values(stored_pixels(ds), ds)
    expected = np.percentile(values, [CONFIG.low_percentile, CONFIG.high_percentile])

    _, bounds = display_batch([stored_image(ds, CONFIG)], CONFIG)

    assert bounds[0].tolist() == expected.tolist()


def test_pixels_travel_as_decoded_and_only_an_unbounded_32_bit_image_is_made_on_the_host():
    assert stored_image(phantom(2), CONFIG).pixels.dtype == torch.uint16
    assert stored_image(signed(), CONFIG).pixels.dtype == torch.int16
    assert stored_image(eight_bit(), CONFIG).pixels.dtype == torch.uint8
    narrow = stored_image(thirty_two_bit(0), CONFIG)
    assert isinstance(narrow, StoredImage) and narrow.pixels.dtype == torch.uint16
    assert isinstance(stored_image(thirty_two_bit(16), CONFIG), HostImage)


def test_a_batch_of_mixed_sizes_normalises_like_the_numpy_batch():
    datasets = [phantom(3), phantom(4, "MONOCHROME1"), eight_bit(), thirty_two_bit(16)]
    expected = to_tensor([preprocess(ds, CONFIG)[0] for ds in datasets])

    images, _ = display_batch([stored_image(ds, CONFIG) for ds in datasets], CONFIG)
    batch = normalise(images)
    assert batch.shape == expected.shape == (4, 3, 256, 256)
    # One grey level in [0, 1] is 1/255 / std in the normalised units; std >= 0.224.
    assert float((batch - expected).abs().max()) <= ONE_GREY_LEVEL / 0.224


def test_an_image_without_contrast_is_refused_with_the_numpy_paths_message():
    flat = dx_dataset(np.full((64, 80), 1000, np.uint16))
    del flat.WindowCenter, flat.WindowWidth
    with pytest.raises(UnsupportedImage) as numpy_refusal:
        preprocess(flat, CONFIG)

    images, bounds = display_batch([stored_image(phantom(5), CONFIG),
                                    stored_image(flat, CONFIG)], CONFIG)

    ok, refused = unusable(bounds.numpy())
    assert ok is None and str(refused) == str(numpy_refusal.value)
    assert isinstance(refused, UnsupportedImage)
    assert not images[1].any()  # left black, not NaN


def test_detector_with_torch_preprocessing_finds_what_the_numpy_path_finds(tiny_model):
    datasets = [phantom(6), phantom(7, "MONOCHROME1"), signed()]
    numpy_path = Detector.load(tiny_model, device="cpu")
    torch_path = Detector.load(tiny_model, device="cpu", preprocessing="torch")
    assert (numpy_path.preprocessing, torch_path.preprocessing) == (Preprocessing.NUMPY,
                                                                    Preprocessing.TORCH)

    expected = numpy_path.predict(datasets, apply_thresholds=False)
    found = torch_path.predict(datasets, apply_thresholds=False)

    for theirs, ours in zip(expected, found, strict=True):
        assert len(ours) == len(theirs) > 0
        for a, b in zip(sorted(theirs, key=lambda d: -d.score),
                        sorted(ours, key=lambda d: -d.score), strict=True):
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)


def test_predict_prepared_reports_a_flat_image_in_its_place_and_reads_the_others(tiny_model):
    detector = Detector.load(tiny_model, device="cpu", preprocessing="torch")
    flat = dx_dataset(np.full((64, 80), 1000, np.uint16))
    del flat.WindowCenter, flat.WindowWidth

    first, refused, last = detector.predict_prepared(
        [detector.prepare(ds) for ds in (phantom(8), flat, phantom(9))], apply_thresholds=False)

    assert isinstance(refused, UnsupportedImage) and "no contrast" in str(refused)
    assert first and last
    with pytest.raises(UnsupportedImage, match="no contrast"):
        detector.predict([flat])


def test_unknown_preprocessing_is_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match='preprocessing "gpu" is not one of'):
        Detector.load(tiny_model, device="cpu", preprocessing="gpu")


@pytest.mark.gpu
def test_on_cuda_pixels_are_pinned_and_the_device_path_matches_the_cpu(tiny_model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the pinned, overlapped copies run only there")
    datasets = [phantom(index) for index in range(5)]
    on_gpu = Detector.load(tiny_model, device="cuda")
    assert on_gpu.preprocessing == Preprocessing.TORCH
    prepared = [on_gpu.prepare(ds) for ds in datasets]
    assert all(item.pixels.is_pinned() and item.table.is_pinned() for item in prepared)
    images, _ = display_batch([item.to(torch.device("cuda")) for item in prepared], CONFIG)
    for ds, image in zip(datasets, images.cpu().numpy(), strict=True):
        assert grey_levels(image, preprocess(ds, CONFIG)[0]) <= 1.0
    # Batches of two: the copies of each batch overlap the batch before.
    found = on_gpu.predict_prepared(prepared, apply_thresholds=False, batch_size=2)
    assert len(found) == 5 and all(isinstance(result, list) for result in found)
