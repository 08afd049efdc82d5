"""Preprocessing on the detector's device: decoded pixels in, a normalised batch out.

The numpy path (:mod:`model.preprocess`) makes each model input on the host: on a
3000 x 2500 plate that is some tens of millions of float64 operations and a partial sort
per image, which on a GPU node costs more host time than the network costs GPU time.
Here the host only decodes, and builds per image a table of the display value of every
possible stored value (at most 65,536 entries: modality LUT or rescale, then VOI LUT or
window, by the same pydicom calls as the numpy path, PS3.4 N.2.1.1). The stored pixels
go to the device as they were decoded (uint16, a quarter of the bytes of the float64 the
host path computes in), and there, per image: a table lookup, the percentiles read off a
histogram of the stored values (a count per table entry, no sort), the stretch, the
MONOCHROME1 inversion and the resize into the letterbox (the numpy path's own call,
:func:`model.preprocess.resize_to_letterbox`); per batch: padding and normalisation.

The result equals the numpy path's up to float rounding: the table holds the very float64
values numpy computes, and the percentiles interpolate the same order statistics with
numpy's formula (tests/model/test_preprocess_torch.py). A 32-bit image whose values span
more than 65,536 levels (no radiograph seen so far) cannot have a table; it is prepared
on the host by the numpy path and joins the batch as a finished image.

Copies: on CUDA the pixels and tables are pinned when prepared (in the worker's
preparation thread), and :class:`DeviceFeed` copies one batch on a stream of its own
while the previous batch computes, so the copy engine and the network overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydicom.dataset import Dataset

from model.preprocess import (
    Letterbox,
    Photometric,
    PreprocessConfig,
    display_values,
    no_contrast,
    preprocess,
    resize_to_letterbox,
    stored_pixels,
)

TABLE_ENTRIES = 2**16  # the largest table: every value of a 16-bit stored pixel


@dataclass(frozen=True)
class StoredImage:
    """One decoded frame bound for the device, with the table of its display values.

    ``table[pixels + offset]`` is what :func:`model.preprocess.display_values` gives for
    each pixel; ``offset`` makes signed stored values non-negative indices. ``ranks`` and
    ``weights``: numpy's interpolation between order statistics for the two percentiles
    (:func:`percentile_ranks`), made on the host so that the device never waits for a copy.
    """

    pixels: torch.Tensor  # (rows, columns) integers as decoded (pinned when bound for CUDA)
    table: torch.Tensor  # (entries,) float64
    offset: int
    monochrome1: bool
    letterbox: Letterbox
    ranks: torch.Tensor  # (4,) int64: low percentile's two ranks, then the high one's
    weights: tuple[float, float]

    def to(self, device: torch.device) -> StoredImage:
        return StoredImage(self.pixels.to(device, non_blocking=True),
                           self.table.to(device, non_blocking=True), self.offset,
                           self.monochrome1, self.letterbox,
                           self.ranks.to(device, non_blocking=True), self.weights)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.pixels, self.table, self.ranks


@dataclass(frozen=True)
class HostImage:
    """An image the numpy path already made: (S, S) float32 in [0, 1], letterboxed."""

    image: torch.Tensor
    letterbox: Letterbox

    @classmethod
    def from_numpy(cls, image: np.ndarray, letterbox: Letterbox, pin: bool = False) -> HostImage:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return cls(tensor.pin_memory() if pin else tensor, letterbox)

    def to(self, device: torch.device) -> HostImage:
        return HostImage(self.image.to(device, non_blocking=True), self.letterbox)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.image,)


PreparedImage = StoredImage | HostImage


def stored_image(ds: Dataset, config: PreprocessConfig, pin: bool = False) -> PreparedImage:
    """The host's part of the torch path: decode, build the table, pin for CUDA.

    Raises ``UnsupportedImage`` for what the numpy path refuses before its percentiles
    (an image without contrast is only known on the device: see :func:`display_batch`).
    """
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    stored = stored_pixels(ds)
    letterbox = Letterbox.fit(*stored.shape, image_size=config.image_size)
    info = np.iinfo(stored.dtype)
    if info.bits <= 16:
        pixels, offset, first, last = stored, -info.min, info.min, info.max
    else:  # 32-bit: a table over the values present, shifted to start at 0
        first, last = int(stored.min()), int(stored.max())
        if last - first >= TABLE_ENTRIES:
            image, box = preprocess(ds, config)
            return HostImage.from_numpy(image, box, pin)
        pixels, offset = (stored.astype(np.int64) - first).astype(np.uint16), 0
    table = display_values(np.arange(first, last + 1, dtype=stored.dtype), ds)
    ranks, weights = percentile_ranks(stored.size, config)
    tensors = [torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(table),
               torch.tensor(ranks, dtype=torch.int64)]
    if pin:
        tensors = [tensor.pin_memory() for tensor in tensors]
    return StoredImage(tensors[0], tensors[1], offset,
                       ds.PhotometricInterpretation == Photometric.MONOCHROME1, letterbox,
                       tensors[2], weights)


def percentile_ranks(count: int, config: PreprocessConfig) -> tuple[list[int], tuple[float,
                                                                                      float]]:
    """numpy.percentile's default ("linear") for ``count`` values: per percentile, the ranks
    (0-based, in ascending order) of the two order statistics and the weight between them,
    in numpy's float64 arithmetic."""
    ranks, weights = [], []
    for percentile in (config.low_percentile, config.high_percentile):
        virtual = (count - 1) * (percentile / 100.0)  # numpy: (n - 1) * quantile
        below = min(math.floor(virtual), count - 1)
        ranks += [below, min(below + 1, count - 1)]
        weights.append(virtual - below)
    return ranks, (weights[0], weights[1])


def display_batch(items: Sequence[PreparedImage],
                  config: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared images already on one device -> ((N, S, S) float32 in [0, 1], letterboxed
    and padded; (N, 2) float64 percentile bounds, NaN for host images).

    An image whose bounds are not ``high > low`` has no contrast: it is left black here
    and the caller reports it (:func:`unusable`), as the numpy path refuses it; checking
    here would stop the host until the device caught up, once per image.
    """
    if not items:
        raise ValueError("items must hold at least one prepared image")
    device = items[0].tensors()[0].device
    size = config.image_size
    batch = torch.zeros(len(items), size, size, dtype=torch.float32, device=device)
    bounds = torch.full((len(items), 2), math.nan, dtype=torch.float64, device=device)
    for index, item in enumerate(items):
        if isinstance(item, HostImage):
            batch[index] = item.image
            continue
        box = item.letterbox
        flat = item.pixels.reshape(-1).to(torch.int64)
        if item.offset:
            flat = flat + item.offset
        values = item.table[flat]
        low, high = _percentiles(flat, item)
        # Same arithmetic as the numpy path, in float64; a flat image divides by 1, not 0.
        span = torch.where(high > low, high - low, torch.ones_like(high))
        display = (values.clamp(low, high) - low) / span
        if item.monochrome1:
            display = 1.0 - display
        display = display.to(torch.float32).reshape(item.pixels.shape)
        batch[index, box.pad_top:box.pad_top + box.resized_rows,
              box.pad_left:box.pad_left + box.resized_columns] = resize_to_letterbox(display, box)
        bounds[index, 0], bounds[index, 1] = low, high
    return batch, bounds


def unusable(bounds: np.ndarray) -> list[Exception | None]:
    """Per image of :func:`display_batch`'s bounds (on the host): the numpy path's
    ``UnsupportedImage`` for an image without contrast, else None."""
    return [no_contrast(float(low), float(high)) if not np.isnan(low) and not high > low
            else None for low, high in bounds]


def _percentiles(index: torch.Tensor, item: StoredImage) -> tuple[torch.Tensor, torch.Tensor]:
    """numpy.percentile's default ("linear") of ``item.table[index]``, from a histogram.

    The k-th smallest display value is the table entry at which the counts, taken in the
    order of the table's values, pass k. Ranks and weights are numpy's, in float64, so the
    result is numpy's to the last bit.
    """
    table = item.table
    counts = torch.zeros(table.numel(), dtype=torch.int64, device=table.device)
    counts.index_add_(0, index, torch.ones(1, dtype=torch.int64, device=table.device)
                      .expand(index.numel()))
    order = torch.argsort(table, stable=True)
    cumulative = torch.cumsum(counts[order], 0)
    ordered = table[order[torch.searchsorted(cumulative, item.ranks, right=True)]]
    return (_lerp(ordered[0], ordered[1], item.weights[0]),
            _lerp(ordered[2], ordered[3], item.weights[1]))


def _lerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """numpy's ``_lerp``: from the nearer end, so the result never leaves [a, b]."""
    difference = b - a
    return b - difference * (1 - weight) if weight >= 0.5 else a + difference * weight


class DeviceFeed:
    """Copies each batch's prepared images to the device while the previous batch computes.

    On CUDA the copies go on a stream of their own from pinned memory (``non_blocking``),
    and the compute stream waits for them by an event, so a batch's copies overlap the
    network on the batch before (a double buffer: at most two batches on the device). On
    the CPU ``send`` and ``receive`` hand the images through.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def send(self, items: Sequence[PreparedImage]) -> tuple[list[PreparedImage], object]:
        """Start the copies; returns what :meth:`receive` takes."""
        if self.stream is None:
            return [item.to(self.device) for item in items], None
        with torch.cuda.stream(self.stream):
            moved = [item.to(self.device) for item in items]
            copied = torch.cuda.Event()
            copied.record(self.stream)
        return moved, copied

    def receive(self, sent: tuple[list[PreparedImage], object]) -> list[PreparedImage]:
        """The images, safe to use on the current stream."""
        moved, copied = sent
        if copied is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copied)
            for item in moved:
                for tensor in item.tensors():
                    # Allocated on the copy stream, used on this one: the caching
                    # allocator must not hand the memory out again before this use ends.
                    tensor.record_stream(current)
        return moved
