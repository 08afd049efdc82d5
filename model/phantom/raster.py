"""Array helpers for the working grid: the patient frame, splines, resizing, smoothing,
soft masks and noise fields. numpy only (no scipy where cxr-node is built)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class _Frame:
    """Patient millimetres <-> working-grid pixels; pixel (r, c) has its centre at (c+.5, r+.5)."""

    shape: tuple[int, int]
    mm: float  # millimetres per working pixel
    ox: float
    oy: float
    cos: float
    sin: float

    def to_px(self, x, y):
        return (self.ox + (x * self.cos - y * self.sin) / self.mm,
                self.oy + (x * self.sin + y * self.cos) / self.mm)

    def to_mm(self, px, py):
        dx, dy = (px - self.ox) * self.mm, (py - self.oy) * self.mm
        return dx * self.cos + dy * self.sin, dy * self.cos - dx * self.sin

    @cached_property
    def _centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel centre of the grid in mm, computed once: a window is a slice of it.

        Element by element the same float32 arithmetic as on a window's own centres, so
        the values (and every image drawn with them) are identical; a phantom draws a
        thousand windows, and computing each anew was a fifth of its time.
        """
        rows, columns = self.shape
        x, y = self.to_mm(np.arange(columns, dtype=np.float32)[None, :] + 0.5,
                          np.arange(rows, dtype=np.float32)[:, None] + 0.5)
        x, y = x.astype(np.float32), y.astype(np.float32)
        x.flags.writeable = y.flags.writeable = False  # shared by every window
        return x, y

    def local(self, x0: float, y0: float, x1: float, y1: float):
        """The grid window covering a patient-frame box, with its pixel centres in mm
        (read-only views)."""
        px, py = self.to_px(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
        c0, c1 = max(int(px.min()), 0), min(int(math.ceil(px.max())) + 1, self.shape[1])
        r0, r1 = max(int(py.min()), 0), min(int(math.ceil(py.max())) + 1, self.shape[0])
        if c1 <= c0 or r1 <= r0:
            return None
        window = (slice(r0, r1), slice(c0, c1))
        x, y = self._centres_mm
        return window, x[window], y[window]

    def fill(self, poly: np.ndarray) -> np.ndarray:
        """Boolean mask of a patient-frame polygon (even-odd rule, pixel centres)."""
        px, py = self.to_px(poly[:, 0], poly[:, 1])
        rows, cols = self.shape
        mask = np.zeros(self.shape, bool)
        r0, r1 = max(int(py.min()), 0), min(int(math.ceil(py.max())) + 1, rows)
        if r1 <= r0:
            return mask
        yc = np.arange(r0, r1)[:, None] + 0.5
        qx, qy = np.roll(px, -1), np.roll(py, -1)
        crosses = (yc >= np.minimum(py, qy)) & (yc < np.maximum(py, qy))
        xc = px + (yc - py) / np.where(qy == py, 1.0, qy - py) * (qx - px)
        rr, ee = np.nonzero(crosses)
        start = np.clip(np.ceil(xc[rr, ee] - 0.5), 0, cols).astype(np.intp)
        toggles = np.zeros((r1 - r0, cols + 1), np.int16)
        np.add.at(toggles, (rr, start), 1)
        mask[r0:r1] = (np.cumsum(toggles, axis=1, dtype=np.int16)[:, :cols] & 1).astype(bool)
        return mask


def _spline(points, per_segment: int = 8) -> np.ndarray:
    """Closed Catmull-Rom curve through ``points``; a repeated point makes a corner."""
    p1 = np.asarray(points, dtype=np.float64)
    p0, p2, p3 = np.roll(p1, 1, 0), np.roll(p1, -1, 0), np.roll(p1, -2, 0)
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None, None]
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                   + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    return curve.transpose(1, 0, 2).reshape(-1, 2)


def _bounds(mask: np.ndarray):
    """(r0, r1, c0, c1) of the set pixels, end-exclusive, or None."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize, pixel edges aligned (what the working grid stands for)."""
    out = img.astype(np.float32, copy=False)
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        if m == n:
            continue
        pos = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
        i0 = np.floor(pos).astype(np.intp)
        w = (pos - i0).astype(np.float32).reshape((-1, 1) if axis == 0 else (1, -1))
        a0, a1 = np.take(out, i0, axis), np.take(out, np.minimum(i0 + 1, m - 1), axis)
        out = a0 + (a1 - a0) * w
    return out


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like blur: small kernels directly, large ones by three box passes on a
    decimated copy (no scipy here, and the large blurs only shape soft profiles)."""
    img = img.astype(np.float32, copy=False)
    if sigma_px < 0.4:
        return img
    factor = int(sigma_px // 4)
    if factor >= 2 and min(img.shape) >= 2 * factor:
        rows, cols = img.shape
        pr, pc = -rows % factor, -cols % factor
        padded = np.pad(img, ((0, pr), (0, pc)), mode="edge")
        small = padded.reshape(padded.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))
        small = _smooth(small, sigma_px / factor)
        return _resize(small, padded.shape)[:rows, :cols]
    if sigma_px < 1.5:
        radius = int(math.ceil(3 * sigma_px))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
        kernel = (kernel / kernel.sum()).astype(np.float32)
        out = img
        for axis in (0, 1):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (radius, radius)
            padded, n = np.pad(out, pad, mode="edge"), out.shape[axis]
            out = sum(k * np.take(padded, np.arange(i, i + n), axis) for i, k in enumerate(kernel))
        return out
    radius = max(1, int(round(math.sqrt(sigma_px**2 + 0.25) - 0.5)))
    out = img
    for axis in (0, 1):
        for _ in range(3):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (radius + 1, radius)
            c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float32)
            width = 2 * radius + 1
            out = (c[width:] - c[:-width] if axis == 0 else c[:, width:] - c[:, :-width]) / width
    return out


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """A smoothed float copy of a boolean mask, computed only around where it is set."""
    out = np.zeros(mask.shape, np.float32)
    b = _bounds(mask)
    if b is not None:
        pad = int(3 * sigma_px) + 2
        r0, c0 = max(b[0] - pad, 0), max(b[2] - pad, 0)
        r1, c1 = min(b[1] + pad, mask.shape[0]), min(b[3] + pad, mask.shape[1])
        out[r0:r1, c0:c1] = _smooth(mask[r0:r1, c0:c1], sigma_px)
    return out


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float):
    """Smooth random field, unit standard deviation, features about ``cell_px`` across."""
    cell = max(cell_px, 1.0)
    grid = rng.standard_normal((int(shape[0] / cell) + 3, int(shape[1] / cell) + 3))
    big = _resize(grid.astype(np.float32), (int(grid.shape[0] * cell), int(grid.shape[1] * cell)))
    field = _smooth(big[: shape[0], : shape[1]], cell / 2)
    return (field - field.mean()) / (field.std() + 1e-6)
