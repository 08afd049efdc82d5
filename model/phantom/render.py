"""Anatomy of the radiograph style: the body, sampled and drawn as path (line integrals).

Where the classic style (:mod:`.anatomy`) paints regions with chosen grey levels, this one
adds up what a ray crosses: soft tissue as thick as the chest is deep there, minus the lung
air (:mod:`.lungs`), plus bones drawn as hollow tubes and plates, so that contrast, noise and
processing (:mod:`.acquisition`) act on the image as they act on a real one.

Geometry follows the view. PA (erect, beam from behind): scapulae rotated out of the lung
fields, clavicles rising laterally, heart close to the detector. AP (bedside): the heart
magnified and wider, the clavicles flatter and higher, the scapulae over the upper lungs,
lower lung volumes. Sizes in mm, in the patient frame of :mod:`model.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.phantom.acquisition import AP, RadiographAcquisition
from model.phantom.anatomy import _heart_outline, _lateral_wall
from model.phantom.lungs import LungLook, VesselTree, lung_outline, sample_look, vessel_tree
from model.phantom.raster import _Frame, _smooth, _spline
from model.phantom.tubes import (
    BONE_EXTRA,
    MARROW_EXTRA,
    MU_WATER,
    dome_profile,
    draw_curves_each,
    draw_tubes,
    pink_noise,
    smooth_curve,
)

_SIDES = (-1, 1)
_WORK_MAX_PX = 1024
BONE_PER_MM = MU_WATER * BONE_EXTRA


@dataclass
class Bone:
    """A bone drawn as a hollow tube along a curve (mm), radius and cortex per bone."""

    curve: np.ndarray
    radius: float
    shell: float
    density: float = 1.0  # share of the cortex a typical bone has (anterior ribs: thinner)


@dataclass
class Scapula:
    plate: np.ndarray  # outline of the blade
    borders: list[np.ndarray]  # lateral border, medial border, spine
    glenoid: tuple[float, float]


@dataclass
class RadiographBody:
    """The sampled body. ``frame``, ``base``, ``half_width``, ``hila``, ``lungs``,
    ``mediastinum`` and ``heart`` are what the findings' placer and masks read, as they do
    from the classic :class:`~model.phantom.anatomy._Body`."""

    frame: _Frame
    spacing_mm: float
    view: str
    half_width: tuple[float, float]
    base: tuple[float, float]
    dome: tuple[float, float]
    medial: float
    outline: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]
    hila: tuple[tuple[float, float], tuple[float, float]]
    heart: np.ndarray
    big_heart: np.ndarray
    mediastinum: np.ndarray
    thickness_mm: float
    neck_level: float
    carina: float
    look: LungLook
    bones: list[Bone] = field(default_factory=list)
    scapulae: list[Scapula] = field(default_factory=list)
    humeri: list[tuple[float, float, float]] = field(default_factory=list)  # x, y, radius
    vertebrae: list[tuple[float, float, float]] = field(default_factory=list)
    airways: list[tuple[np.ndarray, float]] = field(default_factory=list)
    vessels: list[VesselTree] = field(default_factory=list)
    breasts: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    bubble: tuple[float, float, float, float] | None = None


def _ribs(rng, side: int, half: float, base: float, wall, gap: float, y_first: float,
          view: str) -> list[Bone]:
    """Twelve ribs: the posterior arc from the spine, rising a little and sweeping down
    along the lateral wall, then the anterior arc from the wall sloping down toward the
    midline, ending where the (invisible) costal cartilage starts."""
    bones = []
    flat = 0.7 if view == AP else 1.0  # on an AP view the posterior ribs run flatter
    for k in range(12):
        head = y_first + k * gap + rng.uniform(-1.5, 1.5)
        a0 = rng.uniform(17, 23) + 0.4 * k
        drop = gap * (1.1 + 0.13 * k) * rng.uniform(0.9, 1.1) * flat
        rise = (rng.uniform(7, 12) if k < 3 else rng.uniform(3, 8)) * flat
        r = 6.0 if k == 0 else rng.uniform(4.3, 5.4)
        a_lat = min(wall(head + drop), half) + r + rng.uniform(3, 7)
        if k >= 10:  # floating ribs end short of the lateral wall
            a_lat = a0 + (a_lat - a0) * rng.uniform(0.45, 0.7)
        span = a_lat - a0
        u = np.linspace(0, 1, 9)
        post = np.column_stack([a0 + span * u, head - rise * np.sin(0.8 * np.pi * u)
                                + drop * u ** 2.2])
        descent = rng.uniform(10, 20)
        if k < 10:
            post = np.vstack([post, [a_lat - 0.5, head + drop + 0.6 * descent],
                              [a_lat - 2.5, head + drop + descent]])
        post = smooth_curve(post, 4)
        post[:, 0] *= side
        # The lower ribs, over the upper abdomen, are thinner and seen through more tissue.
        bones.append(Bone(post, r if k < 9 else 0.8 * r, rng.uniform(0.22, 0.32),
                          1.0 if k < 9 else 0.7))
        if k < 8:  # lower anterior arcs are mostly cartilage, invisible
            # The bony anterior rib ends where its costal cartilage begins: near the
            # sternum for the upper ribs, further out for the lower ones.
            a_cc = half * (rng.uniform(0.2, 0.28) + 0.07 * max(k - 2, 0))
            if k == 0:
                a_cc = rng.uniform(22, 30)
            slope = math.radians(rng.uniform(20, 32) if k else rng.uniform(40, 55))
            y0 = head + drop + descent - 2
            length = a_lat - 2.5 - a_cc
            v = np.linspace(0, 1, 8)
            front = np.column_stack([a_lat - 2.5 - length * v,
                                     y0 + length * math.tan(slope) * (0.55 * v + 0.45 * v * v)
                                     - rng.uniform(2, 6) * np.sin(np.pi * v)])
            front = smooth_curve(front, 4)
            front[:, 0] *= side
            bones.append(Bone(front, rng.uniform(5.5, 7.0), 0.18, 0.55))
    return bones


def _clavicle(rng, side: int, half: float, view: str) -> list[Bone]:
    """An S-shaped clavicle, thick at its sternal end, thinner and flatter laterally,
    with the acromion beyond it; on AP views flatter and projected higher."""
    a_med, a_lat = rng.uniform(14, 24), half + rng.uniform(12, 30)
    if view == AP:
        y_med = rng.uniform(5, 30)
        y_lat = y_med - rng.uniform(-5, 12)
    else:
        y_med = rng.uniform(30, 55)
        y_lat = y_med - rng.uniform(22, 42)
    bend = rng.uniform(4, 8)
    u = np.linspace(0, 1, 16)
    pts = np.column_stack([a_med + (a_lat - a_med) * u,
                           y_med + (y_lat - y_med) * u + bend * np.sin(2 * np.pi * u)])
    pts[:, 0] *= side
    r = rng.uniform(5.5, 7)
    return [Bone(pts[:9], r, 0.3, 0.7), Bone(pts[7:], 0.8 * r, 0.35, 0.6)]


def _scapula(rng, side: int, half: float, base: float, view: str) -> Scapula:
    """The blade between its superior angle, inferior angle and glenoid; in PA it is
    rotated out, its medial border near the chest wall; in AP it lies over the lung."""
    if view == AP:
        medial = half * rng.uniform(0.62, 0.8)
        inferior = (half * rng.uniform(0.78, 0.92), base * rng.uniform(0.45, 0.55))
    else:
        medial = half * rng.uniform(0.9, 1.05)
        inferior = (half * rng.uniform(1.02, 1.15), base * rng.uniform(0.42, 0.52))
    superior = (medial, rng.uniform(-12, 2))
    glenoid = (half + rng.uniform(22, 38), rng.uniform(18, 34))
    neck = (glenoid[0] - 6, glenoid[1] + 18)
    plate = np.array([superior, (glenoid[0] - 4, glenoid[1] - 12), glenoid, neck, inferior,
                      (medial + 0.3 * (inferior[0] - medial), 0.5 * (superior[1] + inferior[1]))])
    lateral = np.array([neck, ((neck[0] + inferior[0]) / 2 + 4, (neck[1] + inferior[1]) / 2),
                        inferior])
    medial_border = np.array([superior, plate[5], inferior])
    spine_start = (medial + 2, superior[1] + rng.uniform(18, 28))
    spine = np.array([spine_start, (glenoid[0] - 10, glenoid[1] - 20),
                      (glenoid[0] + 6, glenoid[1] - 28)])
    flip = np.array([side, 1.0])
    return Scapula(plate * flip, [smooth_curve(c, 5) * flip for c in
                                  (lateral, medial_border, spine)],
                   (side * glenoid[0], glenoid[1]))


def sample_body(rng: np.random.Generator, acq: RadiographAcquisition) -> RadiographBody:
    """The body of one case. The view changes the geometry but not which random numbers
    are drawn, so a PA and an AP acquisition with the same generator state give the same
    patient seen two ways (what the PA/AP tests compare)."""
    view = acq.view
    t = rng.uniform(125, 160)
    half = (t * rng.uniform(0.97, 1.03), t * rng.uniform(0.97, 1.03))
    shallow = rng.uniform(0.86, 0.96)  # lower lung volumes of a patient in bed
    base_r = 2 * t * rng.uniform(0.8, 0.95) * (shallow if view == AP else 1)
    base = (base_r, base_r + rng.uniform(4, 16))
    dome = (rng.uniform(24, 42), rng.uniform(22, 40))
    medial = rng.uniform(10, 16)

    need_w = (half[0] + half[1]) * rng.uniform(1.05, 1.35)
    need_h = (max(base) + 110) * rng.uniform(1.02, 1.16)
    spacing = round(max(need_w / acq.columns, need_h / acq.rows), 6)
    scale = min(1.0, _WORK_MAX_PX / max(acq.rows, acq.columns))
    shape = (max(round(acq.rows * scale), 16), max(round(acq.columns * scale), 16))
    mm = spacing * acq.columns / shape[1]
    angle = math.radians(rng.uniform(-3, 3))
    ox = shape[1] * (0.5 + rng.uniform(-0.04, 0.04)) - (half[1] - half[0]) / 2 / mm
    oy = shape[0] * (0.5 + rng.uniform(-0.04, 0.04)) - (max(base) - 25) / 2 / mm
    frame = _Frame(shape, mm, ox, oy, math.cos(angle), math.sin(angle))

    lungs = tuple(lung_outline(rng, s, half[i], base[i], dome[i], medial)
                  for i, s in enumerate(_SIDES))
    thorax = lungs[1][:, 0].max() - lungs[0][:, 0].min()
    bottom = max(b - 0.5 * d for b, d in zip(base, dome, strict=True)) + rng.uniform(4, 10)
    heart_shape = (math.radians(rng.uniform(25, 40)), rng.uniform(0.68, 0.8),
                   rng.uniform(0.25, 0.5))
    magnify = rng.uniform(1.1, 1.22)  # AP: the heart is far from the detector, magnified
    magnify = magnify if view == AP else 1.0
    width = thorax * rng.uniform(0.37, 0.46) * magnify
    big_width = max(thorax * rng.uniform(0.56, 0.66), width * 1.2)
    height, right_frac = width / magnify * rng.uniform(0.72, 0.88), rng.uniform(0.26, 0.36)
    heart = _heart_outline(heart_shape, width, height, -right_frac * width, bottom)
    big_heart = _heart_outline(heart_shape, big_width, height * rng.uniform(1.0, 1.12),
                               -right_frac * rng.uniform(1.0, 1.15) * big_width, bottom)

    widen = rng.uniform(1.1, 1.3)
    w = rng.uniform(22, 30) * (widen if view == AP else 1)
    knob, y_knob = rng.uniform(8, 16), rng.uniform(50, 75)
    top = bottom - height
    # Right: the superior vena cava, gently convex, down to the right atrium; left: the
    # aortic knob, the pulmonary trunk below it, then the heart.
    svc, trunk = rng.uniform(2, 6), rng.uniform(2, 7)
    mediastinum = _spline([(-w + 6, -300), (-w + 4, 0), (-w - svc, 0.5 * top),
                           (-w - 4, top + 25), (-w, max(base) + 40), (w, max(base) + 40),
                           (w + 4, top + 25), (w + 6 + trunk, top - 8), (w + 3, y_knob + 30),
                           (w + knob, y_knob), (w + 0.4 * knob, y_knob - 20), (w - 4, 0),
                           (w - 6, -300)], 8)

    neck, walls = rng.uniform(48, 62), (rng.uniform(24, 42), rng.uniform(24, 42))
    neck_level = rng.uniform(-75, -55)
    arms = rng.random() < 0.3 or view == AP  # arms by the sides, in the field
    sides = []
    for i, s in enumerate(_SIDES):
        bw, h = half[i] + walls[i], base[i]
        shoulder = bw + rng.uniform(40, 60) + (30 if arms else 0)
        pts = [(neck, -600), (neck, neck_level - 15), (neck + 20, neck_level + 12),
               (shoulder - 25, neck_level + 28), (shoulder, neck_level + 60),
               (shoulder - (5 if arms else 35), 80), (bw + (40 if arms else 8), 0.45 * h),
               (bw + (42 if arms else 0), h), (bw * 0.98 + (40 if arms else 0), h + 140),
               (bw * 0.97 + (40 if arms else 0), h + 600)]
        sides.append([(s * a, y) for a, y in pts])
    outline = _spline(sides[0] + sides[1][::-1], 6)

    y_hilum = rng.uniform(0.4, 0.48) * base[0]
    hila = ((-(medial + rng.uniform(26, 36)), y_hilum),
            (medial + rng.uniform(28, 38), y_hilum - rng.uniform(6, 16)))
    gap = rng.uniform(0.088, 0.1) * max(base) * (1.06 if view == AP else 1)
    y_first = rng.uniform(-22, -12)
    thickness = rng.uniform(195, 255) * (1.05 if view == AP else 1)
    look = sample_look(rng)
    body = RadiographBody(frame, spacing, view, half, base, dome, medial, outline, lungs,
                          hila, heart, big_heart, mediastinum, thickness, neck_level,
                          rng.uniform(75, 100), look)
    frame_mask = {s: frame.fill(lungs[i]) for i, s in enumerate(_SIDES)}

    def inside_fn(mask):
        def inside(x, y):
            c, r = (int(math.floor(v)) for v in frame.to_px(x, y))
            return 0 <= r < shape[0] and 0 <= c < shape[1] and bool(mask[r, c])
        return inside

    for i, s in enumerate(_SIDES):
        wall = _lateral_wall(lungs[i], s, half[i])
        body.bones += _ribs(rng, s, half[i], base[i], wall, gap, y_first, view)
        body.bones += _clavicle(rng, s, half[i], view)
        body.scapulae.append(_scapula(rng, s, half[i], base[i], view))
        glen = body.scapulae[-1].glenoid
        body.humeri.append((glen[0] + s * rng.uniform(18, 26), glen[1] + rng.uniform(0, 10),
                            rng.uniform(21, 26)))
        body.vessels.append(vessel_tree(rng, s, hila[i], inside_fn(frame_mask[s]), look))
    pitch = gap
    body.vertebrae = [(y_first - 2 * pitch + k * pitch, rng.uniform(14, 16) + 0.75 * k,
                       0.4 * pitch) for k in range(int((max(base) + 200) / pitch) + 3)]
    tw = rng.uniform(7.5, 9.5)
    carina = body.carina
    trachea = smooth_curve([(0, -400), (0, neck_level), (-rng.uniform(1, 4), 0.5 * carina),
                            (0, carina)], 6)
    right_main = smooth_curve([(0, carina), (-rng.uniform(14, 20), carina + rng.uniform(18, 24)),
                               (-rng.uniform(28, 36), carina + rng.uniform(32, 42))], 4)
    left_main = smooth_curve([(0, carina), (rng.uniform(20, 26), carina + rng.uniform(12, 18)),
                              (rng.uniform(40, 48), carina + rng.uniform(24, 32))], 4)
    body.airways = [(trachea, tw), (right_main, 0.72 * tw), (left_main, 0.64 * tw)]
    if rng.random() < 0.45:  # breasts: lower lateral chest, a sharp lower edge
        size = rng.uniform(45, 80)
        for i, s in enumerate(_SIDES):
            body.breasts.append((s * half[i] * rng.uniform(0.45, 0.7),
                                 base[i] * rng.uniform(0.72, 0.9), size * rng.uniform(0.95, 1.1),
                                 size * rng.uniform(0.75, 0.95), rng.uniform(25, 55)))
    if rng.random() < 0.75:
        ry = rng.uniform(10, 22)
        body.bubble = (rng.uniform(0.3, 0.55) * half[1], base[1] - dome[1] + ry
                       + rng.uniform(8, 18), rng.uniform(20, 38), ry)
    return body


def _humerus(acc: np.ndarray, frame: _Frame, x0: float, y0: float, radius: float,
             side: int) -> None:
    """A humeral head (a hollow sphere seen end-on) and the top of its shaft."""
    win = frame.local(x0 - radius - 2, y0 - radius - 2, x0 + radius + 2, y0 + radius + 2)
    if win is not None:
        sl, x, y = win
        rho2 = (x - x0) ** 2 + (y - y0) ** 2
        inner = radius - 2.5
        outer_chord = 2 * np.sqrt(np.clip(radius**2 - rho2, 0, None))
        inner_chord = 2 * np.sqrt(np.clip(inner**2 - rho2, 0, None))
        acc[sl] += BONE_PER_MM * ((outer_chord - inner_chord) * 0.35
                                  + MARROW_EXTRA / BONE_EXTRA * inner_chord * 0.6)
    shaft = np.array([(x0 + side * 4, y0 + 0.5 * radius), (x0 + side * 10, y0 + 5 * radius)])
    draw_curves_each(acc, frame, [shaft], [np.array([0.5 * radius, 0.4 * radius])],
                     BONE_PER_MM * 0.7, 0.25)


def _spine(acc: np.ndarray, frame: _Frame, vertebrae) -> None:
    """Vertebral bodies (trabecular, with brighter cortical margins and endplates), the
    pedicles as rings at their upper corners, and the spinous processes in the midline."""
    for yc, w, h in vertebrae:
        win = frame.local(-w - 8, yc - h - 8, w + 8, yc + h + 8)
        if win is None:
            continue
        sl, x, y = win
        q = (np.abs(x) / w) ** 3 + (np.abs(y - yc) / h) ** 3
        solid = np.clip(1 - q, 0, 1) ** 0.5
        rim = np.exp(-((q - 0.9) / 0.2) ** 2)
        acc[sl] += MU_WATER * (MARROW_EXTRA * 12 * solid + BONE_EXTRA * 0.45 * rim)
        for s in _SIDES:
            px, py = s * (w - 4), yc - 0.25 * h
            d = np.hypot((x - px) / 3.6, (y - py) / 5.5)
            acc[sl] += MU_WATER * BONE_EXTRA * 2.2 * np.exp(-((d - 1) / 0.35) ** 2)
        d = np.hypot(x / 3.0, (y - yc - 0.45 * h) / 6.5)
        acc[sl] += MU_WATER * BONE_EXTRA * 2.5 * np.clip(1 - d, 0, 1) ** 0.5


def _scapula_path(acc: np.ndarray, frame: _Frame, scap: Scapula) -> None:
    plate = _smooth(frame.fill(scap.plate), 2.0 / frame.mm)
    acc += BONE_PER_MM * 2.0 * plate
    draw_curves_each(acc, frame, scap.borders, [3.5, 2.0, 3.5], BONE_PER_MM * 0.8, 0.35)


def render_body(body: RadiographBody, masks, rng: np.random.Generator):
    """(tissue path, lung air path, lung markings path) on the working grid.

    ``tissue`` holds soft tissue, bones and airways; ``air`` the path lung air removes
    (subtracted, and replaced where findings fill the lung); ``markings`` the vessels and
    the parenchymal texture (hidden where a finding hides them).
    """
    from model.phantom.lungs import draw_vessels, lung_air, texture

    frame, mm = body.frame, body.frame.mm
    _, x, y = frame.local(-1e4, -1e4, 1e4, 1e4)
    skin = frame.fill(body.outline)
    # A chest is an ellipse in cross-section: thickness rises as a square root from the
    # skin and is nearly flat in the middle; the neck is thinner than the chest.
    depth = 0.3 * dome_profile(_smooth(skin, 6 / mm)) + 0.7 * dome_profile(
        _smooth(skin, 40 / mm))
    neck = 0.5 + 0.5 * np.clip((y - body.neck_level) / 40, 0, 1)
    tissue = MU_WATER * body.thickness_mm * depth * neck
    for bx, by, rx, ry, tb in body.breasts:
        q = ((x - bx) / rx) ** 2 + ((y - by) / ry) ** 2
        upper = np.clip((y - (by - 1.3 * ry)) / (1.3 * ry), 0, 1) ** 1.5  # fades upward
        tissue += MU_WATER * tb * np.sqrt(np.clip(1 - q, 0, 1)) * upper * skin
    # Bowel gas under the domes: irregular pockets, a different pattern on every film.
    below = np.clip((y - max(body.base) - 10) / 30, 0, 1) * skin
    gas = pink_noise(rng, frame.shape, mm, exponent=3.2, shortest_mm=8, longest_mm=60)
    threshold = rng.uniform(1.3, 2.4)
    tissue -= rng.uniform(0.1, 0.35) * _smooth(np.clip(gas - threshold, 0, 0.6) / 0.6, 2 / mm
                                               ) * below
    if body.bubble is not None:
        bx, by, rx, ry = body.bubble
        tissue -= MU_WATER * 0.9 * 2 * ry * np.sqrt(np.clip(1 - ((x - bx) / rx) ** 2
                                                         - ((y - by) / ry) ** 2, 0, None))
    bones = np.zeros(frame.shape, np.float32)
    _spine(bones, frame, body.vertebrae)
    for scap in body.scapulae:
        _scapula_path(bones, frame, scap)
    for (hx, hy, hr), s in zip(body.humeri, _SIDES, strict=True):
        _humerus(bones, frame, hx, hy, hr, s)
    for bone in body.bones:
        draw_curves_each(bones, frame, [bone.curve], [bone.radius], BONE_PER_MM * bone.density,
                         bone.shell)
    tissue += bones * skin
    airway = np.zeros(frame.shape, np.float32)
    for curve, radius in body.airways:
        draw_tubes(airway, frame, [curve], radius=radius, per_mm=MU_WATER * 0.9)
    tissue -= airway

    heart_soft = dome_profile(_smooth(masks.heart, 5 / mm))
    mediastinum_soft = dome_profile(_smooth(frame.fill(body.mediastinum), 3 / mm))
    air = lung_air(frame, body.lungs, heart_soft, mediastinum_soft, body.base, body.look)
    markings = texture(rng, frame, air, body.look) + draw_vessels(frame, body.vessels, air,
                                                                 body.hila)
    return tissue.astype(np.float32), air, markings.astype(np.float32)
