"""Findings of the radiograph style, drawn with the textures a reader looks for.

Placement is the classic style's (:class:`~model.phantom.findings._Placer`: inside a lung,
clear of the findings already placed), and so are the seven labels; the drawing is new, in
path units (:mod:`.tubes`):

- Nodule: a solid sphere's projection, smooth-, soft- or lobulated-edged, sometimes
  calcified;
- Mass: larger, lobulated, often spiculated (tapering strands radiating from its edge);
- Infiltration: patchy airspace filling, blotches fading out, with air bronchograms (the
  bronchi that stay black inside the filled lung);
- Atelectasis: a plate-like band (thin, near horizontal, lower zones) or a wedge with
  concave borders (volume loss) and the displaced fissure as a thin line along one side;
- Pleural effusion: fluid filling the base, the costophrenic angle gone, its upper edge a
  meniscus that climbs the lateral wall, fading upward as the fluid layer thins;
- Pneumothorax: a visible visceral pleural line with no lung markings beyond it;
- Cardiomegaly: the enlarged heart outline (drawn by the anatomy).

Every finding's drawing is exactly zero outside its mask, and the mask is its box: what a
box says was drawn is what was drawn, and nothing of it lies outside.
"""

from __future__ import annotations

import math

import numpy as np

from model.phantom.findings import (
    ATELECTASIS,
    CARDIOMEGALY,
    EFFUSION,
    INFILTRATION,
    MASS,
    NODULE,
    PNEUMOTHORAX,
    _collapse,
    _Effect,
    _Placer,
)
from model.phantom.lungs import LUNG_DENSITY
from model.phantom.raster import _smooth, _soft
from model.phantom.tubes import MU_WATER, draw_tubes, pink_noise

_SIDES = (-1, 1)
SOLID_PER_MM = MU_WATER * (1 - LUNG_DENSITY)  # tissue where there was aerated lung


def _trim(field: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(field less ``floor``, clipped at 0, rescaled; its support): a soft edge that ends
    exactly, so the mask (and box) hold all that is drawn."""
    peak = float(field.max())
    if peak <= 0:
        return field, field > 0
    cut = floor * peak
    out = np.clip(field - cut, 0, None) * (peak / (peak - cut))
    return out.astype(np.float32), out > 0


def _inner(p: _Placer, i: int) -> np.ndarray:
    """Lung ``i``'s mask, fading to 0 over ~2 mm inside its edge: a finding that reaches
    the lung's edge fades there instead of copying the mask's pixel steps (coarse on a
    real image's lungs, :mod:`.insertion`). Computed once per lung and placer."""
    cache = p.__dict__.setdefault("_inner_lungs", {})
    if i not in cache:
        lung = p.masks.lungs[i]
        cache[i] = np.clip(2 * _soft(lung, 2 / p.frame.mm) - 1, 0, 1) * lung
    return cache[i]


def _local(p: _Placer, x0: float, y0: float, reach: float):
    return p.frame.local(x0 - reach, y0 - reach, x0 + reach, y0 + reach)


def _lobes(rng, t: np.ndarray, amount: float) -> np.ndarray:
    """1 + a few harmonics: a lobulated radius around a centre."""
    return 1 + sum(rng.uniform(0.3, 1.0) * amount * np.cos(k * t + rng.uniform(0, 2 * np.pi))
                   for k in range(2, 7))


def _solid(p: _Placer, x0: float, y0: float, radius: float, lobulation: float, edge_mm: float,
           density: float, rng) -> np.ndarray:
    """A lobulated solid's path on the whole grid: chord of the local radius, edge blurred."""
    frame = p.frame
    win = _local(p, x0, y0, radius * (1 + 6 * lobulation) + 3 * edge_mm + 2 * frame.mm)
    out = np.zeros(frame.shape, np.float32)
    if win is None:
        return out
    sl, x, y = win
    theta = np.arctan2(y - y0, x - x0)
    r_theta = radius * _lobes(rng, theta, lobulation)
    rho2 = (x - x0) ** 2 + (y - y0) ** 2
    chord = 2 * np.sqrt(np.clip(r_theta**2 - rho2, 0, None))
    out[sl] = _smooth(SOLID_PER_MM * density * chord, edge_mm / frame.mm)
    return out


def _nodule(p: _Placer, side: int, rng) -> _Effect | None:
    for attempt in range(60):
        radius = max(rng.uniform(2.5, 15) * (1 if attempt < 30 else 0.5), 2.5)
        x0, y0 = p.point(side)
        kind = rng.random()
        lobulation = rng.uniform(0.03, 0.08) if kind < 0.35 else 0.0
        edge = rng.uniform(0.8, 2.2) if kind > 0.7 else rng.uniform(0.15, 0.6)
        density = rng.uniform(1.8, 2.6) if rng.random() < 0.1 else rng.uniform(0.85, 1.15)
        add, mask = _trim(_solid(p, x0, y0, radius, lobulation, edge, density, rng), 0.05)
        if mask.any() and p.fits(mask, side):
            return p.accept(_Effect(NODULE, mask, add=add))
    return None


def _mass(p: _Placer, side: int, rng) -> _Effect | None:
    for attempt in range(60):
        radius = max(15.0, rng.uniform(15, 40) * (1 if attempt < 30 else 0.6))
        x0, y0 = p.point(side, (0.12, 0.9))
        add = _solid(p, x0, y0, radius, rng.uniform(0.03, 0.09), rng.uniform(0.3, 1.5),
                     rng.uniform(0.9, 1.1), rng)
        win = _local(p, x0, y0, radius * 1.6 + 25)
        if win is not None:  # a little heterogeneity inside
            sl, _, _ = win
            grain = pink_noise(rng, add[sl].shape, p.frame.mm, exponent=2.5, shortest_mm=2,
                               longest_mm=20)
            add[sl] *= 1 + 0.06 * grain
        if rng.random() < 0.5:  # spiculated: strands tapering out from the edge
            strands, radii = [], []
            for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 22))):
                length = rng.uniform(5, 20)
                bend = rng.uniform(-0.25, 0.25)
                u = np.linspace(0, 1, 6)
                a = angle + bend * u
                start = radius * rng.uniform(0.85, 1.0)
                strands.append(np.column_stack([x0 + (start + length * u) * np.cos(a),
                                                y0 + (start + length * u) * np.sin(a)]))
                radii.append(rng.uniform(0.7, 1.5) * (1 - 0.8 * u))
            layer = np.zeros(p.frame.shape, np.float32)
            draw_tubes(layer, p.frame, strands, radius=radii, per_mm=SOLID_PER_MM)
            add = np.maximum(add, layer)
        add, mask = _trim(add, 0.04)
        if mask.any() and p.fits(mask, side):
            return p.accept(_Effect(MASS, mask, add=add))
    return None


def _bronchi(p: _Placer, x0: float, y0: float, side: int, reach: float, rng) -> np.ndarray:
    """A few air-filled bronchi running away from the hilum across a patch, branching."""
    i = _SIDES.index(side)
    hx, hy = p.body.hila[i]
    heading = math.atan2(y0 - hy, (x0 - hx) * side)
    curves, radii = [], []

    def grow(x, y, angle, length, radius, depth):
        pts, rs = [(x, y)], [radius]
        for k in range(4):
            angle += math.radians(rng.uniform(-8, 8))
            x, y = x + side * length / 4 * math.cos(angle), y + length / 4 * math.sin(angle)
            pts.append((x, y))
            rs.append(radius * (1 - 0.05 * (k + 1)))
        curves.append(np.array(pts))
        radii.append(np.array(rs))
        if depth:
            turn = math.radians(rng.uniform(15, 30))
            grow(x, y, angle + turn, 0.7 * length, 0.8 * rs[-1], depth - 1)
            grow(x, y, angle - 0.5 * turn, 0.8 * length, 0.85 * rs[-1], depth - 1)

    for _ in range(int(rng.integers(1, 4))):
        start_back = reach * rng.uniform(0.5, 0.9)
        sx = x0 - side * start_back * math.cos(heading) + rng.uniform(-8, 8)
        sy = y0 - start_back * math.sin(heading) + rng.uniform(-8, 8)
        grow(sx, sy, heading + math.radians(rng.uniform(-20, 20)), reach * rng.uniform(0.6, 0.9),
             rng.uniform(1.4, 2.4), 2)
    layer = np.zeros(p.frame.shape, np.float32)
    draw_tubes(layer, p.frame, curves, radius=radii, per_mm=1.0)
    # The lumen, not the chord: full where the tube is, fading only at its wall.
    return np.clip(_smooth(layer, 0.4 / p.frame.mm) / 1.2, 0, 1)


def _infiltration(p: _Placer, side: int, rng) -> _Effect | None:
    i, mm = _SIDES.index(side), p.frame.mm
    for _ in range(60):
        x0, y0 = p.point(side)
        ra, rb = rng.uniform(20, 45), rng.uniform(15, 35)
        angle = rng.uniform(0, np.pi)
        reach = max(ra, rb) * 1.3 + 4
        win = _local(p, x0, y0, reach)
        sl, x, y = win
        u = ((x - x0) * math.cos(angle) + (y - y0) * math.sin(angle)) / ra
        v = (-(x - x0) * math.sin(angle) + (y - y0) * math.cos(angle)) / rb
        ragged = 0.25 * pink_noise(rng, x.shape, mm, exponent=3, shortest_mm=4, longest_mm=40)
        envelope = np.clip(1 + ragged - u * u - v * v, 0, 1) ** 0.7
        blotches = np.clip(0.55 + 0.55 * pink_noise(rng, x.shape, mm, exponent=2.4,
                                                      shortest_mm=2.5, longest_mm=25), 0, 1)
        patch = np.zeros(p.frame.shape, np.float32)
        patch[sl] = _smooth(envelope * blotches, 1.2 / mm)
        if rng.random() < 0.7:  # air bronchograms: bronchi stay aerated inside the patch
            keep = _bronchi(p, x0, y0, side, max(ra, rb), rng)
            patch *= 1 - 0.6 * keep * np.clip((patch - 0.25) / 0.3, 0, 1)
        patch *= _inner(p, i)
        strength = rng.uniform(0.35, 0.75)
        opacity, mask = _trim(patch, 0.12)
        if mask.sum() * mm**2 < 300 or not p.fits(mask, side):
            continue
        opacity = opacity / max(float(opacity.max()), 1e-6)
        return p.accept(_Effect(INFILTRATION, mask, air=strength * opacity,
                                markings=0.6 * opacity))
    return None


def _band(p: _Placer, side: int, rng):
    """Plate-like atelectasis: a thin band, nearly horizontal, in the lower zones."""
    x0, y0 = p.point(side, (0.45, 1.0))
    length, thick = rng.uniform(25, 65), max(rng.uniform(2.5, 7), 2.5 * p.frame.mm)
    angle, bow = math.radians(rng.uniform(-18, 18)), rng.uniform(-5, 5)
    t = np.linspace(-1, 1, 24)
    cx = x0 + t * length / 2 * math.cos(angle) - bow * (1 - t * t) * math.sin(angle)
    cy = y0 + t * length / 2 * math.sin(angle) + bow * (1 - t * t) * math.cos(angle)
    w = thick / 2 * np.sqrt(1 - t**4)
    nx, ny = -math.sin(angle) * w, math.cos(angle) * w
    poly = np.column_stack([np.r_[cx + nx, (cx - nx)[::-1]], np.r_[cy + ny, (cy - ny)[::-1]]])
    return p.frame.fill(poly), None


def _wedge(p: _Placer, side: int, rng):
    """Lobar or segmental collapse: a wedge on the pleura pointing to the hilum, its sides
    bowed inward (the lost volume), one side the displaced fissure, seen as a thin line."""
    i = _SIDES.index(side)
    bx, by = p.point(side, (0.15, 1.0))
    hx, hy = p.body.hila[i]
    if side * (bx - hx) < 0.25 * p.body.half_width[i]:
        return None, None
    dist = math.hypot(bx - hx, by - hy) + 1e-9
    ux, uy = (bx - hx) / dist, (by - hy) / dist
    while p.in_lung(bx, by, side):
        bx, by, dist = bx + 2 * ux, by + 2 * uy, dist + 2
    bx, by, dist = bx + 8 * ux, by + 8 * uy, dist + 8
    length = dist * rng.uniform(0.5, 0.8)
    ax, ay = bx - length * ux, by - length * uy
    half = rng.uniform(22, 42)
    b1 = np.array([bx - uy * half, by + ux * half])
    b2 = np.array([bx + uy * half, by - ux * half])
    apex = np.array([ax, ay])
    bow = rng.uniform(0.1, 0.2) * half

    def side_curve(b, sign):
        s = np.linspace(0, 1, 10)[:, None]
        straight = b + (apex - b) * s
        return straight + sign * bow * np.sin(np.pi * s) * np.array([uy, -ux])

    edge1, edge2 = side_curve(b1, 1), side_curve(b2, -1)
    poly = np.vstack([edge1, edge2[::-1]])
    fissure = edge1 if rng.random() < 0.5 else edge2
    return p.frame.fill(poly), fissure


def _atelectasis(p: _Placer, side: int, rng) -> _Effect | None:
    i, mm = _SIDES.index(side), p.frame.mm
    plate = rng.random() < 0.5
    for _ in range(60):
        shape, fissure = (_band if plate else _wedge)(p, side, rng)
        if shape is None:
            continue
        shape &= p.masks.lungs[i]
        if shape.sum() * mm**2 < (40 if plate else 300) or not p.fits(shape, side):
            continue  # (checked before the costly drawing; the drawing is checked again)
        line = np.zeros(p.frame.shape, np.float32)
        if plate:  # a disc of collapsed lung seen edge-on: a soft line, partly aerated
            strength = _soft(shape, rng.uniform(0.6, 1.2) / mm) * rng.uniform(0.12, 0.28)
        else:  # a collapsed lobe: dense, not uniform; soft where no fissure bounds it
            edge = np.minimum(_soft(shape, rng.uniform(1.5, 3.5) / mm) * 1.6, 1)
            if fissure is not None:  # the fissure: the lobe sharply bounded there, and a
                # hair-thin line of pleura seen edge-on
                draw_tubes(line, p.frame, [fissure], radius=0.6, per_mm=0.8 * SOLID_PER_MM)
                line *= p.masks.lungs[i]
                near = (_soft(line > 0, 4 / mm) > 0.05) & shape
                edge = np.where(near, np.maximum(edge, np.minimum(
                    _soft(shape, 0.5 / mm) * 1.6, 1)), edge)
            grain = pink_noise(rng, p.frame.shape, mm, exponent=2.5, shortest_mm=2,
                               longest_mm=30)
            strength = edge * (rng.uniform(0.45, 0.8) + 0.07 * grain)
        strength = np.clip(strength, 0, 1) * _inner(p, i)
        air, mask = _trim(strength, 0.05)
        line = np.where(mask, line, 0)
        if not mask.any() or not p.fits(mask, side):
            continue
        return p.accept(_Effect(ATELECTASIS, mask, add=line if line.any() else None,
                                air=air, markings=air))
    return None


def _effusion(p: _Placer, side: int, rng) -> _Effect | None:
    i, body = _SIDES.index(side), p.body
    half, base = body.half_width[i], body.base[i]
    lung = body.lungs[i]
    for attempt in range(10):
        depth = rng.uniform(20, 0.45 * base) + 5 * attempt
        rise, haze = rng.uniform(0.5, 1.0) * depth, rng.uniform(6, 18)
        power = rng.uniform(1.4, 2.4)
        sl, x, y = p.frame.local(lung[:, 0].min() - 15, lung[:, 1].min(), lung[:, 0].max() + 15,
                                 lung[:, 1].max() + 15)
        u = np.clip((side * x / half - 0.3) / 0.7, 0, 1)  # 0 medially, 1 at the lateral wall
        level = base - depth + rise * (1 - u**power)  # the meniscus: higher laterally
        fluid = np.clip((y - level) / haze, 0, 1)
        fluid = fluid * fluid * (3 - 2 * fluid)
        # A lamellar sheet of fluid runs up the lateral wall above the meniscus, thinning.
        sheet = np.clip((u - 0.88) / 0.12, 0, 1) * np.clip(1 - (level - y) / (0.6 * depth), 0, 1)
        full = np.zeros(p.frame.shape, np.float32)
        full[sl] = np.maximum(fluid, 0.5 * sheet) * (side * x > 0)
        full *= _inner(p, i)
        air, mask = _trim(full, 0.08)
        air = np.clip(air, 0, 1) * rng.uniform(0.85, 1.0)
        if mask.sum() * p.frame.mm**2 >= 150 and p.fits(mask, side):
            return p.accept(_Effect(EFFUSION, mask, air=air, markings=air))
    return None


def _pneumothorax(p: _Placer, side: int, rng) -> _Effect | None:
    i, mm = _SIDES.index(side), p.frame.mm
    for attempt in range(10):
        depth = rng.uniform(10, 45) + 5 * attempt
        angle = math.radians(rng.uniform(55, 85))
        collapsed, rim = _collapse(p, side, depth, angle)
        if rim.sum() * mm**2 < 150:
            continue
        # The visceral pleura: a line a fraction of a millimetre wide; on a coarse grid it
        # is widened to about a pixel and fainter, keeping its integral across.
        width = rng.uniform(0.3, 0.6)
        drawn = max(width, 0.6 * mm)
        edge = _soft(collapsed, drawn / mm)
        near = _soft(rim, 2 / mm) > 0.02
        line = 4 * edge * (1 - edge) * near * p.masks.lungs[i] * (width / drawn)
        rim_soft = _soft(rim, 0.6 / mm) * p.masks.lungs[i]
        field, mask = _trim(np.maximum(rim_soft, line), 0.05)
        if not p.fits(mask, side):
            continue
        rim_soft = np.where(mask, rim_soft, 0)
        line = np.where(mask, line, 0)
        # Beyond the line only pleural air: no vessels, no parenchyma, so it is darker
        # than the lung (by the lung tissue that is no longer there).
        lucent = rng.uniform(0.12, 0.3)
        return p.accept(_Effect(PNEUMOTHORAX, mask,
                                add=rng.uniform(0.1, 0.18) * line - lucent * rim_soft,
                                markings=np.clip(rim_soft * 1.1, 0, 1)))
    return None


_LUNG_FINDINGS = {NODULE: _nodule, MASS: _mass, ATELECTASIS: _atelectasis,
                  INFILTRATION: _infiltration}


def place_lesions(p: _Placer, labels: list[str], rng: np.random.Generator) -> list[_Effect]:
    """Place and draw ``labels`` (sorted in the classic placement order), as the classic
    style's ``_place_findings`` does, with this module's drawings. ``rng`` draws textures
    and shapes; ``p.rng`` the sides (the plan)."""
    effects = []
    free_sides = list(_SIDES) if p.rng.random() < 0.5 else list(_SIDES)[::-1]
    for label in labels:
        if label == CARDIOMEGALY:
            effects.append(_Effect(CARDIOMEGALY, p.masks.heart))
            continue
        if label == EFFUSION:
            effect = _effusion(p, free_sides.pop(0), rng)
        elif label == PNEUMOTHORAX:
            effect = _pneumothorax(p, free_sides.pop(0), rng)
        else:
            first = _SIDES[int(p.rng.integers(2))]
            effect = _LUNG_FINDINGS[label](p, first, rng) or _LUNG_FINDINGS[label](p, -first,
                                                                                   rng)
        if effect is not None:
            effects.append(effect)
    return effects
