"""The seven findings: which a case has, where they go, and how each is drawn."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantom.anatomy import _SIDES, _Body, _Masks
from model.phantom.raster import _bounds, _noise_field, _smooth, _soft
from model.vocabulary import DEFAULT_LABELS

ATELECTASIS = "Atelectasis"
CARDIOMEGALY = "Cardiomegaly"
EFFUSION = "Pleural effusion"
INFILTRATION = "Infiltration"
MASS = "Mass"
NODULE = "Nodule"
PNEUMOTHORAX = "Pneumothorax"
# A fixed order (not the vocabulary's), so a reordered vocabulary does not change the images.
SYNTHETIC_LABELS = (ATELECTASIS, CARDIOMEGALY, EFFUSION, INFILTRATION, MASS, NODULE, PNEUMOTHORAX)
if set(SYNTHETIC_LABELS) != set(DEFAULT_LABELS):
    raise RuntimeError(f"phantom draws {SYNTHETIC_LABELS} but the vocabulary is {DEFAULT_LABELS}")


@dataclass
class _Effect:
    """A drawn finding: where (for its box) and how it changes the attenuation map."""

    label: str
    mask: np.ndarray
    add: np.ndarray | None = None  # attenuation added
    air: np.ndarray | None = None  # fraction of lung air replaced by fluid or tissue
    markings: np.ndarray | None = None  # fraction of lung markings hidden


class _Placer:
    """Places findings inside a lung, clear of the findings already placed."""

    def __init__(self, rng, body: _Body, masks: _Masks):
        self.rng, self.body, self.masks, self.frame = rng, body, masks, body.frame
        self.taken: list[tuple[int, int, int, int]] = []
        self.pixels = [np.flatnonzero(m) for m in masks.lungs]

    def point(self, side: int, zone: tuple[float, float] = (0.0, 1.0)):
        """A random point (mm) of a lung, within a vertical zone (fractions of its height)."""
        i = _SIDES.index(side)
        lo, hi = (self.body.base[i] * z for z in zone)
        for _ in range(30):
            flat = self.pixels[i][self.rng.integers(len(self.pixels[i]))]
            r, c = divmod(int(flat), self.frame.shape[1])
            x, y = self.frame.to_mm(c + 0.5, r + 0.5)
            if lo <= y <= hi:
                break
        return float(x), float(y)

    def in_lung(self, x: float, y: float, side: int) -> bool:
        c, r = (int(math.floor(v)) for v in self.frame.to_px(x, y))
        rows, cols = self.frame.shape
        return 0 <= r < rows and 0 <= c < cols and bool(self.masks.lungs[_SIDES.index(side)][r, c])

    def fits(self, mask: np.ndarray, side: int) -> bool:
        b = _bounds(mask)
        if b is None or (mask & ~self.masks.lungs[_SIDES.index(side)]).any():
            return False
        m = int(4 / self.frame.mm) + 1
        return not any(b[0] < t[1] + m and t[0] < b[1] + m and b[2] < t[3] + m and t[2] < b[3] + m
                       for t in self.taken)

    def accept(self, effect: _Effect) -> _Effect:
        self.taken.append(_bounds(effect.mask))
        return effect


def _nodule(p: _Placer, side: int):
    """Small, round, smooth-edged: the projection of a solid sphere of 5-30 mm."""
    for attempt in range(60):
        radius = p.rng.uniform(2.5, 15) * (1 if attempt < 30 else 0.5)
        radius = max(radius, 2.5)
        x0, y0 = p.point(side)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        mask = p.frame.fill(np.column_stack([x0 + radius * np.cos(t), y0 + radius * np.sin(t)]))
        if not p.fits(mask, side):
            continue
        add = np.zeros(p.frame.shape, np.float32)
        sl, x, y = p.frame.local(x0 - radius, y0 - radius, x0 + radius, y0 + radius)
        add[sl] = (0.1 + 0.012 * radius) * np.sqrt(
            np.clip(1 - ((x - x0) ** 2 + (y - y0) ** 2) / radius**2, 0, None))
        return p.accept(_Effect(NODULE, mask, add=add))
    return None


def _mass(p: _Placer, side: int):
    """Large (30-80 mm), lobulated, dense, with a well-defined edge and a little texture."""
    for attempt in range(60):
        radius = max(15.0, p.rng.uniform(15, 40) * (1 if attempt < 30 else 0.6))
        x0, y0 = p.point(side, (0.15, 0.9))
        t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        lobes = 1 + sum(p.rng.uniform(0.03, 0.09) * np.cos(k * t + p.rng.uniform(0, 2 * np.pi))
                        for k in range(2, 6))
        poly = np.column_stack([x0 + radius * lobes * np.cos(t), y0 + radius * lobes * np.sin(t)])
        mask = p.frame.fill(poly)
        if not p.fits(mask, side):
            continue
        r0, r1, c0, c1 = _bounds(mask)
        pad = int(radius / p.frame.mm) + 2
        r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)
        local = mask[r0:r1 + pad, c0:c1 + pad]
        dome = _smooth(local, radius / 2.5 / p.frame.mm) * local
        texture = 1 + 0.08 * _noise_field(p.rng, local.shape, 6 / p.frame.mm)
        add = np.zeros(p.frame.shape, np.float32)
        add[r0:r0 + local.shape[0], c0:c0 + local.shape[1]] = (
            p.rng.uniform(0.28, 0.38) * (dome / dome.max()) ** 0.6 * texture
            * _smooth(local, 0.6 / p.frame.mm))
        return p.accept(_Effect(MASS, mask, add=add))
    return None


def _effusion(p: _Placer, side: int):
    """Fluid filling the lung base: the costophrenic angle and diaphragm vanish under a
    uniform density whose upper edge is a meniscus, higher at the lateral wall."""
    i, body = _SIDES.index(side), p.body
    half, base = body.half_width[i], body.base[i]
    lung = body.lungs[i]
    for attempt in range(10):
        lateral = p.rng.uniform(20, 0.45 * base) + 5 * attempt
        rise, haze = p.rng.uniform(0.4, 0.8) * lateral, p.rng.uniform(6, 14)
        power = p.rng.uniform(2.5, 4)
        sl, x, y = p.frame.local(lung[:, 0].min() - 15, lung[:, 1].min(), lung[:, 0].max() + 15,
                                 lung[:, 1].max() + 15)  # past the lung's soft edge
        u = np.clip((side * x / half - 0.35) / 0.65, 0, 1)  # 0 where the heart hides the lung
        level = np.clip((y - (base - lateral + rise * (1 - u**power))) / haze, 0, 1)
        fluid = np.zeros(p.frame.shape, np.float32)
        fluid[sl] = level * level * (3 - 2 * level) * (side * x > 0)
        mask = (fluid > 0.3) & p.masks.lungs[i]
        if mask.sum() * p.frame.mm**2 >= 150 and p.fits(mask, side):
            return p.accept(_Effect(EFFUSION, mask, air=fluid, markings=fluid))
    return None


def _collapse(p: _Placer, side: int, depth: float, angle: float):
    """A lung collapsed ``depth`` mm towards its hilum, most along ``angle`` (radians from
    the horizontal, outward): (the collapsed lung's mask, the rim of air around it)."""
    i = _SIDES.index(side)
    poly, (hx, hy) = p.body.lungs[i], p.body.hila[i]
    dx, dy = poly[:, 0] - hx, poly[:, 1] - hy
    dist = np.hypot(dx, dy) + 1e-9
    toward = (dx * side * math.cos(angle) - dy * math.sin(angle)) / dist
    shift = np.minimum(depth * np.clip((toward + 0.1) / 1.1, 0, 1) ** 2, 0.6 * dist)
    collapsed = p.frame.fill(poly - np.column_stack([dx, dy]) * (shift / dist)[:, None])
    return collapsed, p.masks.polys[i] & ~collapsed & p.masks.lungs[i]


def _pneumothorax(p: _Placer, side: int):
    """Air between the chest wall and a lung pulled toward its hilum: a lucent apical and
    lateral rim with no markings, bounded by a thin visible pleural line."""
    i, mm = _SIDES.index(side), p.frame.mm
    for attempt in range(10):
        depth = p.rng.uniform(10, 45) + 5 * attempt
        angle = math.radians(p.rng.uniform(60, 85))
        collapsed, rim = _collapse(p, side, depth, angle)
        if rim.sum() * mm**2 < 150 or not p.fits(rim, side):
            continue
        edge = _soft(collapsed, 0.5 / mm)
        line = 4 * edge * (1 - edge) * (_soft(rim, 2 / mm) > 0.02) * p.masks.lungs[i]
        rim_soft = _soft(rim, 0.6 / mm)
        mask = rim | (line > 0.3)
        return p.accept(_Effect(PNEUMOTHORAX, mask, add=0.07 * line - 0.11 * rim_soft,
                                markings=rim_soft))
    return None


def _atelectasis(p: _Placer, side: int):
    """Collapsed lung: a plate-like band (thin, nearly horizontal, lower zones) or a
    sharply marginated wedge based on the pleura and pointing to the hilum."""
    i, mm = _SIDES.index(side), p.frame.mm
    band = p.rng.random() < 0.5
    for _ in range(60):
        if band:
            x0, y0 = p.point(side, (0.45, 1.0))
            length, thick = p.rng.uniform(25, 60), max(p.rng.uniform(3, 8), 2.5 * mm)
            angle, bow = math.radians(p.rng.uniform(-25, 25)), p.rng.uniform(-4, 4)
            t = np.linspace(-1, 1, 24)
            cx = x0 + t * length / 2 * math.cos(angle) - bow * (1 - t * t) * math.sin(angle)
            cy = y0 + t * length / 2 * math.sin(angle) + bow * (1 - t * t) * math.cos(angle)
            w = thick / 2 * np.sqrt(1 - t**4)
            nx, ny = -math.sin(angle) * w, math.cos(angle) * w
            poly = np.column_stack([np.r_[cx + nx, (cx - nx)[::-1]],
                                    np.r_[cy + ny, (cy - ny)[::-1]]])
            mask = p.frame.fill(poly)
        else:
            # The base sits on the pleura (pushed out past it, then clipped by the lung); the
            # apex points to the hilum; the sides bow inward a little (volume loss).
            bx, by = p.point(side, (0.4, 1.0))
            hx, hy = p.body.hila[i]
            if side * (bx - hx) < 0.25 * p.body.half_width[i]:
                continue  # a wedge on the lateral or basal pleura, not on the mediastinum
            dist = math.hypot(bx - hx, by - hy) + 1e-9
            ux, uy = (bx - hx) / dist, (by - hy) / dist
            while p.in_lung(bx, by, side):  # out along the ray to the pleura, and past it
                bx, by, dist = bx + 2 * ux, by + 2 * uy, dist + 2
            bx, by, dist = bx + 8 * ux, by + 8 * uy, dist + 8
            length = dist * p.rng.uniform(0.45, 0.7)
            ax, ay = bx - length * ux, by - length * uy
            half = p.rng.uniform(25, 40)
            b1, b2 = (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)
            bow = 0.08 * half
            poly = np.array([b1, ((b1[0] + ax) / 2 + bow * uy, (b1[1] + ay) / 2 - bow * ux),
                             (ax, ay), ((b2[0] + ax) / 2 - bow * uy, (b2[1] + ay) / 2 + bow * ux),
                             b2])
            mask = p.frame.fill(poly) & p.masks.lungs[i]
            if mask.sum() * mm**2 < 300:
                continue
        if not p.fits(mask, side):
            continue
        strength = _soft(mask, 0.8 / mm) * p.rng.uniform(0.6, 0.85)
        return p.accept(_Effect(ATELECTASIS, mask, air=strength, markings=strength))
    return None


def _infiltration(p: _Placer, side: int):
    """Patchy, ill-defined airspace opacity: blotches of partial air loss fading out."""
    i, mm = _SIDES.index(side), p.frame.mm
    for _ in range(60):
        x0, y0 = p.point(side)
        ra, rb = p.rng.uniform(20, 45), p.rng.uniform(15, 35)
        angle = p.rng.uniform(0, np.pi)
        reach = max(ra, rb) + 4
        win = p.frame.local(x0 - reach, y0 - reach, x0 + reach, y0 + reach)
        sl, x, y = win
        u = ((x - x0) * math.cos(angle) + (y - y0) * math.sin(angle)) / ra
        v = (-(x - x0) * math.sin(angle) + (y - y0) * math.cos(angle)) / rb
        envelope = np.clip(1 - u * u - v * v, 0, 1) ** 0.6
        blotches = np.clip(0.5 + 0.6 * _noise_field(p.rng, x.shape, p.rng.uniform(5, 9) / mm),
                           0, 1) ** 1.5
        patch = _smooth(blotches * envelope, 1.5 / mm) * p.masks.lungs[i][sl]
        if patch.max() <= 0:
            continue
        opacity = np.zeros(p.frame.shape, np.float32)
        opacity[sl] = patch / patch.max()
        mask = opacity > 0.2
        if mask.sum() * mm**2 < 300 or not p.fits(mask, side):
            continue
        strength = p.rng.uniform(0.45, 0.7) * opacity
        return p.accept(_Effect(INFILTRATION, mask, air=strength, markings=0.5 * opacity))
    return None


_LUNG_FINDINGS = {NODULE: _nodule, MASS: _mass, ATELECTASIS: _atelectasis,
                  INFILTRATION: _infiltration}
# Anchored findings first: free-standing ones then keep clear of them.
_PLACEMENT_ORDER = (CARDIOMEGALY, EFFUSION, PNEUMOTHORAX, MASS, ATELECTASIS, INFILTRATION, NODULE)


def _sample_labels(rng: np.random.Generator, normal_fraction: float) -> list[str]:
    """1-3 findings, at most one Cardiomegaly, one Pneumothorax and one effusion per side
    (and none on the pneumothorax's side)."""
    if rng.random() < normal_fraction:
        return []
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    labels: list[str] = []
    while len(labels) < count:
        label = SYNTHETIC_LABELS[int(rng.integers(len(SYNTHETIC_LABELS)))]
        effusions = labels.count(EFFUSION)
        if label in (CARDIOMEGALY, PNEUMOTHORAX) and label in labels:
            continue
        if label == EFFUSION and effusions >= (1 if PNEUMOTHORAX in labels else 2):
            continue
        if label == PNEUMOTHORAX and effusions >= 2:
            continue
        labels.append(label)
    return sorted(labels, key=_PLACEMENT_ORDER.index)


def _place_findings(p: _Placer, labels: list[str]) -> list[_Effect]:
    effects = []
    free_sides = list(_SIDES) if p.rng.random() < 0.5 else list(_SIDES)[::-1]
    for label in labels:  # effusions come before a pneumothorax, which takes a free side
        if label == CARDIOMEGALY:
            effects.append(_Effect(CARDIOMEGALY, p.masks.heart))
            continue
        if label == EFFUSION:
            effect = _effusion(p, free_sides.pop(0))
        elif label == PNEUMOTHORAX:
            effect = _pneumothorax(p, free_sides.pop(0))
        else:
            first = _SIDES[int(p.rng.integers(2))]
            effect = _LUNG_FINDINGS[label](p, first) or _LUNG_FINDINGS[label](p, -first)
        if effect is not None:
            effects.append(effect)
    return effects
