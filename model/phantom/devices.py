"""Devices, side markers and burned-in text of the radiograph style.

Real chest films carry what is on and in the patient: ECG electrodes and their wires,
central lines and PICCs, endotracheal and nasogastric tubes, pacemakers with their leads,
sternal wires, surgical clips; and what the radiographer adds: a lead L/R marker in the
beam, or an electronic one with text burned into the pixels. A detector that has seen none
of these calls a pacemaker a mass. Each case draws its own set at random, none on many
(bedside AP films carry the most). Devices are drawn as path (metal is far denser than
bone); burned-in text is written over the processed image, white, as consoles do.

Devices are not findings: they carry no label and never change a finding's box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.phantom.acquisition import AP, RadiographAcquisition
from model.phantom.raster import _Frame
from model.phantom.tubes import draw_curves_each, draw_tubes, rotate, smooth_curve

ECG, CVC, PICC, ETT, NGT, PACEMAKER, STERNAL_WIRES, CLIPS, LEAD_MARKER, TEXT = (
    "ECG leads", "central venous catheter", "PICC", "endotracheal tube", "nasogastric tube",
    "pacemaker", "sternal wires", "surgical clips", "lead marker", "burned-in text")
DEVICE_KINDS = (ECG, CVC, PICC, ETT, NGT, PACEMAKER, STERNAL_WIRES, CLIPS)

# Path per mm of chord: metals attenuate tens of times more than soft tissue.
_STEEL, _COPPER, _LEAD, _STRIPE = 0.9, 0.7, 2.5, 0.12

# 5 x 7 bitmap glyphs: burned-in text needs no font file and renders the same everywhere.
_GLYPHS = {
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "/": "00001 00010 00010 00100 01000 01000 10000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}
_WORDS_PA = ("PA", "PA ERECT", "CHEST PA", "ERECT", "INSP")
_WORDS_AP = ("AP", "PORTABLE", "AP SUPINE", "SEMI-ERECT", "AP SITTING", "MOBILE", "BEDSIDE")


def glyphs(text: str) -> np.ndarray:
    """The text as a boolean bitmap, 7 rows, 6 columns per character (one of spacing)."""
    unknown = sorted(set(text) - set(_GLYPHS))
    if unknown:
        raise ValueError(f"no glyph for {unknown} in {text!r}")
    cells = [np.array([[c == "1" for c in row] + [False] for row in _GLYPHS[ch].split()])
             for ch in text]
    return np.hstack(cells)[:, :-1]


@dataclass
class Device:
    """One device: what it is and where (curves in mm; ``at`` its main point)."""

    kind: str
    at: tuple[float, float]
    curves: list[np.ndarray] = field(default_factory=list)
    text: str = ""
    corner: str = ""  # for a marker or text: where on the image


def _field_mm(body) -> tuple[float, float, float, float]:
    """The image's extent in the patient frame (rotation ignored): x0, y0, x1, y1."""
    frame = body.frame
    x0, y0 = frame.to_mm(0.0, 0.0)
    x1, y1 = frame.to_mm(float(frame.shape[1]), float(frame.shape[0]))
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _wire_to_edge(rng, start, body) -> np.ndarray:
    """A loose wire from a point to the nearest side or bottom of the image, sagging."""
    x0, y0, x1, y1 = _field_mm(body)
    sx, sy = start
    if rng.random() < 0.5:
        end = (x0 - 20 if sx < 0 else x1 + 20, sy + rng.uniform(-40, 120))
    else:
        end = (sx + rng.uniform(-80, 80), y1 + 20)
    mid = ((sx + end[0]) / 2 + rng.uniform(-40, 40), (sy + end[1]) / 2 + rng.uniform(-30, 30))
    return smooth_curve([start, mid, end], 10)


def sample_devices(rng: np.random.Generator, body) -> list[Device]:
    """Which devices a case has, and their geometry (drawn later)."""
    ap = body.view == AP
    devices: list[Device] = []
    half = body.half_width
    med = body.medial + 10
    carina = body.carina
    if rng.random() < (0.6 if ap else 0.18):
        spots = [(-half[0] * rng.uniform(0.6, 1.0), rng.uniform(-10, 40)),
                 (half[1] * rng.uniform(0.6, 1.0), rng.uniform(-10, 40)),
                 (half[1] * rng.uniform(0.3, 0.9), body.base[1] * rng.uniform(0.75, 1.1))]
        spots += [(rng.uniform(-0.9, 0.9) * half[1], rng.uniform(0.2, 1.0) * body.base[1])
                  for _ in range(int(rng.integers(0, 4)))]
        for spot in spots:
            devices.append(Device(ECG, spot, [_wire_to_edge(rng, spot, body)]))
    if rng.random() < (0.4 if ap else 0.06):
        tip = (-med + rng.uniform(-6, 4), carina + rng.uniform(5, 45))
        if rng.random() < 0.6:  # internal jugular: straight down the neck
            s = -1 if rng.random() < 0.7 else 1
            pts = [(s * rng.uniform(25, 40), -160), (s * rng.uniform(22, 32), -40),
                   (s * 20 if s < 0 else 15, 15), (tip[0], 0.5 * tip[1]), tip]
        else:  # subclavian: from under the clavicle, medially, then down
            s = -1 if rng.random() < 0.6 else 1
            pts = [(s * half[0] * rng.uniform(0.6, 0.85), rng.uniform(30, 55)),
                   (s * half[0] * 0.35, rng.uniform(25, 40)), (s * 20, 30), tip]
        devices.append(Device(CVC, tip, [smooth_curve(pts, 8)]))
    if rng.random() < (0.12 if ap else 0.03):
        s = -1 if rng.random() < 0.5 else 1
        tip = (-med + rng.uniform(-5, 5), carina + rng.uniform(10, 50))
        pts = [(s * (half[0] + 90), rng.uniform(60, 110)), (s * (half[0] + 20),
                                                            rng.uniform(10, 40)),
               (s * half[0] * 0.5, rng.uniform(15, 35)), (s * 15, 30), tip]
        devices.append(Device(PICC, tip, [smooth_curve(pts, 8)]))
    if rng.random() < (0.25 if ap else 0.0):
        tip = (rng.uniform(-3, 3), carina - rng.uniform(25, 65))
        devices.append(Device(ETT, tip, [smooth_curve([(rng.uniform(-6, 6), -250),
                                                       (rng.uniform(-3, 3), -60), tip], 8)]))
    if rng.random() < (0.25 if ap else 0.02):
        bx = body.bubble[0] if body.bubble else half[1] * 0.4
        by = body.bubble[1] if body.bubble else body.base[1]
        tip = (bx + rng.uniform(-15, 15), by + rng.uniform(10, 40))
        pts = [(rng.uniform(-5, 5), -250), (rng.uniform(2, 10), carina),
               (rng.uniform(8, 18), body.base[1] - 20), (rng.uniform(25, 40), body.base[1] + 10),
               (tip[0] - 15, tip[1] - 10), tip]
        devices.append(Device(NGT, tip, [smooth_curve(pts, 8)]))
    if rng.random() < (0.1 if ap else 0.05):
        s = 1 if rng.random() < 0.8 else -1
        gx, gy = s * half[1] * rng.uniform(0.5, 0.8), rng.uniform(35, 70)
        ra_tip = (-med - rng.uniform(5, 15), carina + rng.uniform(35, 55))
        rv_tip = (rng.uniform(20, 55), body.base[1] - body.dome[1] - rng.uniform(0, 15))
        entry = (s * half[1] * 0.4, rng.uniform(25, 40))
        svc = (-med + 4, carina + 15)
        ra = smooth_curve([(gx - s * 10, gy - 5), entry, (s * 18, 30), svc,
                           (ra_tip[0] - 8, ra_tip[1] + 25), (ra_tip[0] + 2, ra_tip[1] + 18),
                           ra_tip], 8)
        rv = smooth_curve([(gx - s * 12, gy), entry, (s * 18, 32), svc,
                           (-med, carina + 55), (0, rv_tip[1] - 25), rv_tip], 8)
        leads = [ra, rv] if rng.random() < 0.7 else [rv]
        devices.append(Device(PACEMAKER, (gx, gy), leads))
    if rng.random() < (0.12 if ap else 0.08):
        loops = int(rng.integers(5, 8))
        top, bottom = rng.uniform(25, 45), body.base[0] - body.dome[0] - rng.uniform(10, 30)
        devices.append(Device(STERNAL_WIRES, (0.0, (top + bottom) / 2),
                              [np.array([(rng.uniform(-3, 3), top + (bottom - top) * k
                                          / (loops - 1)) for k in range(loops)])]))
    if rng.random() < 0.07:
        cx = rng.uniform(-1, 1) * half[1] * 0.8
        cy = rng.uniform(0.2, 1.1) * body.base[1]
        pts = np.array([(cx + rng.uniform(-25, 25), cy + rng.uniform(-20, 20))
                        for _ in range(int(rng.integers(2, 9)))])
        devices.append(Device(CLIPS, (cx, cy), [pts]))
    if rng.random() < 0.55:  # a lead marker in the beam, on the patient's side it names
        s = 1 if rng.random() < 0.5 else -1
        x0, y0, x1, y1 = _field_mm(body)
        at = ((x1 - 35) if s > 0 else (x0 + 15), y0 + rng.uniform(10, 40))
        devices.append(Device(LEAD_MARKER, at, text="L" if s > 0 else "R"))
    if rng.random() < (0.8 if ap else 0.35):
        words = _WORDS_AP if ap else _WORDS_PA
        text = words[int(rng.integers(len(words)))]
        if rng.random() < 0.5:
            text += f" {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        corner = ("top-left", "top-right", "bottom-left", "bottom-right")[int(rng.integers(4))]
        devices.append(Device(TEXT, (0.0, 0.0), text=text, corner=corner))
    return devices


def _stamp(acc: np.ndarray, frame: _Frame, bitmap: np.ndarray, x0: float, y0: float,
           cell_mm: float, value: float) -> None:
    """A bitmap as a plate of path, its top-left corner at (x0, y0) mm."""
    h, w = bitmap.shape
    win = frame.local(x0, y0, x0 + w * cell_mm, y0 + h * cell_mm)
    if win is None:
        return
    sl, x, y = win
    ix, iy = np.floor((x - x0) / cell_mm).astype(int), np.floor((y - y0) / cell_mm).astype(int)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    acc[sl] += value * np.where(ok, bitmap[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)], 0)


def _loop(cx: float, cy: float, width: float, height: float, tilt: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 25)
    return rotate(np.column_stack([cx + width / 2 * np.cos(t), cy + height / 2 * np.sin(t)]),
                  tilt, (cx, cy))


def draw_devices(body, devices: list[Device], rng: np.random.Generator) -> np.ndarray:
    """The devices' path on the working grid."""
    frame = body.frame
    acc = np.zeros(frame.shape, np.float32)
    for d in devices:
        if d.kind == ECG:
            x, y = d.at
            win = frame.local(x - 14, y - 14, x + 14, y + 14)
            if win is not None:
                sl, gx, gy = win
                rho = np.hypot(gx - x, gy - y)
                pad = rng.uniform(10, 14)
                acc[sl] += 0.04 * (rho < pad) + 0.9 * np.clip(1 - rho / rng.uniform(2, 3.5),
                                                               0, 1) ** 0.5
            draw_tubes(acc, frame, d.curves, radius=rng.uniform(0.3, 0.6), per_mm=_COPPER,
                       combine=np.add)
        elif d.kind in (CVC, PICC, NGT):
            r = {CVC: rng.uniform(0.9, 1.4), PICC: rng.uniform(0.6, 0.9),
                 NGT: rng.uniform(1.6, 2.2)}[d.kind]
            draw_tubes(acc, frame, d.curves, radius=r, per_mm=_STRIPE, shell=0.35,
                       combine=np.add)
            if d.kind == NGT:  # the tip's side holes: gaps in the radiopaque line
                tip = d.curves[0][-8:]
                draw_tubes(acc, frame, [tip], radius=r * 0.5, per_mm=-_STRIPE * 0.8,
                           combine=np.add)
        elif d.kind == ETT:
            curve = d.curves[0]
            draw_tubes(acc, frame, [curve], radius=rng.uniform(4, 5), per_mm=0.006, shell=0.2,
                       combine=np.add)
            stripe = curve + np.array([rng.uniform(2.5, 3.5), 0])
            draw_tubes(acc, frame, [stripe], radius=0.5, per_mm=_STRIPE * 3, combine=np.add)
        elif d.kind == PACEMAKER:
            gx, gy = d.at
            tilt = rng.uniform(-0.5, 0.5)
            win = frame.local(gx - 40, gy - 40, gx + 40, gy + 40)
            if win is not None:
                sl, x, y = win
                u = (x - gx) * math.cos(tilt) + (y - gy) * math.sin(tilt)
                v = -(x - gx) * math.sin(tilt) + (y - gy) * math.cos(tilt)
                a, b = rng.uniform(20, 27), rng.uniform(17, 23)
                can = np.clip(1 - (np.abs(u) / a) ** 4 - (np.abs(v) / b) ** 4, 0, 1) ** 0.15
                battery = (np.abs(u + 0.3 * a) < 0.55 * a) & (np.abs(v) < 0.7 * b)
                header = (u > 0.55 * a) & (np.abs(v) < 0.35 * b)
                acc[sl] += can * (1.2 + 1.3 * battery) + 0.6 * header * can
            draw_curves_each(acc, frame, d.curves, [1.1] * len(d.curves), _STEEL * 0.8, 0.3)
            for lead in d.curves:  # the electrode at each tip
                draw_tubes(acc, frame, [lead[-4:]], radius=1.6, per_mm=_STEEL, combine=np.add)
        elif d.kind == STERNAL_WIRES:
            loops = [_loop(cx, cy, rng.uniform(8, 14), rng.uniform(3, 6), rng.uniform(-0.2, 0.2))
                     for cx, cy in d.curves[0]]
            tails = [np.array([(cx, cy), (cx + rng.uniform(-4, 4), cy + rng.uniform(4, 8))])
                     for cx, cy in d.curves[0]]
            draw_tubes(acc, frame, loops + tails, radius=0.6, per_mm=_STEEL, combine=np.add)
        elif d.kind == CLIPS:
            for cx, cy in d.curves[0]:
                a = rng.uniform(0, np.pi)
                length = rng.uniform(5, 9)
                legs = [np.array([(cx, cy), (cx + length * math.cos(a + s * 0.25),
                                             cy + length * math.sin(a + s * 0.25))])
                        for s in (-1, 1)]
                draw_tubes(acc, frame, legs, radius=0.55, per_mm=_STEEL, combine=np.add)
        elif d.kind == LEAD_MARKER:
            bitmap = glyphs(d.text)
            cell = rng.uniform(2.0, 3.0)
            x0, y0 = d.at
            _stamp(acc, frame, np.ones((bitmap.shape[0] + 2, bitmap.shape[1] + 2)),
                   x0 - cell, y0 - cell, cell, 0.05)
            _stamp(acc, frame, bitmap.astype(np.float32), x0, y0, cell, _LEAD * 0.8)
    return acc


def burn_in(shown: np.ndarray, body, acq: RadiographAcquisition, devices: list[Device]) -> bool:
    """Write the text devices over the processed image (white), in its corner. Returns
    whether anything was burned in (the dataset then says BurnedInAnnotation YES)."""
    burned = False
    rows, cols = shown.shape
    for d in devices:
        if d.kind != TEXT:
            continue
        bitmap = glyphs(d.text)
        scale = max(1, round(rows / 260))
        big = np.kron(bitmap, np.ones((scale, scale), bool))
        h, w = big.shape
        if h + 4 > rows or w + 4 > cols:
            continue
        margin_r, margin_c = max(2, rows // 40), max(2, cols // 40)
        r0 = margin_r if d.corner.startswith("top") else rows - margin_r - h
        c0 = margin_c if d.corner.endswith("left") else cols - margin_c - w
        region = shown[r0:r0 + h, c0:c0 + w]
        region[big] = 1.0
        burned = True
    return burned
