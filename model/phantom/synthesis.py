"""A whole case (acquisition, anatomy, findings, exposure, dataset) and data sets of them."""

from __future__ import annotations

import csv
import math
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from model.phantom.anatomy import (
    _Acquisition,
    _masks,
    _render_anatomy,
    _sample_acquisition,
    _sample_body,
)
from model.phantom.dicom import dx_dataset
from model.phantom.findings import CARDIOMEGALY, _place_findings, _Placer, _sample_labels
from model.phantom.raster import _bounds, _resize, _smooth

LABELS_HEADER = ("file", "patient_id", "study_uid", "sop_instance_uid", "rows", "columns",
                 "label", "x1", "y1", "x2", "y2")
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cxr-node/model/phantom")
_LUNG_AIR = 0.55   # attenuation a full-depth lung lacks compared with soft tissue
CLASSIC, RADIOGRAPH = "classic", "radiograph"
STYLES = (CLASSIC, RADIOGRAPH)


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
    style: str = CLASSIC,
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
    style
        ``"classic"`` (the default, byte for byte the images the bundled model was trained
        on) or ``"radiograph"``: the look of a real chest film (:mod:`.radiograph`: physical
        projection, scatter, Poisson noise, vendor processing, PA and AP geometry, devices,
        findings with their textures), every step randomised per case. The two styles make
        different images, UIDs and PatientIDs (``SYN`` and ``SYR``) from the same seed.

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
    if style not in STYLES:
        raise ValueError(f'style "{style}" is not one of {", ".join(STYLES)}')
    if style == RADIOGRAPH:
        return _radiograph_case(seed, index, tuple(size_range), normal_fraction, draw_findings)

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

    return _case(seed, index, pixels, acq.photometric, acq.bits_stored, body.spacing_mm,
                 body.frame.shape, effects, masks)


def _radiograph_case(seed: int, index: int, size_range: tuple[int, int],
                     normal_fraction: float, draw_findings: bool) -> SyntheticCase:
    from model.phantom.radiograph import render_case  # imports this module

    r = render_case(seed, index, size_range, normal_fraction, draw_findings)
    return _case(seed, index, r.pixels, r.acquisition.photometric, r.acquisition.bits_stored,
                 r.body.spacing_mm, r.body.frame.shape, r.effects, r.masks,
                 view_position=r.acquisition.view, prefix="SYR", uid_kind=f"{RADIOGRAPH}/",
                 burned_in=r.burned_in)


def _case(seed: int, index: int, pixels: np.ndarray, photometric: str, bits_stored: int,
          spacing_mm: float, grid: tuple[int, int], effects, masks, *,
          view_position: str = "PA", prefix: str = "SYN", uid_kind: str = "",
          burned_in: bool = False) -> SyntheticCase:
    """The dataset, boxes (the effects' masks, working grid -> pixels) and landmarks."""
    sx, sy = pixels.shape[1] / grid[1], pixels.shape[0] / grid[0]

    def out_box(mask):
        r0, r1, c0, c1 = _bounds(mask)
        return round(c0 * sx, 2), round(r0 * sy, 2), round(c1 * sx, 2), round(r1 * sy, 2)

    patient_id = f"{prefix}{seed:04d}{index:06d}"
    ds = dx_dataset(pixels, study_uid=_uid(seed, index, f"{uid_kind}study"),
                    series_uid=_uid(seed, index, f"{uid_kind}series"),
                    sop_instance_uid=_uid(seed, index, f"{uid_kind}instance"),
                    patient_id=patient_id, patient_name=f"Synthetic^{patient_id}",
                    photometric=photometric, bits_stored=bits_stored,
                    pixel_spacing_mm=spacing_mm, view_position=view_position)
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    when = datetime.combine(date(2020, 1, 1) + timedelta(days=(seed * 7919 + index) % 1827),
                            datetime.min.time()) + timedelta(seconds=28800 + index % 36000)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.StudyID = f"{index % 10**16}"
    low, high = np.percentile(pixels[::4, ::4], [1, 99])
    ds.WindowCenter, ds.WindowWidth = int(round((low + high) / 2)), max(int(high - low), 2)

    boxes = tuple(Box(e.label, *out_box(e.mask)) for e in effects)
    anatomy = Anatomy(out_box(masks.heart), out_box(masks.lungs[0]), out_box(masks.lungs[1]),
                      spacing_mm)
    return SyntheticCase(ds, boxes, anatomy)


# --------------------------------------------------------------------------- data sets


def write_synthetic_set(out_dir: Path, count: int, seed: int, workers: int = 1,
                        **options) -> Path:
    """Write ``count`` cases as ``out_dir/images/<PatientID>.dcm`` plus ``out_dir/labels.csv``.

    labels.csv has one row per box and one row with empty label and coordinates for a
    normal image; ``file`` is relative to ``out_dir``. ``options`` go to
    :func:`synthesize_case` (``size_range``, ``normal_fraction``, ``style``). Returns
    labels.csv's path.
    Each case depends only on (seed, index), so ``workers`` processes drawing the cases
    write the same files as one: the GPU machine's 16 cores make 2000 in a minute or two.
    """
    unknown = set(options) - {"size_range", "normal_fraction", "style"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}: expected size_range, "
                        f"normal_fraction, style")
    count = _check_int("count", count, 1, 1_000_000)
    workers = _check_int("workers", workers, 1, 256)
    draw = partial(synthesize_case, seed, **options)
    if workers == 1:
        return _write_cases(out_dir, map(draw, range(count)))
    with ProcessPoolExecutor(workers) as pool:  # map keeps the index order
        return _write_cases(out_dir, pool.map(draw, range(count), chunksize=4))


def _write_cases(out_dir: Path, cases) -> Path:
    """Save each case (anything with ``dataset``, ``boxes`` and ``patient_id``) as
    ``images/<PatientID>.dcm`` and list them in ``labels.csv``; shared by every set writer
    so that training reads one format."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
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
