"""DICOM dataset -> detector input, and detector boxes -> original pixel coordinates.

The detector must see every radiograph the way a radiologist would: bone white, air black,
whatever the modality wrote into the file. So the grey levels follow the display pipeline of
PS3.4 N.2.1.1 (modality LUT, then VOI LUT or window, then MONOCHROME1 inversion) before a
robust percentile stretch removes differences in exposure and detector between sites.
Geometry is a letterbox (aspect kept, centred zero padding) whose exact inverse maps the
detector's boxes back onto the original pixels for the SR, GSPS and SC we send back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from torch.nn import functional

# The detector's backbone was pretrained on ImageNet; its first layer expects these statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED_BITS_ALLOCATED = (8, 16, 32)


class Photometric(StrEnum):
    """The grey-scale Photometric Interpretations we accept (PS3.3 C.7.6.3.1.2)."""

    MONOCHROME1 = "MONOCHROME1"  # minimum value is displayed white
    MONOCHROME2 = "MONOCHROME2"  # minimum value is displayed black


class UnsupportedImage(ValueError):
    """The dataset holds pixels the model must not see; the message names the attribute."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a dataset becomes model input; stored in the model card, so a plain dict round-trips.

    Attributes
    ----------
    image_size : int
        Side of the square model input, in pixels.
    low_percentile, high_percentile : float
        Display values below/above these percentiles are clipped before scaling to [0, 1],
        so collimator edges and burned-in markers do not set the contrast.
    """

    image_size: int = 512
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise TypeError(f"image_size must be an int, got {self.image_size!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {self.image_size}")
        for name in ("low_percentile", "high_percentile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must lie in [0, 100], got {value}")
        if not self.low_percentile < self.high_percentile:
            raise ValueError(
                f"low_percentile ({self.low_percentile}) must be below "
                f"high_percentile ({self.high_percentile})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Exactly the keys ``to_dict`` writes: a card with missing or extra keys was not made by
        this code, and guessing defaults would silently change what the model sees."""
        if not isinstance(data, dict):
            raise TypeError(f"PreprocessConfig data must be a dict, got {type(data).__name__}")
        expected = {f.name for f in fields(cls)}
        if missing := expected - data.keys():
            raise ValueError(f"PreprocessConfig data lacks keys {sorted(missing)}")
        if unknown := data.keys() - expected:
            raise ValueError(f"PreprocessConfig data has unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one image's resize and padding.

    Coordinates are continuous pixel coordinates with (0, 0) at the top-left corner of the
    first pixel (as in PS3.3 C.10.5.1.2 for GSPS graphics), boxes are XYXY. Model coordinates
    are ``original * scale + pad``; the resized content occupies
    ``resized_rows`` x ``resized_columns`` pixels starting at (pad_top, pad_left).
    """

    rows: int
    columns: int
    scale: float
    pad_top: int
    pad_left: int
    image_size: int

    def __post_init__(self) -> None:
        for name in ("rows", "columns", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.pad_top < 0 or self.pad_top + self.resized_rows > self.image_size:
            raise ValueError(f"pad_top {self.pad_top} does not fit image_size {self.image_size}")
        if self.pad_left < 0 or self.pad_left + self.resized_columns > self.image_size:
            raise ValueError(f"pad_left {self.pad_left} does not fit image_size {self.image_size}")

    @classmethod
    def fit(cls, rows: int, columns: int, image_size: int) -> Letterbox:
        """The letterbox whose longer side fills ``image_size`` exactly, content centred."""
        if rows < 1 or columns < 1:
            raise ValueError(f"image must have at least one pixel, got {rows} x {columns}")
        longer = max(rows, columns)
        scale = image_size / longer
        # Floating point may land longer * scale just under image_size, and the resize floors.
        while math.floor(longer * scale) < image_size:
            scale = math.nextafter(scale, math.inf)
        resized_rows, resized_columns = math.floor(rows * scale), math.floor(columns * scale)
        if min(resized_rows, resized_columns) < 1:
            raise ValueError(f"a {rows} x {columns} image vanishes at image_size {image_size}")
        return cls(rows, columns, scale, (image_size - resized_rows) // 2,
                   (image_size - resized_columns) // 2, image_size)

    @property
    def resized_rows(self) -> int:
        return math.floor(self.rows * self.scale)

    @property
    def resized_columns(self) -> int:
        return math.floor(self.columns * self.scale)

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        """Original-pixel XYXY boxes (N, 4) -> model-input pixel coordinates."""
        return _as_boxes(boxes) * self.scale + self._offset()

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Model-input XYXY boxes (N, 4) -> original pixel coordinates, clipped to the image
        (a detector may put a box edge in the padding)."""
        original = (_as_boxes(boxes) - self._offset()) / self.scale
        np.clip(original[:, 0::2], 0.0, self.columns, out=original[:, 0::2])
        np.clip(original[:, 1::2], 0.0, self.rows, out=original[:, 1::2])
        return original

    def _offset(self) -> np.ndarray:
        return np.array([self.pad_left, self.pad_top, self.pad_left, self.pad_top], np.float64)


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) XYXY array, got shape {array.shape}")
    return array.copy()


def check_supported(ds: Dataset) -> None:
    """Refuse, before decoding, anything that is not one grey-scale integer frame."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if "PixelData" not in ds:
        raise UnsupportedImage("PixelData (7FE0,0010) is absent (float pixel data is not used)")
    if (samples := ds.get("SamplesPerPixel")) != 1:
        raise UnsupportedImage(f"SamplesPerPixel is {samples}, a radiograph has 1")
    if (photometric := ds.get("PhotometricInterpretation")) not in tuple(Photometric):
        raise UnsupportedImage(
            f'PhotometricInterpretation "{photometric}" is not MONOCHROME1 or MONOCHROME2'
        )
    if (frames := int(ds.get("NumberOfFrames") or 1)) != 1:
        raise UnsupportedImage(f"NumberOfFrames is {frames}, the model reads one frame")
    if (bits := ds.get("BitsAllocated")) not in SUPPORTED_BITS_ALLOCATED:
        raise UnsupportedImage(f"BitsAllocated is {bits}, expected {SUPPORTED_BITS_ALLOCATED}")


def _decode(ds: Dataset) -> np.ndarray:
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # each decoder plugin raises its own types; all mean "cannot read"
        name = getattr(syntax, "name", "unknown")
        raise UnsupportedImage(
            f'PixelData cannot be decoded from TransferSyntaxUID "{syntax}" ({name}): {exc}'
        ) from exc
    if stored.ndim != 2:
        raise UnsupportedImage(f"PixelData decoded to shape {stored.shape}, expected 2-D")
    return stored


def _apply_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """VOI LUT Sequence if present, else the first window (PS3.3 C.11.2), via pydicom."""
    items = ds.get("VOILUTSequence")
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        # A LUT is indexed by integers; pydicom casts into uint16 before clipping (values past
        # 65535 would wrap) and warns on the float64 that any rescale gives, so clip here.
        entries, first_mapped = items[0].LUTDescriptor[0] or 2**16, items[0].LUTDescriptor[1]
        values = np.clip(np.rint(values), first_mapped, first_mapped + entries - 1)
        values = values.astype(np.int64)
    try:
        return apply_voi_lut(values, ds, index=0)
    except (ValueError, NotImplementedError) as exc:
        raise UnsupportedImage(f"VOI LUT Module (VOILUTSequence/WindowWidth): {exc}") from exc


def stored_pixels(ds: Dataset) -> np.ndarray:
    """The decoded stored values of one grey-scale frame, checked before decoding."""
    check_supported(ds)
    return _decode(ds)


def display_values(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> display values (float64): modality LUT or rescale, then VOI LUT
    Sequence or window. Element by element, so the torch path applies it to a table of
    every possible stored value and gets exactly these numbers."""
    return _apply_voi(apply_modality_lut(stored, ds), ds).astype(np.float64)


def pixels_for_display(ds: Dataset, config: PreprocessConfig | None = None) -> np.ndarray:
    """Decoded pixels as a radiologist would see them: float32, 0 black, 1 white.

    Modality LUT or rescale, then VOI LUT Sequence or window (first value), then the
    ``config`` percentile stretch to [0, 1] (alone when there is neither), then MONOCHROME1
    inversion, exactly once: its Presentation LUT Shape INVERSE restates the same inversion
    (PS3.3 C.8.11.6.1.2) and is not applied again.

    Raises
    ------
    UnsupportedImage
        When the dataset is not one decodable grey-scale frame, or has no contrast.
    """
    config = PreprocessConfig() if config is None else config
    values = display_values(stored_pixels(ds), ds)
    low, high = np.percentile(values, [config.low_percentile, config.high_percentile])
    if not high > low:
        raise no_contrast(low, high)
    display = (np.clip(values, low, high) - low) / (high - low)
    if ds.PhotometricInterpretation == Photometric.MONOCHROME1:
        display = 1.0 - display
    return display.astype(np.float32)


def no_contrast(low: float, high: float) -> UnsupportedImage:
    return UnsupportedImage(f"PixelData has no contrast: percentiles give {low} to {high}")


def resize_to_letterbox(display: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """(rows, columns) float32 display values -> the letterbox's resized content, on the
    tensor's own device (the numpy and the torch path share this very call).

    The resize uses the letterbox's exact scale (not one recomputed from rounded sizes), so
    ``Letterbox.to_model`` is where content lands to float precision; antialiasing keeps fine
    texture from aliasing when a 3000-pixel plate shrinks to 512.
    """
    content = display[None, None]
    if box.scale != 1.0:
        content = functional.interpolate(
            content, scale_factor=box.scale, mode="bilinear", align_corners=False,
            antialias=True, recompute_scale_factor=False,
        )
    content = content[0, 0].clamp_(0.0, 1.0)
    if tuple(content.shape) != (box.resized_rows, box.resized_columns):
        raise RuntimeError(f"resize gave {tuple(content.shape)}, letterbox expects "
                           f"{(box.resized_rows, box.resized_columns)}")
    return content


def preprocess(ds: Dataset, config: PreprocessConfig) -> tuple[np.ndarray, Letterbox]:
    """One dataset -> (image_size, image_size) float32 in [0, 1], and its geometry."""
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    display = pixels_for_display(ds, config)
    box = Letterbox.fit(*display.shape, image_size=config.image_size)
    content = resize_to_letterbox(torch.from_numpy(display), box).numpy()
    image = np.zeros((config.image_size, config.image_size), np.float32)
    image[box.pad_top:box.pad_top + box.resized_rows,
          box.pad_left:box.pad_left + box.resized_columns] = content
    return image, box


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Preprocessed images -> (N, 3, S, S) float32, normalised (:func:`normalise`)."""
    if not images:
        raise ValueError("images must hold at least one image")
    shapes = sorted({np.shape(image) for image in images})
    if len(shapes) != 1 or len(shapes[0]) != 2 or shapes[0][0] != shapes[0][1]:
        raise ValueError(f"images must share one square 2-D shape, got {shapes}")
    return normalise(torch.from_numpy(np.stack(images).astype(np.float32, copy=False)))


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """(N, S, S) images in [0, 1] -> (N, 3, S, S), on their device: grey repeated into the
    three channels the ImageNet-pretrained backbone expects, with ImageNet mean and std.

    The statistics go in as numbers, not as a tensor copied to the device: such a copy
    would make the host wait for the device's queue once per batch.
    """
    return torch.stack([(batch - mean) / std
                        for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], 1)


def pixel_spacing_mm(header: Dataset) -> tuple[float, float] | None:
    """Row and column spacing in mm: ImagerPixelSpacing (DX and CR carry it at the
    detector), else PixelSpacing; None when neither is usable (absent, or zero as some CR
    plates write)."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        spacing = header.get(keyword)
        if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
            return float(spacing[0]), float(spacing[1])
    return None
