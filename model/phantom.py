"""Synthetic chest radiographs as real DX DICOM objects, with labelled findings.

No chest X-ray data can be downloaded where cxr-node is built, so tests, benchmarks and the
bundled model use images made here. Each case is drawn in four steps, every size in
millimetres and converted with the pixel spacing:

1. acquisition: image size, bit depth, photometric interpretation, exposure (range, gamma,
   dynamic-range compression), quantum-like noise, and the patient's rotation and shift;
2. anatomy: body outline, lungs, mediastinum, heart, spine, ribs, clavicles, hemidiaphragms,
   airways and pulmonary vessels, as polygons and curves in a patient frame (x to the
   patient's left, so to the image's right on a PA view; y to the feet; origin on the midline
   at the level of the lung apices);
3. findings (none in a normal case, else 1-3), each with the look a reader expects of it;
4. rendering as an attenuation-like map (higher = more attenuating), on a grid of at most
   1024 pixels a side (the detector sees 256-512 px, and this keeps a 3000 px case near a
   second), resized to the image size, with noise added at full size.

Everything random comes from ``numpy.random.SeedSequence([seed, index])``, so a case is
byte-identical wherever and however often it is made with the same numpy.
"""

from __future__ import annotations

import csv
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from model.vocabulary import DEFAULT_LABELS

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

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

LABELS_HEADER = ("file", "patient_id", "study_uid", "sop_instance_uid", "rows", "columns",
                 "label", "x1", "y1", "x2", "y2")
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cxr-node/model/phantom")
_WORK_MAX_PX = 1024
_LUNG_AIR = 0.55   # attenuation a full-depth lung lacks compared with soft tissue
_SIDES = (-1, 1)   # patient's right lung (image left), patient's left lung (image right)
_VIEW_CODES = {"PA": codes.SCT.PosteroAnterior, "AP": codes.SCT.AnteroPosterior,
               "LL": codes.SCT.LeftLateral, "RL": codes.SCT.RightLateral}
_REGION_CODES = {"CHEST": codes.SCT.Chest}


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def dx_dataset(
    pixels: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Chest",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    view_position: str = "PA",
    body_part: str = "CHEST",
    instance_number: int = 1,
    pixel_spacing_mm: float = 0.17,
) -> Dataset:
    """A DX For Presentation dataset holding ``pixels`` (2-D unsigned integers).

    Only the attributes the IOD requires (Type 1 and 2, PS3.3 A.26) plus those a chest
    reader uses (view position, body part) are set; UIDs are generated when not given.
    ``pixels`` are stored as given: for MONOCHROME1 they must already be inverted.
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f'photometric "{photometric}" is not MONOCHROME1 or MONOCHROME2')
    bits_allocated = pixels.dtype.itemsize * 8
    if not 1 <= bits_stored <= bits_allocated:
        raise ValueError(f"bits_stored {bits_stored} does not fit {bits_allocated} bits allocated")
    now = datetime.now()
    sop_instance_uid = sop_instance_uid or generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "XR CHEST"
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "cxr-node synthetic"
    ds.BodyPartExamined = body_part
    # General Anatomy Required Macro (PS3.3 10.5): Type 2, so empty when the part has no code.
    region = _REGION_CODES.get(body_part)
    ds.AnatomicRegionSequence = [_code_item(region)] if region else []
    ds.ViewPosition = view_position
    if view_position in _VIEW_CODES:  # DX Positioning (PS3.3 C.8.11.5), CID 4010
        view = _code_item(_VIEW_CODES[view_position])
        view.ViewModifierCodeSequence = []
        ds.ViewCodeSequence = [view]
    ds.PositionerType = ""  # Type 2: a chest stand is none of the enumerated positioners
    ds.AcquisitionContextSequence = []  # Type 2 (PS3.3 C.7.6.14)
    ds.PatientOrientation = ["L", "F"] if view_position in ("PA", "AP") else ["A", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.PixelIntensityRelationship = "LOG"
    # PS3.3 C.8.11.3: -1 when higher values mean less beam intensity, i.e. bone is high
    # (MONOCHROME2); +1 when bone is low and displayed white by inversion (MONOCHROME1).
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Box:
    """A finding's box in pixels, XYXY, with (0, 0) the top-left corner of the first pixel."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"box label must be a non-empty string, got {self.label!r}")
        values = (self.x1, self.y1, self.x2, self.y2)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError(f"box coordinates must be finite numbers, got {values}")
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"box {values} of {self.label} is degenerate: need x2 > x1, y2 > y1")

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass(frozen=True)
class Anatomy:
    """Where the landmarks a reader measures were drawn, XYXY in pixels.

    Kept beside the boxes so that tests and data checks can measure, for instance, the
    cardiothoracic ratio of a case that is not labelled Cardiomegaly.
    """

    heart: tuple[float, float, float, float]
    right_lung: tuple[float, float, float, float]  # the patient's right: the image's left
    left_lung: tuple[float, float, float, float]
    pixel_spacing_mm: float

    @property
    def thorax_width(self) -> float:
        """Inner rib-cage width at its widest: the cardiothoracic ratio's denominator."""
        return max(self.right_lung[2], self.left_lung[2]) - min(self.right_lung[0],
                                                                self.left_lung[0])


@dataclass(frozen=True)
class SyntheticCase:
    """One synthetic radiograph: its DICOM dataset, its finding boxes and its landmarks."""

    dataset: Dataset
    boxes: tuple[Box, ...]
    anatomy: Anatomy

    @property
    def patient_id(self) -> str:
        return str(self.dataset.PatientID)


@dataclass(frozen=True)
class LabelledImage:
    """One image's rows of a labels.csv; ``boxes`` is empty for a normal image."""

    file: str
    patient_id: str
    study_uid: str
    sop_instance_uid: str
    rows: int
    columns: int
    boxes: tuple[Box, ...]


# --------------------------------------------------------------------------- raster helpers


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

    def local(self, x0: float, y0: float, x1: float, y1: float):
        """The grid window covering a patient-frame box, with its pixel centres in mm."""
        px, py = self.to_px(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
        c0, c1 = max(int(px.min()), 0), min(int(math.ceil(px.max())) + 1, self.shape[1])
        r0, r1 = max(int(py.min()), 0), min(int(math.ceil(py.max())) + 1, self.shape[0])
        if c1 <= c0 or r1 <= r0:
            return None
        x, y = self.to_mm(np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5,
                          np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5)
        return (slice(r0, r1), slice(c0, c1)), x.astype(np.float32), y.astype(np.float32)

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


# --------------------------------------------------------------------------- anatomy


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


def _draw_segments(acc: np.ndarray, frame: _Frame, segments, combine) -> None:
    """Tubes (vessels, airways) with a Gaussian cross-section, merged by ``combine`` so that
    branch points do not pile up into nodule-like blobs."""
    for x0, y0, x1, y1, radius, amp in segments:
        r = max(radius, 0.7 * frame.mm)
        win = frame.local(min(x0, x1) - 2.5 * r, min(y0, y1) - 2.5 * r,
                          max(x0, x1) + 2.5 * r, max(y0, y1) + 2.5 * r)
        if win is None:
            continue
        sl, x, y = win
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
        d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
        acc[sl] = combine(acc[sl], amp * np.exp(-d2 / (r * r)))


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


# --------------------------------------------------------------------------- findings


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


def _pneumothorax(p: _Placer, side: int):
    """Air between the chest wall and a lung pulled toward its hilum: a lucent apical and
    lateral rim with no markings, bounded by a thin visible pleural line."""
    i, mm = _SIDES.index(side), p.frame.mm
    poly, (hx, hy) = p.body.lungs[i], p.body.hila[i]
    for attempt in range(10):
        depth = p.rng.uniform(10, 45) + 5 * attempt
        angle = math.radians(p.rng.uniform(60, 85))
        dx, dy = poly[:, 0] - hx, poly[:, 1] - hy
        dist = np.hypot(dx, dy) + 1e-9
        toward = (dx * side * math.cos(angle) - dy * math.sin(angle)) / dist
        shift = np.minimum(depth * np.clip((toward + 0.1) / 1.1, 0, 1) ** 2, 0.6 * dist)
        collapsed = p.frame.fill(poly - np.column_stack([dx, dy]) * (shift / dist)[:, None])
        rim = p.masks.polys[i] & ~collapsed & p.masks.lungs[i]
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


# --------------------------------------------------------------------------- acquisition


def _expose(atten: np.ndarray, acq: _Acquisition, mm: float, rng) -> np.ndarray:
    """Attenuation -> stored values: processing, gamma, resize, noise, bit depth, polarity."""
    a = atten - acq.compression * (_smooth(atten, 25 / mm) - float(atten.mean()))
    a = np.clip(a / 1.3, 0, 1) ** acq.gamma
    a = _resize(a, (acq.rows, acq.columns))
    # Quantum noise in a log image grows with attenuation (fewer photons get through).
    a += acq.noise * (0.4 + a) * rng.standard_normal(a.shape, dtype=np.float32)
    top = 2**acq.bits_stored - 1
    stored = np.rint((acq.low + (acq.high - acq.low) * np.clip(a, 0, 1)) * top)
    stored = stored.astype(np.uint16)
    return top - stored if acq.photometric == "MONOCHROME1" else stored


def _uid(seed: int, index: int, kind: str) -> str:
    """A 2.25 UID (PS3.5 B.2) from a name-based UUID: the same case gets the same UIDs."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{seed}/{index}/{kind}').int}"


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} is outside {lo}..{hi}")
    return int(value)


def synthesize_case(
    seed: int,
    index: int,
    *,
    size_range: tuple[int, int] = (1500, 3000),
    normal_fraction: float = 0.3,
    draw_findings: bool = True,
) -> SyntheticCase:
    """Case ``index`` of the synthetic set ``seed``: a DX dataset, its boxes and landmarks.

    Parameters
    ----------
    seed, index
        Identify the case (0..9999 and 0..999999, so that PatientID ``SYN<seed><index>`` is
        unique); the same pair always gives the same bytes.
    size_range
        Inclusive range for rows and columns, each drawn in it (e.g. ``(384, 768)`` for a
        training set). The pixel spacing follows from a field of view that fits the chest.
    normal_fraction
        Chance that a case has no finding.
    draw_findings
        ``False`` renders the same case (anatomy, acquisition, noise, boxes) without drawing
        the findings, so that a check can see what each finding changed.

    Returns
    -------
    SyntheticCase
        The dataset (DX For Presentation, UIDs ``2.25.<uuid5 of seed/index>``), one box per
        finding (none for a normal case) and the drawn heart and lungs.
    """
    seed = _check_int("seed", seed, 0, 9999)
    index = _check_int("index", index, 0, 999_999)
    if (not isinstance(size_range, tuple | list) or len(size_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size_range)):
        raise TypeError(f"size_range must be two ints (min, max), got {size_range!r}")
    if not 64 <= size_range[0] <= size_range[1] <= 65535:
        raise ValueError(f"size_range {size_range} must satisfy 64 <= min <= max <= 65535")
    if not isinstance(normal_fraction, int | float) or not 0 <= normal_fraction <= 1:
        raise ValueError(f"normal_fraction {normal_fraction!r} must be a number in [0, 1]")

    plan_seq, texture_seq, noise_seq = np.random.SeedSequence([seed, index]).spawn(3)
    rng = np.random.default_rng(plan_seq)
    acq = _sample_acquisition(rng, tuple(size_range))
    labels = _sample_labels(rng, normal_fraction)
    body = _sample_body(rng, acq)
    enlarged = CARDIOMEGALY in labels
    masks = _masks(body, body.big_heart if enlarged else body.heart)
    effects = _place_findings(_Placer(rng, body, masks), labels)
    if enlarged and not draw_findings:
        masks = _masks(body, body.heart)
    drawn = effects if draw_findings else []

    tissue, air, markings = _render_anatomy(body, masks, np.random.default_rng(texture_seq))
    keep_air = np.ones(body.frame.shape, np.float32)
    keep_markings = np.ones(body.frame.shape, np.float32)
    for effect in drawn:
        if effect.air is not None:
            keep_air *= 1 - effect.air
        if effect.markings is not None:
            keep_markings *= 1 - effect.markings
        if effect.add is not None:
            tissue += effect.add
    atten = tissue - _LUNG_AIR * air * keep_air + markings * keep_markings
    pixels = _expose(atten, acq, body.frame.mm, np.random.default_rng(noise_seq))

    sx, sy = acq.columns / body.frame.shape[1], acq.rows / body.frame.shape[0]

    def out_box(mask):
        r0, r1, c0, c1 = _bounds(mask)
        return round(c0 * sx, 2), round(r0 * sy, 2), round(c1 * sx, 2), round(r1 * sy, 2)

    patient_id = f"SYN{seed:04d}{index:06d}"
    ds = dx_dataset(pixels, study_uid=_uid(seed, index, "study"),
                    series_uid=_uid(seed, index, "series"),
                    sop_instance_uid=_uid(seed, index, "instance"), patient_id=patient_id,
                    patient_name=f"Synthetic^{patient_id}", photometric=acq.photometric,
                    bits_stored=acq.bits_stored, pixel_spacing_mm=body.spacing_mm)
    when = datetime.combine(date(2020, 1, 1) + timedelta(days=(seed * 7919 + index) % 1827),
                            datetime.min.time()) + timedelta(seconds=28800 + index % 36000)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.StudyID = f"{index % 10**16}"
    low, high = np.percentile(pixels[::4, ::4], [1, 99])
    ds.WindowCenter, ds.WindowWidth = int(round((low + high) / 2)), max(int(high - low), 2)

    boxes = tuple(Box(e.label, *out_box(e.mask)) for e in effects)
    anatomy = Anatomy(out_box(masks.heart), out_box(masks.lungs[0]), out_box(masks.lungs[1]),
                      body.spacing_mm)
    return SyntheticCase(ds, boxes, anatomy)


# --------------------------------------------------------------------------- data sets


def write_synthetic_set(out_dir: Path, count: int, seed: int, **options) -> Path:
    """Write ``count`` cases as ``out_dir/images/<PatientID>.dcm`` plus ``out_dir/labels.csv``.

    labels.csv has one row per box and one row with empty label and coordinates for a
    normal image; ``file`` is relative to ``out_dir``. ``options`` go to
    :func:`synthesize_case` (``size_range``, ``normal_fraction``). Returns labels.csv's path.
    """
    unknown = set(options) - {"size_range", "normal_fraction"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}: expected size_range, "
                        f"normal_fraction")
    count = _check_int("count", count, 1, 1_000_000)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        case = synthesize_case(seed, index, **options)
        ds = case.dataset
        relative = f"images/{case.patient_id}.dcm"
        ds.save_as(out_dir / relative, enforce_file_format=True)
        common = [relative, case.patient_id, ds.StudyInstanceUID, ds.SOPInstanceUID, ds.Rows,
                  ds.Columns]
        if not case.boxes:
            rows.append(common + ["", "", "", "", ""])
        for box in case.boxes:
            rows.append(common + [box.label] + [f"{v:.2f}" for v in (box.x1, box.y1, box.x2,
                                                                      box.y2)])
    labels = out_dir / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        writer.writerows(rows)
    return labels


def read_labels(path: Path) -> dict[str, LabelledImage]:
    """Read a labels.csv written by :func:`write_synthetic_set`, keyed by its ``file`` column.

    Raises ``ValueError`` naming the line for a wrong header, a malformed row, an image whose
    rows disagree, or an image that is both normal and boxed.
    """
    path = Path(path)
    images: dict[str, LabelledImage] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if tuple(header or ()) != LABELS_HEADER:
            raise ValueError(f"{path}: header {header} is not {','.join(LABELS_HEADER)}")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(LABELS_HEADER):
                raise ValueError(f"{path} line {line}: {len(row)} fields, expected "
                                 f"{len(LABELS_HEADER)}")
            file, patient_id, study, sop, rows, columns, label, *coords = row
            try:
                size = int(rows), int(columns)
                box = None if label == "" else Box(label, *(float(v) for v in coords))
            except ValueError as exc:
                raise ValueError(f"{path} line {line}: {exc}") from None
            if box is None and any(coords):
                raise ValueError(f"{path} line {line}: coordinates without a label")
            known = images.get(file)
            if known is None:
                images[file] = LabelledImage(file, patient_id, study, sop, *size,
                                             boxes=() if box is None else (box,))
                continue
            if (known.patient_id, known.study_uid, known.sop_instance_uid,
                    known.rows, known.columns) != (patient_id, study, sop, *size):
                raise ValueError(f"{path} line {line}: {file} has rows that disagree")
            if box is None or not known.boxes:
                raise ValueError(f"{path} line {line}: {file} is both normal and boxed")
            images[file] = LabelledImage(file, patient_id, study, sop, *size,
                                         boxes=known.boxes + (box,))
    return images
