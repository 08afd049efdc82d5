"""Drawing primitives of the radiograph style, in path units (line integrals of attenuation).

The radiograph style (:mod:`.radiograph`) draws everything as the path a ray travels through
it, so that every object has the profile a projection gives it: a solid cylinder (a vessel,
a wire) a chord ``2 sqrt(r^2 - d^2)`` across, a hollow one (a rib, a clavicle) bright at
its cortical edges. Tubes are drawn segment by segment, all segments of a call at once (one
numpy expression over every segment's pixel window), as :func:`.anatomy._draw_segments`
does for the classic style. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from model.phantom.raster import _Frame, _smooth

MU_WATER = 0.02  # attenuation of soft tissue per mm at a chest beam's effective energy
BONE_EXTRA = 1.6  # cortical bone attenuates this much more than the tissue it replaces
MARROW_EXTRA = 0.35  # trabecular bone and marrow, the same


def polyline(points) -> np.ndarray:
    """An (n, 2) float array of a curve's points, checked."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"a curve needs two or more (x, y) points, got shape {pts.shape}")
    return pts


def draw_tubes(acc: np.ndarray, frame: _Frame, curves, *, radius, per_mm: float,
               shell: float = 0.0, combine: np.ufunc = np.maximum) -> None:
    """Cylinders along curves (mm), as projected path, into ``acc``.

    ``curves`` is a list of (n, 2) point arrays; ``radius`` a number, or per curve an
    array of n radii (a tapering vessel). ``per_mm`` is the path per mm of chord (e.g.
    ``MU_WATER`` for blood in air-filled lung). ``shell`` > 0 makes a hollow tube whose
    cortex is that fraction of the radius: the projection through a hollow tube is longest
    at its edges, which is why ribs have bright margins. A tube narrower than a pixel keeps
    its area (the integral across it) and widens to ~1 px, so thin vessels fade instead of
    flickering. ``combine`` (np.maximum or np.add) merges a curve's own segments and
    whatever ``acc`` holds.
    """
    segs = []
    for k, curve in enumerate(curves):
        pts = polyline(curve)
        r = np.broadcast_to(np.asarray(radius[k] if isinstance(radius, list) else radius,
                                       np.float64), (len(pts),))
        segs.append(np.column_stack([pts[:-1], pts[1:], r[:-1], r[1:]]))
    if not segs:
        return
    x0, y0, x1, y1, r0, r1 = np.concatenate(segs).T
    floor = 0.6 * frame.mm
    reach = np.maximum(np.maximum(r0, r1), floor) + frame.mm
    px, py = frame.to_px(np.stack([np.minimum(x0, x1) - reach, np.maximum(x0, x1) + reach] * 2),
                         np.stack([np.minimum(y0, y1) - reach] * 2
                                  + [np.maximum(y0, y1) + reach] * 2))
    c0 = np.maximum(np.floor(px.min(0)).astype(np.int64), 0)
    c1 = np.minimum(np.ceil(px.max(0)).astype(np.int64) + 1, frame.shape[1])
    r0p = np.maximum(np.floor(py.min(0)).astype(np.int64), 0)
    r1p = np.minimum(np.ceil(py.max(0)).astype(np.int64) + 1, frame.shape[0])
    height, width = np.maximum(r1p - r0p, 0), np.maximum(c1 - c0, 0)
    sizes = height * width
    if not sizes.sum():
        return
    seg = np.repeat(np.arange(len(sizes)), sizes)
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = r0p[seg] + within // width[seg]
    cols = c0[seg] + within % width[seg]
    xs, ys = frame._centres_mm
    x, y = xs[rows, cols].astype(np.float64), ys[rows, cols].astype(np.float64)
    dx, dy = (x1 - x0)[seg], (y1 - y0)[seg]
    t = np.clip(((x - x0[seg]) * dx + (y - y0[seg]) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    d2 = (x - x0[seg] - t * dx) ** 2 + (y - y0[seg] - t * dy) ** 2
    r = r0[seg] + t * (r1 - r0)[seg]
    wide = np.maximum(r, floor)
    keep_area = (r / wide) ** 2  # a sub-pixel tube: same integral, spread over ~1 px
    outer = 2 * wide * np.sqrt(np.clip(1 - d2 / (wide * wide), 0, None))
    if shell > 0:
        inner_r = wide * (1 - shell)
        inner = 2 * inner_r * np.sqrt(np.clip(1 - d2 / (inner_r * inner_r), 0, None))
        chord = (outer - inner) + (MARROW_EXTRA / BONE_EXTRA) * inner
    else:
        chord = outer
    value = (per_mm * keep_area * chord).astype(np.float32)
    live = value != 0
    combine.at(acc, (rows[live], cols[live]), value[live])


def draw_curves_each(acc: np.ndarray, frame: _Frame, curves, radius, per_mm: float,
                     shell: float = 0.0) -> None:
    """Each curve merged into itself by maximum (its joints do not double up), then the
    curves added: two ribs that cross are denser where they cross, as they are."""
    for k, curve in enumerate(curves):
        layer = np.zeros(frame.shape, np.float32)
        draw_tubes(layer, frame, [curve], radius=[radius[k]] if isinstance(radius, list)
                   else radius, per_mm=per_mm, shell=shell)
        acc += layer


def fill_soft(frame: _Frame, poly: np.ndarray, edge_mm: float) -> np.ndarray:
    """A polygon's mask with an edge softened over about ``edge_mm``."""
    return _smooth(frame.fill(poly), edge_mm / frame.mm) if edge_mm > 0 else \
        frame.fill(poly).astype(np.float32)


def dome_profile(mask_soft: np.ndarray) -> np.ndarray:
    """0 outside, rising like the square root of the distance inside, 1 deep inside.

    ``mask_soft`` is a mask smoothed over a width w (0.5 on the outline). A convex body's
    thickness along a ray grows as the square root of the distance from its outline (a
    chord of a circle), which gives an organ's projection its soft but definite edge.
    """
    return np.sqrt(np.clip(2 * mask_soft - 1, 0, 1))


def pink_noise(rng: np.random.Generator, shape: tuple[int, int], mm: float, *,
               exponent: float, shortest_mm: float = 1.0, longest_mm: float = 60.0
               ) -> np.ndarray:
    """A random field whose power falls as 1/f**exponent between two wavelengths.

    Lung parenchyma, overlapping vessels and alveoli too small to resolve give a chest its
    mottled, self-similar texture (power spectra of chest radiographs fall roughly as a
    power of frequency, exponent about 2-3). Zero mean, unit standard deviation.
    """
    rows, cols = shape
    white = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(rows, d=mm)[:, None]
    fx = np.fft.rfftfreq(cols, d=mm)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    lo, hi = 1 / longest_mm, 1 / shortest_mm
    gain = np.where(f > 0, np.clip(f, lo, None) ** (-exponent / 2), 0.0)
    gain *= np.exp(-((f / hi) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=shape).astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-9)


def smooth_curve(points, per_segment: int = 6) -> np.ndarray:
    """Open Catmull-Rom curve through ``points`` (its ends kept)."""
    p = polyline(points)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None, None]
    p0, p1, p2, p3 = p[:-3], p[1:-2], p[2:-1], p[3:]
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                   + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    return np.vstack([curve.transpose(1, 0, 2).reshape(-1, 2), p[-2][None]])


def arc_length(curve: np.ndarray) -> np.ndarray:
    """Cumulative length along a curve, from 0 at its first point."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(curve, axis=0).T))])


def rotate(points: np.ndarray, angle: float, about=(0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = np.asarray(points, np.float64) - about
    return np.column_stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c]) + about
