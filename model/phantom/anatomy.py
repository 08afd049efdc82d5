"""Acquisition and anatomy: sampling the exposure and the body, drawing it as attenuation.

Sizes are in millimetres in the patient frame described in :mod:`model.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantom.raster import _Frame, _noise_field, _smooth, _soft, _spline

_WORK_MAX_PX = 1024
_SIDES = (-1, 1)   # patient's right lung (image left), patient's left lung (image right)


@dataclass(frozen=True)
class _Acquisition:
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    gamma: float
    low: float  # fraction of the stored range used for air
    high: float  # fraction used for the densest tissue
    noise: float
    compression: float  # dynamic-range compression, as an unsharp-mask weight


@dataclass(frozen=True)
class _Bone:
    """A bone drawn along y = f(a), a the lateral distance from the midline on one side."""

    side: int
    a: np.ndarray
    y: np.ndarray
    radius: float
    amp: float


@dataclass
class _Body:
    frame: _Frame
    spacing_mm: float
    half_width: tuple[float, float]  # inner rib cage, patient right then left
    base: tuple[float, float]  # costophrenic angle level (y)
    dome: tuple[float, float]  # dome height above the angle
    medial: float
    outline: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]
    hila: tuple[tuple[float, float], tuple[float, float]]
    heart: np.ndarray
    big_heart: np.ndarray
    mediastinum: np.ndarray
    bones: list[_Bone]
    vertebrae: list[tuple[float, float, float]]  # centre y, half width, half height
    vessels: list[tuple[float, ...]]  # x0, y0, x1, y1, radius, attenuation
    airways: list[tuple[float, ...]]
    bubble: tuple[float, float, float, float] | None  # gastric air: x, y, rx, ry


def _sample_acquisition(rng: np.random.Generator, size_range: tuple[int, int]) -> _Acquisition:
    lo, hi = size_range
    columns = int(rng.integers(lo, hi + 1))
    rows = int(np.clip(round(columns * rng.uniform(0.9, 1.25)), lo, hi))
    return _Acquisition(
        rows=rows, columns=columns, bits_stored=int(rng.integers(10, 17)),
        photometric="MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2",
        gamma=rng.uniform(0.75, 1.3), low=rng.uniform(0.01, 0.12), high=rng.uniform(0.6, 0.98),
        noise=rng.uniform(0.004, 0.014), compression=rng.uniform(0.0, 0.5))


def _lung_outline(rng, side: int, half: float, base: float, dome: float, medial: float):
    """Apex, lateral wall, sharp costophrenic angle, hemidiaphragm dome, medial border."""
    t, h, d = half, base, dome
    pts = [(medial + 6, 30), (0.28 * t, 6), (0.45 * t, 0), (0.62 * t, 7), (0.78 * t, 26),
           (0.9 * t, 62), (0.97 * t, 0.45 * h), (t, 0.65 * h), (0.99 * t, 0.83 * h),
           (0.965 * t, h - 10), (0.94 * t, h), (0.94 * t, h), (0.84 * t, h - 0.5 * d),
           (0.68 * t, h - 0.88 * d), (0.5 * t, h - d), (0.32 * t, h - 0.9 * d),
           (0.15 * t, h - 0.7 * d), (medial, h - 0.55 * d), (medial, 0.6 * h), (medial, 0.3 * h)]
    pts = np.array(pts)
    jitter = np.column_stack([rng.uniform(0.97, 1.03, len(pts)), rng.uniform(-3, 3, len(pts))])
    jitter[11] = jitter[10]  # keep the angle's repeated point repeated
    pts = np.column_stack([pts[:, 0] * jitter[:, 0], pts[:, 1] + jitter[:, 1]])
    pts[[7], 0] = t  # the widest point is the rib cage's half-width
    outline = _spline(pts, 10)
    outline[:, 0] *= side
    return outline


def _heart_outline(shape, width: float, height: float, right_x: float, bottom: float):
    """A tilted ellipse (apex down and to the patient's left) cut flat where it meets the
    diaphragm, scaled to the wanted width and height."""
    tilt, ecc, cut = shape
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    ux, uy = np.cos(t), ecc * np.sin(t)
    pts = np.column_stack([ux * math.cos(tilt) - uy * math.sin(tilt),
                           ux * math.sin(tilt) + uy * math.cos(tilt)])
    clipped = []
    for p, q in zip(pts, np.roll(pts, -1, 0), strict=True):  # keep y <= cut (convex: one pass)
        if p[1] <= cut:
            clipped.append(p)
        if (p[1] <= cut) != (q[1] <= cut):
            clipped.append(p + (cut - p[1]) / (q[1] - p[1]) * (q - p))
    pts = np.array(clipped)
    lo, hi = pts.min(0), pts.max(0)
    return np.column_stack([right_x + (pts[:, 0] - lo[0]) / (hi[0] - lo[0]) * width,
                            bottom - height + (pts[:, 1] - lo[1]) / (hi[1] - lo[1]) * height])


def _lateral_wall(outline: np.ndarray, side: int, half: float):
    """a_lat(y): how far the inner rib cage reaches at height y (the lung's lateral edge)."""
    a, y = side * outline[:, 0], outline[:, 1]
    levels = np.linspace(y.min(), y.max(), 120)
    reach = np.array([a[np.abs(y - v) < 4].max(initial=0.3 * half) for v in levels])
    return lambda v: float(np.interp(v, levels, reach, left=0.3 * half, right=half))


def _ribs_and_clavicle(rng, side: int, half: float, base: float, wall) -> list[_Bone]:
    """Posterior arcs (from the spine, rising a little, then sweeping down to the lateral
    wall), anterior arcs (from the wall down and in to the costal cartilage), a clavicle."""
    bones = []
    gap, y0 = rng.uniform(0.092, 0.104) * base, rng.uniform(-6, 2)
    for k in range(11):
        head = y0 + k * gap + rng.uniform(-1.5, 1.5)
        drop, rise = (11 + 2.3 * k) * rng.uniform(0.85, 1.15), rng.uniform(3, 8)
        radius = 6.0 if k == 0 else rng.uniform(4.0, 5.2)
        t = np.linspace(0, 1, 40)
        y = head - rise * np.sin(0.8 * np.pi * t) + drop * t**2.4
        a_end = wall(y[-1]) + 0.6 * radius
        bones.append(_Bone(side, rng.uniform(12, 18) + (a_end - 15) * t, y, radius, 0.065))
        if k <= 6:
            a_cc = half * rng.uniform(0.22, 0.36) + 4 * k
            u = np.linspace(0, 1, 30)
            y_front = y[-1] + (rng.uniform(30, 48) + 2 * k) * (1 - u) ** 1.3
            bones.append(_Bone(side, a_cc + (a_end - a_cc) * u, y_front,
                               rng.uniform(5.0, 6.5), 0.035))
    a_med, a_lat = rng.uniform(10, 18), half + rng.uniform(10, 30)
    y_med, y_lat, s_bend = rng.uniform(40, 60), rng.uniform(-18, 0), rng.uniform(3, 7)
    u = np.linspace(0, 1, 40)
    y = y_med + (y_lat - y_med) * u + s_bend * np.sin(2 * np.pi * u)
    bones.append(_Bone(side, a_med + (a_lat - a_med) * u, y, rng.uniform(6, 7.5), 0.1))
    return bones


def _vessel_tree(rng, side: int, hilum: tuple[float, float]) -> list[tuple[float, ...]]:
    """Branching pulmonary vessels from the hilum; thinner and fainter toward the periphery."""
    segments: list[tuple[float, ...]] = []

    def grow(x, y, angle, length, radius, depth):
        # A vessel wanders a little, goes on thinner, and sends off a thinner side branch.
        for _ in range(2):
            angle += math.radians(rng.uniform(-9, 9))
            x1, y1 = x + side * length / 2 * math.cos(angle), y + length / 2 * math.sin(angle)
            fade = math.exp(-math.hypot(x1 - hilum[0], y1 - hilum[1]) / 180)
            segments.append((x, y, x1, y1, radius, 0.028 * radius * fade))
            x, y = x1, y1
        if depth > 0:
            turn = math.radians(rng.uniform(25, 50)) * (1 if rng.random() < 0.5 else -1)
            grow(x, y, angle + turn, length * rng.uniform(0.6, 0.8), radius * 0.62, depth - 1)
            grow(x, y, angle - 0.3 * turn, length * rng.uniform(0.8, 0.95), radius * 0.82,
                 depth - 1)

    for angle in (-80, -50, -20, 10, 40, 70):
        grow(*hilum, math.radians(angle + rng.uniform(-10, 10)), rng.uniform(22, 32),
             rng.uniform(2.4, 3.6), 4)
    return segments


def _sample_body(rng: np.random.Generator, acq: _Acquisition) -> _Body:
    t = rng.uniform(125, 160)
    half = (t * rng.uniform(0.97, 1.03), t * rng.uniform(0.97, 1.03))
    base_r = 2 * t * rng.uniform(0.78, 0.95)
    base = (base_r, base_r + rng.uniform(5, 18))
    dome = (rng.uniform(24, 40), rng.uniform(22, 38))
    medial = rng.uniform(10, 16)

    # Field of view: the chest always fits; at 2000-3000 px this gives ~0.14-0.2 mm.
    need_w = (half[0] + half[1]) * rng.uniform(1.22, 1.45)
    need_h = (max(base) + 110) * rng.uniform(1.02, 1.2)
    spacing = round(max(need_w / acq.columns, need_h / acq.rows), 6)
    scale = min(1.0, _WORK_MAX_PX / max(acq.rows, acq.columns))
    shape = (max(round(acq.rows * scale), 16), max(round(acq.columns * scale), 16))
    mm = spacing * acq.columns / shape[1]
    angle = math.radians(rng.uniform(-3, 3))
    ox = shape[1] * (0.5 + rng.uniform(-0.04, 0.04)) - (half[1] - half[0]) / 2 / mm
    oy = shape[0] * (0.5 + rng.uniform(-0.04, 0.04)) - (max(base) - 10) / 2 / mm
    frame = _Frame(shape, mm, ox, oy, math.cos(angle), math.sin(angle))

    lungs = tuple(_lung_outline(rng, s, half[i], base[i], dome[i], medial)
                  for i, s in enumerate(_SIDES))
    thorax = lungs[1][:, 0].max() - lungs[0][:, 0].min()
    # The heart sits on the lower of the two medial diaphragm levels: no lung beneath it.
    bottom = max(b - 0.5 * d for b, d in zip(base, dome, strict=True)) + rng.uniform(4, 10)
    heart_shape = (math.radians(rng.uniform(25, 40)), rng.uniform(0.68, 0.8),
                   rng.uniform(0.25, 0.5))
    width, big_width = thorax * rng.uniform(0.36, 0.45), thorax * rng.uniform(0.55, 0.65)
    height, right_frac = width * rng.uniform(0.72, 0.88), rng.uniform(0.26, 0.36)
    heart = _heart_outline(heart_shape, width, height, -right_frac * width, bottom)
    big_heart = _heart_outline(heart_shape, big_width, height * rng.uniform(1.0, 1.12),
                               -right_frac * rng.uniform(1.0, 1.15) * big_width, bottom)

    w, knob, y_knob = rng.uniform(18, 25), rng.uniform(6, 12), rng.uniform(50, 75)
    top = bottom - height
    # Down to below the domes, so that no sliver of lung shows between heart and spine.
    mediastinum = _spline([(-w, -300), (-w - 1, 0), (-w - 3, 0.6 * top), (-w - 4, top + 25),
                           (-w, max(base) + 40), (w, max(base) + 40), (w + 4, top + 25),
                           (w + 8, top - 5), (w + 0.6 * knob, y_knob + 22),
                           (w + knob, y_knob), (w + 0.5 * knob, y_knob - 18), (w, 0),
                           (w, -300)], 8)

    neck, walls = rng.uniform(45, 60), (rng.uniform(22, 40), rng.uniform(22, 40))
    sides = []
    for i, s in enumerate(_SIDES):
        bw, h = half[i] + walls[i], base[i]
        pts = [(neck, -500), (neck, -85), (neck + 14, -62), (bw + 20, -35), (bw + 32, 0),
               (bw + 12, 55), (bw, 0.45 * h), (bw * 1.01, h), (bw * 0.98, h + 120),
               (bw * 0.97, h + 500)]
        sides.append([(s * a, y) for a, y in pts])
    outline = _spline(sides[0] + sides[1][::-1], 6)

    y_hilum = rng.uniform(0.42, 0.5) * base[0]
    hila = ((-(medial + rng.uniform(28, 38)), y_hilum),
            (medial + rng.uniform(30, 40), y_hilum - rng.uniform(5, 15)))
    bones, vessels = [], []
    for i, s in enumerate(_SIDES):
        wall = _lateral_wall(lungs[i], s, half[i])
        bones += _ribs_and_clavicle(rng, s, half[i], base[i], wall)
        vessels += _vessel_tree(rng, s, hila[i])
    height_v = rng.uniform(24, 28)
    vertebrae = [(-40 + k * height_v, rng.uniform(16, 19) + 0.4 * k, 0.4 * height_v)
                 for k in range(int((max(base) + 200) / height_v))]
    carina = rng.uniform(70, 95)
    airways = [(0, -300, 0, carina, rng.uniform(7, 9), -0.06),
               (0, carina, -rng.uniform(30, 40), carina + rng.uniform(18, 28), 5.0, -0.045),
               (0, carina, rng.uniform(35, 45), carina + rng.uniform(25, 35), 4.5, -0.045)]
    bubble = None
    if rng.random() < 0.65:
        ry = rng.uniform(10, 20)
        bubble = (rng.uniform(0.3, 0.55) * half[1], base[1] - dome[1] + ry + rng.uniform(10, 20),
                  rng.uniform(18, 35), ry)
    return _Body(frame, spacing, half, base, dome, medial, outline, lungs, hila, heart, big_heart,
                 mediastinum, bones, vertebrae, vessels, airways, bubble)


@dataclass
class _Masks:
    polys: tuple[np.ndarray, np.ndarray]  # each lung's outline
    lungs: tuple[np.ndarray, np.ndarray]  # what shows as lung: less mediastinum and heart
    heart: np.ndarray


def _masks(body: _Body, heart: np.ndarray) -> _Masks:
    frame = body.frame
    heart_mask = frame.fill(heart)
    blocked = heart_mask | frame.fill(body.mediastinum)
    polys = tuple(frame.fill(p) for p in body.lungs)
    return _Masks(polys, tuple(p & ~blocked for p in polys), heart_mask)


def _draw_bone(acc: np.ndarray, frame: _Frame, bone: _Bone) -> None:
    """Adds a bone with a brighter cortex; distance is measured across the curve."""
    r, xs = bone.radius, bone.side * bone.a
    pad = 1.8 * r + 2 * frame.mm  # where the cortex term has faded out
    win = frame.local(xs.min() - pad, bone.y.min() - pad, xs.max() + pad, bone.y.max() + pad)
    if win is None:
        return
    sl, x, y = win
    a = bone.side * x
    along = np.clip(a, bone.a[0], bone.a[-1])  # beyond the ends: a round cap
    centre = np.interp(along, bone.a, bone.y)
    slope = np.interp(a, bone.a, np.gradient(bone.y, bone.a))
    d = np.where(a == along, np.abs(y - centre) / np.sqrt(1 + slope * slope),
                 np.hypot(a - along, y - centre))
    value = (0.55 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, None))
             + 0.45 * np.exp(-(((d - 0.8 * r) / (0.2 * r + 0.5 * frame.mm)) ** 2)))
    acc[sl] = np.maximum(acc[sl], bone.amp * value * np.clip((a - bone.a[0]) / 6 + 0.5, 0, 1))


def _draw_segments(acc: np.ndarray, frame: _Frame, segments, combine: np.ufunc) -> None:
    """Tubes (vessels, airways) with a Gaussian cross-section, merged by ``combine``
    (``np.maximum`` or ``np.minimum``) so that branch points do not pile up into
    nodule-like blobs.

    All segments at once: each one's window (:meth:`_Frame.local`) as a run of pixels, the
    same float32 arithmetic per pixel as one segment at a time (its numbers rounded to
    float32 as numpy does with a Python scalar), then ``combine.at`` in segment order.
    A case has 700-800 segments; one numpy call per segment and step was half its time.
    """
    if not segments:
        return
    # The per-segment numbers in double precision, as Python computes them.
    x0, y0, x1, y1, radius, amp = (np.array(v, np.float64) for v in zip(*segments,
                                                                        strict=True))
    r = np.maximum(radius, 0.7 * frame.mm)
    left, top = np.minimum(x0, x1) - 2.5 * r, np.minimum(y0, y1) - 2.5 * r
    right, bottom = np.maximum(x0, x1) + 2.5 * r, np.maximum(y0, y1) + 2.5 * r
    # _Frame.local's window for each, from the same four corners.
    px, py = frame.to_px(np.stack([left, right, left, right]), np.stack([top, top, bottom,
                                                                         bottom]))
    c0 = np.maximum(np.trunc(px.min(0)).astype(np.int64), 0)
    c1 = np.minimum(np.ceil(px.max(0)).astype(np.int64) + 1, frame.shape[1])
    r0 = np.maximum(np.trunc(py.min(0)).astype(np.int64), 0)
    r1 = np.minimum(np.ceil(py.max(0)).astype(np.int64) + 1, frame.shape[0])
    height, width = np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)
    sizes = height * width  # 0 for a window off the grid
    segment = np.repeat(np.arange(len(sizes)), sizes)
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = r0[segment] + within // width[segment]
    columns = c0[segment] + within % width[segment]
    xs, ys = frame._centres_mm
    x, y = xs[rows, columns], ys[rows, columns]

    def f32(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)[segment]

    dx, dy = x1 - x0, y1 - y0
    sx0, sy0, sdx, sdy = f32(x0), f32(y0), f32(dx), f32(dy)
    t = np.clip(((x - sx0) * sdx + (y - sy0) * sdy) / f32(dx * dx + dy * dy + 1e-9), 0, 1)
    d2 = (x - sx0 - t * sdx) ** 2 + (y - sy0 - t * sdy) ** 2
    combine.at(acc, (rows, columns), f32(amp) * np.exp(-d2 / f32(r * r)))


def _render_anatomy(body: _Body, masks: _Masks, rng: np.random.Generator):
    """(tissue and bone, lung air depth 0..1, lung markings), each on the working grid."""
    frame, mm = body.frame, body.frame.mm
    outline = frame.fill(body.outline)
    tissue = 0.3 * _smooth(outline, 2 / mm) + 0.7 * _smooth(outline, 45 / mm)
    union = masks.lungs[0] | masks.lungs[1]
    lung_soft = _smooth(union, 1.2 / mm)
    depth = _smooth(masks.polys[0] | masks.polys[1], 22 / mm)
    behind_heart = _soft(masks.heart & (masks.polys[0] | masks.polys[1]), 3 / mm)
    air = lung_soft * (0.45 + 0.55 * depth) + 0.12 * behind_heart * depth

    for yc, w, h in body.vertebrae:
        win = frame.local(-w - 6, yc - h - 6, w + 6, yc + h + 6)
        if win is None:
            continue
        sl, x, y = win
        q = (np.abs(x) / w) ** 4 + (np.abs(y - yc) / h) ** 4
        tissue[sl] += 0.022 * np.clip(1 - q, 0, 1) ** 0.5 + 0.012 * np.exp(-((q - 1) / 0.3) ** 2)
    bones = np.zeros(frame.shape, np.float32)
    for bone in body.bones:  # maximum: a rib's two arcs meet without a bright knob
        _draw_bone(bones, frame, bone)
    tissue += bones
    # The upper abdomen under the domes is thicker than the chest wall beside the lungs.
    _, x, y = frame.local(-1e4, -1e4, 1e4, 1e4)
    levels = [b - 0.5 * d for b, d in zip(body.base, body.dome, strict=True)]
    below = (y - levels[0] - (levels[1] - levels[0]) * np.clip(0.5 + x / 80, 0, 1)) / 25
    tissue += 0.12 * outline * np.clip(below, 0, 1)
    airways = np.zeros(frame.shape, np.float32)
    _draw_segments(airways, frame, body.airways, np.minimum)
    tissue += airways
    if body.bubble is not None:
        bx, by, rx, ry = body.bubble
        win = frame.local(bx - rx, by - ry, bx + rx, by + ry)
        if win is not None:
            sl, x, y = win
            tissue[sl] -= 0.12 * np.sqrt(np.clip(1 - ((x - bx) / rx) ** 2 - ((y - by) / ry) ** 2,
                                                 0, None))

    markings = np.zeros(frame.shape, np.float32)
    _draw_segments(markings, frame, body.vessels, np.maximum)
    markings = markings * lung_soft + 0.016 * _noise_field(rng, frame.shape, 2.5 / mm) * lung_soft
    return tissue, air, markings
