"""Lungs of the radiograph style: outline, air depth, parenchymal texture, vessels.

What makes a real lung field unlike the classic style's flat dark shape: its air is not a
uniform slab. The lung is thinnest at its edges (so its border is soft but definite, the
square-root rise of a chord), thinner at the apex, and denser at the bases and periphery
(more blood, less air, overlying soft tissue); its texture is the sum of many overlapping
structures, whose power falls with spatial frequency; and its vessels branch from the hila
and taper to the periphery until they can no longer be seen, a centimetre or two from the
pleura. All sizes in mm, in the patient frame of :mod:`model.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantom.raster import _Frame, _smooth, _spline
from model.phantom.tubes import MU_WATER, dome_profile, draw_tubes, pink_noise

LUNG_DENSITY = 0.25  # lung tissue and blood per unit volume, relative to water
TYPICAL_AIR = MU_WATER * (1 - LUNG_DENSITY) * 138  # lung air path at an average depth


def lung_outline(rng: np.random.Generator, side: int, half: float, base: float, dome: float,
                 medial: float) -> np.ndarray:
    """A lung's frontal outline: rounded apex, convex lateral wall, a sharp costophrenic
    angle (a repeated point makes the corner) and a hemidiaphragm dome, highest at about
    mid-lung, its medial end lower than its top."""
    t, h, d = half, base, dome
    peak = rng.uniform(0.4, 0.55)  # where the dome is highest, as a share of the half width
    # The chest is bell-shaped: narrow at the apices, widest just above the angles.
    pts = [(medial + 3, 30), (0.2 * t, 12), (0.36 * t, 0), (0.52 * t, 6), (0.66 * t, 24),
           (0.77 * t, 58), (0.88 * t, 0.34 * h), (0.96 * t, 0.58 * h), (t, 0.8 * h),
           (0.99 * t, h - 16), (0.965 * t, h), (0.965 * t, h),
           (0.8 * t, h - 0.55 * d), ((peak + 0.15) * t, h - 0.93 * d), (peak * t, h - d),
           ((peak - 0.17) * t, h - 0.9 * d), (0.16 * t, h - 0.72 * d),
           (medial, h - 0.55 * d), (medial, 0.62 * h), (medial, 0.3 * h)]
    pts = np.array(pts)
    jitter = np.column_stack([rng.uniform(0.975, 1.025, len(pts)), rng.uniform(-2.5, 2.5,
                                                                               len(pts))])
    jitter[11] = jitter[10]
    pts = np.column_stack([pts[:, 0] * jitter[:, 0], pts[:, 1] + jitter[:, 1]])
    pts[8, 0] = t
    outline = _spline(pts, 10)
    outline[:, 0] *= side
    return outline


@dataclass(frozen=True)
class LungLook:
    """Per-case look of the lungs, drawn at random (domain randomisation)."""

    depth_mm: float  # antero-posterior lung depth at its thickest
    edge_mm: float  # how far in from the outline the lung reaches its full depth
    basal_grade: float  # share of air lost toward the bases
    texture: float  # parenchymal texture strength, a share of the local air
    texture_exponent: float  # the texture's power falls as 1/f**exponent
    vessel_scale: float  # vessels' calibre, relative to average


def sample_look(rng: np.random.Generator) -> LungLook:
    return LungLook(depth_mm=rng.uniform(110, 165), edge_mm=rng.uniform(9, 18),
                    basal_grade=rng.uniform(0.12, 0.35), texture=rng.uniform(0.02, 0.055),
                    texture_exponent=rng.uniform(2.2, 3.2), vessel_scale=rng.uniform(0.85, 1.2))


def lung_air(frame: _Frame, polys, heart_soft: np.ndarray, mediastinum_soft: np.ndarray,
             base: tuple[float, float], look: LungLook) -> np.ndarray:
    """Path (line integral) of lung air: how much less each ray is attenuated because it
    crosses air-filled lung instead of soft tissue.

    Full depth inside, a square-root rise over ``edge_mm`` at the outline, less at the
    apices and toward the bases; behind the heart a sixth of the lung remains (the
    retrocardiac lung a reader checks), behind the mediastinum none.
    """
    _, _, y = frame.local(-1e4, -1e4, 1e4, 1e4)
    air = np.zeros(frame.shape, np.float32)
    for poly, h in zip(polys, base, strict=True):
        shape = dome_profile(_smooth(frame.fill(poly), look.edge_mm / 1.3 / frame.mm))
        apex = 0.55 + 0.45 * np.clip(y / 70, 0, 1)
        low = 1 - look.basal_grade * np.clip((y - 0.35 * h) / (0.65 * h), 0, 1) ** 1.5
        air += shape * apex * low
    air *= (1 - 0.85 * heart_soft) * (1 - 0.95 * mediastinum_soft)
    return (MU_WATER * (1 - LUNG_DENSITY) * look.depth_mm * air).astype(np.float32)


def texture(rng: np.random.Generator, frame: _Frame, air: np.ndarray, look: LungLook
            ) -> np.ndarray:
    """The parenchymal mottling: a 1/f field, its strength a share of the local air (none
    where there is no lung)."""
    field = pink_noise(rng, frame.shape, frame.mm, exponent=look.texture_exponent,
                       shortest_mm=1.2, longest_mm=45)
    return (look.texture * air * field).astype(np.float32)


@dataclass(frozen=True)
class VesselTree:
    curves: list[np.ndarray]  # each branch as points (mm)
    radii: list[np.ndarray]  # radius at each point (mm)


def vessel_tree(rng: np.random.Generator, side: int, hilum: tuple[float, float],
                inside, look: LungLook) -> VesselTree:
    """Pulmonary arteries and veins from one hilum.

    Each branch wanders a little, tapers along its length, and divides into a larger and a
    smaller daughter (radii ~0.8 and ~0.6 of the parent, as Murray's law has them) until it
    is thinner than a third of a millimetre or leaves the lung (``inside(x, y)``). Arteries
    fan out upward, laterally and downward; veins run flatter, below the hilum, toward the
    left atrium.
    """
    curves: list[np.ndarray] = []
    radii: list[np.ndarray] = []

    def grow(x, y, angle, length, radius, depth):
        steps = 4
        pts, rs = [(x, y)], [radius]
        for k in range(steps):
            angle += math.radians(rng.uniform(-7, 7))
            x, y = x + side * length / steps * math.cos(angle), y + length / steps * math.sin(
                angle)
            pts.append((x, y))
            rs.append(radius * (1 - 0.14 * (k + 1) / steps))
        curves.append(np.array(pts))
        radii.append(np.array(rs))
        end_r = rs[-1]
        if depth == 0 or end_r < 0.35 or not inside(x, y):
            return
        turn = math.radians(rng.uniform(25, 55)) * (1 if rng.random() < 0.5 else -1)
        grow(x, y, angle + turn, length * rng.uniform(0.62, 0.8), end_r * rng.uniform(0.55, 0.68),
             depth - 1)
        grow(x, y, angle - 0.35 * turn, length * rng.uniform(0.75, 0.9),
             end_r * rng.uniform(0.76, 0.86), depth - 1)

    hx, hy = hilum
    s = look.vessel_scale
    for angle in (-100, -75, -50, -25, 0, 25, 50, 75):  # arteries, up to down (+y down)
        grow(hx, hy, math.radians(angle + rng.uniform(-12, 12)), rng.uniform(24, 34),
             s * rng.uniform(4.0, 5.5), 8)
    for angle in (-10, 15, 35):  # veins, lower and flatter, toward the left atrium
        grow(hx + side * rng.uniform(-4, 6), hy + rng.uniform(22, 34),
             math.radians(angle + rng.uniform(-10, 10)), rng.uniform(22, 30),
             s * rng.uniform(3.2, 4.4), 6)
    return VesselTree(curves, radii)


def draw_vessels(frame: _Frame, trees, air: np.ndarray, hila) -> np.ndarray:
    """Vessels (blood where there would be air) and the hilar shadows, as added path.

    A vessel shows only against air: where the lung is thin (its edge, behind the heart)
    it fades, and over the mediastinum it is gone.
    """
    layer = np.zeros(frame.shape, np.float32)
    for tree in trees:
        draw_tubes(layer, frame, tree.curves, radius=tree.radii,
                   per_mm=2.0 * MU_WATER * (1 - LUNG_DENSITY))
    peak = float(np.percentile(air[air > 0], 95)) if (air > 0).any() else 1.0
    presence = np.clip(air / (0.5 * peak), 0, 1) ** 1.5
    for hx, hy in hila:  # the hilum: arteries, bronchi and nodes seen end-on, a soft bulk
        win = frame.local(hx - 30, hy - 35, hx + 30, hy + 35)
        if win is None:
            continue
        sl, x, y = win
        q = ((x - hx) / 18) ** 2 + ((y - hy) / 26) ** 2
        layer[sl] += 0.09 * np.clip(1 - q, 0, 1) ** 1.5
    return layer * presence
