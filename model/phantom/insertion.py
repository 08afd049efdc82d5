"""Synthetic findings drawn into a real chest radiograph, with their boxes.

Whole phantoms teach a detector what our phantom looks like; a real background (ribs,
vessels, noise, processing) under the same findings is a second, harder source of labels.
The findings are the phantom's own (:mod:`.findings`), placed by its ``_Placer`` in lungs
found in the real image. The background's own findings are not labelled, so use a source
read as normal: RG1_UNCR.dcm (pydicom-data) is not; it has several round masses in both lungs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from model.phantom import ATELECTASIS, INFILTRATION, MASS, NODULE
from model.phantom.anatomy import _SIDES, _Masks
from model.phantom.dicom import dx_dataset
from model.phantom.findings import _PLACEMENT_ORDER, _place_findings, _Placer
from model.phantom.lesions import place_lesions
from model.phantom.lungs import TYPICAL_AIR
from model.phantom.raster import _bounds, _Frame, _resize, _smooth
from model.phantom.synthesis import (
    _LUNG_AIR,
    CLASSIC,
    RADIOGRAPH,
    STYLES,
    Box,
    _check_int,
    _uid,
    _write_cases,
)
from model.preprocess import pixel_spacing_mm

# Findings that need only a lung mask; effusion, pneumothorax and cardiomegaly need the
# phantom's lung and heart outlines, which a real image does not give.
INSERTED_LABELS = (ATELECTASIS, INFILTRATION, MASS, NODULE)
_WORK_MAX_PX = 1024  # drawing grid, as in the phantom
_FIND_MAX_PX = 256  # lung-finding grid: lungs are large, ribs are washed out anyway
_ASSUMED_FIELD_MM = 430.0  # a 43 cm (17 inch) detector: spacing when the source has none
_NOISE = 0.002  # added noise, fraction of the stored range


@dataclass(frozen=True)
class _Outline:
    """The few measures of the lungs that the phantom's ``_Placer`` reads from its ``_Body``."""

    frame: _Frame
    base: tuple[float, float]  # lowest lung row per side, mm below the apices
    half_width: tuple[float, float]
    hila: tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class InsertedCase:
    """A real radiograph with inserted findings: dataset, boxes, and the lungs they went in.

    ``lungs`` are the patient's right then left lung, XYXY pixels; ``lungs_found`` is False
    when the heuristic failed and fixed regions of a PA chest were used instead.
    """

    dataset: Dataset
    boxes: tuple[Box, ...]
    lungs: tuple[tuple[float, float, float, float], tuple[float, float, float, float]]
    lungs_found: bool

    @property
    def patient_id(self) -> str:
        return str(self.dataset.PatientID)


def _attenuation(source: Dataset) -> np.ndarray:
    """Stored values as 0..1 with higher = more attenuating, whatever the polarity."""
    photometric = source.get("PhotometricInterpretation")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f'source photometric "{photometric}" is not MONOCHROME1 or MONOCHROME2')
    if source.get("PixelRepresentation") != 0 or int(source.get("NumberOfFrames") or 1) != 1:
        raise ValueError("source must be a single frame of unsigned pixels")
    if source.get("ViewPosition", "PA") not in ("PA", "AP", ""):
        raise ValueError(f'source view "{source.ViewPosition}" is not a frontal (PA or AP) chest')
    if source.get("BodyPartExamined", "CHEST") not in ("CHEST", ""):
        raise ValueError(f'source body part "{source.BodyPartExamined}" is not CHEST')
    values = source.pixel_array.astype(np.float32) / (2**source.BitsStored - 1)
    return 1 - values if photometric == "MONOCHROME1" else values


def _spacing_mm(source: Dataset) -> tuple[float, bool]:
    """(pixel spacing, whether the source gave it): a 43 cm field when it gives none or
    zero (RG1_UNCR.dcm, a Philips drum CR, has Pixel Spacing 0\\0)."""
    spacing = pixel_spacing_mm(source)
    if spacing:
        return spacing[0], True
    return _ASSUMED_FIELD_MM / max(source.Rows, source.Columns), False


def _connected(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of ``allowed`` 4-connected to a pixel of ``seed & allowed``.

    Labels runs, not pixels: the runs of ``allowed`` in each row, joined where runs of
    adjacent rows share a column (union-find), so the cost follows the number of runs,
    not the region's width in dilation steps (a lung took a hundred whole-grid passes).
    """
    padded = np.zeros((allowed.shape[0], allowed.shape[1] + 2), np.int8)
    padded[:, 1:-1] = allowed
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major: each row's runs left to right
    ends = np.nonzero(edges == -1)[1]  # exclusive
    first = np.searchsorted(rows, np.arange(allowed.shape[0] + 1)).tolist()
    row_of, start, end = rows.tolist(), starts.tolist(), ends.tolist()
    parent = list(range(len(start)))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    for row in range(allowed.shape[0] - 1):
        i, i_end, j, j_end = first[row], first[row + 1], first[row + 1], first[row + 2]
        while i < i_end and j < j_end:  # both rows' runs in column order
            if start[i] < end[j] and start[j] < end[i]:
                parent[root(i)] = root(j)
            if end[i] < end[j]:
                i += 1
            else:
                j += 1
    seeded = set()
    for r, c in zip(*np.nonzero(seed & allowed), strict=True):
        run = first[r] + int(np.searchsorted(starts[first[r]:first[r + 1]], c, side="right")) - 1
        seeded.add(root(run))
    region = np.zeros(allowed.shape, bool)
    for run in range(len(start)):
        if root(run) in seeded:
            region[row_of[run], start[run]:end[run]] = True
    return region


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The 4-connected part of ``allowed`` that holds ``seed``, each row then filled from
    its first to its last pixel (closing the holes that opacities in the lung leave)."""
    region = _connected(seed, allowed)
    for row in np.flatnonzero(region.any(1)):
        cs = np.flatnonzero(region[row])
        region[row, cs[0]:cs[-1] + 1] = True
    return region


def _find_lungs(atten: np.ndarray, mm: float):
    """(midline column, right-lung mask, left-lung mask, found) on this grid.

    Heuristic: blur away the ribs (4 mm); the midline is the brightest column of the
    central 40% (spine, mediastinum). Each lung is grown from the darkest point beside the
    midline (rows 25-60%, 8-33% of the width off it) through pixels darker than a threshold
    between that point and the midline, the loosest of 70%..40% of the way that keeps the
    region off the image edge (outside air), on its side and of a lung's size (3-30% of the
    image, a quarter of its height or more). If a lung has none, fixed ellipses where a
    PA chest has its lungs stand in for both, and ``found`` is False.
    """
    rows, cols = atten.shape
    blurred = _smooth(atten, 4 / mm)
    band = slice(int(0.25 * rows), int(0.6 * rows))
    lo, hi = int(0.3 * cols), int(0.7 * cols)
    midline = lo + int(np.argmax(blurred[band, lo:hi].mean(0)))
    tissue = float(np.median(blurred[band, midline]))
    lungs, found = [], True
    for side in _SIDES:  # the patient's right lung is on the image's left (PA)
        near, far = sorted(midline + side * int(f * cols) for f in (0.08, 0.33))
        zone = blurred[band, near:far]
        r, c = np.unravel_index(int(np.argmin(zone)), zone.shape)
        seed = np.zeros(blurred.shape, bool)
        seed[band.start + int(r), near + int(c)] = True
        for share in (0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4):  # loosest that stays a lung
            dark = blurred < float(zone[r, c]) + share * (tissue - float(zone[r, c]))
            lung = _grow(seed, dark)
            b = _bounds(lung)
            inside = b is not None and b[0] > 0 and b[1] < rows and b[2] > 0 and (
                b[3] < cols) and (b[3] <= midline if side < 0 else b[2] > midline)
            if inside and 0.03 <= lung.mean() <= 0.3 and b[1] - b[0] >= 0.25 * rows:
                break
        else:
            found = False
        lungs.append(lung)
    if not found:
        y, x = np.mgrid[0:rows, 0:cols]
        lungs = [((x - cols * (0.5 + 0.22 * s)) / (0.16 * cols)) ** 2
                 + ((y - 0.43 * rows) / (0.3 * rows)) ** 2 <= 1 for s in _SIDES]
        midline = cols // 2
    return midline, lungs[0], lungs[1], found


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks, the image edge-padded to whole blocks."""
    rows, cols = image.shape
    padded = np.pad(image, ((0, -rows % factor), (0, -cols % factor)), mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, -1, factor).mean(axis=(1, 3))


def _sharpened(delta: np.ndarray, mask: np.ndarray, mm: float, rng) -> np.ndarray:
    """A finding's change with the edge enhancement a processed image has (an unsharp
    mask of random strength), kept inside its mask so that its box still holds it."""
    gain = rng.uniform(0.0, 0.8)
    return (delta + gain * (delta - _smooth(delta, 2.5 / mm))) * mask


def _noise_level(atten: np.ndarray, lungs, factor: int) -> float:
    """The image's own pixel noise in its lungs (robust: median absolute difference of
    neighbouring pixels, which the lung's slow changes barely touch)."""
    b = [_bounds(lung) for lung in lungs]
    diffs = []
    for r0, r1, c0, c1 in b:
        patch = atten[r0 * factor:r1 * factor, c0 * factor:c1 * factor]
        diffs.append(np.diff(patch, axis=1).ravel())
    d = np.concatenate(diffs)
    return float(np.median(np.abs(d - np.median(d))) / 0.6745 / math.sqrt(2))


def _sample_labels(rng: np.random.Generator, normal_fraction: float) -> list[str]:
    """None, or 1-3 of the findings a real background can take (repeats allowed)."""
    if rng.random() < normal_fraction:
        return []
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    labels = [INSERTED_LABELS[int(rng.integers(len(INSERTED_LABELS)))] for _ in range(count)]
    return sorted(labels, key=_PLACEMENT_ORDER.index)


def insert_findings(source: Dataset, seed: int, index: int, *,
                    normal_fraction: float = 0.3, style: str = CLASSIC) -> InsertedCase:
    """Case ``index`` of set ``seed``: ``source`` with 0-3 findings drawn into its lungs.

    The lungs are found on a coarse copy (:func:`_find_lungs`); the phantom's ``_Placer``
    puts Nodule, Mass, Atelectasis and Infiltration inside them, on a grid of at most 1024
    px. A finding adds attenuation (brighter on MONOCHROME2, darker on MONOCHROME1) in the
    phantom's units, scaled by the image's lung-to-mediastinum contrast, and replaces lung
    air in proportion to how dark the lung is there; lung markings are left as they are.
    Mild noise goes over the whole image so the edited parts have no smoother texture.

    ``style="radiograph"`` draws the findings of :mod:`.lesions` instead (soft, lobulated
    or calcified nodules, spiculated masses, infiltrates with air bronchograms, plate-like
    and lobar atelectasis), scaled from the radiograph style's path units, each sharpened
    a little as a vendor's edge enhancement would have (by a random amount, confined to its
    box), and with the quantum noise the added attenuation brings where it was added
    (noise grows as ``exp(path / 2)``; the image's own noise level is measured in its
    lungs), instead of noise over the whole image. Its UIDs differ from the classic ones.

    The result is a DX For Presentation dataset (PS3.3 A.26) with the source's bit depth
    and polarity, Image Type DERIVED, and nothing of the source's patient or study:
    PatientID ``INS<seed><index>`` and 2.25 UIDs from (seed, index, source SOP Instance
    UID), so that two sources never share UIDs. Same inputs give the same pixels and boxes.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    seed = _check_int("seed", seed, 0, 9999)
    index = _check_int("index", index, 0, 999_999)
    if not isinstance(normal_fraction, int | float) or not 0 <= normal_fraction <= 1:
        raise ValueError(f"normal_fraction {normal_fraction!r} must be a number in [0, 1]")
    if style not in STYLES:
        raise ValueError(f'style "{style}" is not one of {", ".join(STYLES)}')
    atten = _attenuation(source)
    rows, cols = atten.shape
    spacing, spacing_given = _spacing_mm(source)
    if style == CLASSIC:
        plan_seq, noise_seq = np.random.SeedSequence([seed, index]).spawn(2)
    else:
        plan_seq, noise_seq, lesion_seq = np.random.SeedSequence([seed, index, 2]).spawn(3)
    rng = np.random.default_rng(plan_seq)

    factor = math.ceil(max(rows, cols) / _WORK_MAX_PX)
    work = _block_mean(atten, factor)
    step = math.ceil(max(work.shape) / _FIND_MAX_PX)
    midline, *small_lungs, found = _find_lungs(_block_mean(work, step), spacing * factor * step)
    lungs = tuple(m.repeat(step, 0).repeat(step, 1)[:work.shape[0], :work.shape[1]]
                  for m in small_lungs)
    bounds = [_bounds(lung) for lung in lungs]

    mm = spacing * factor
    ox, oy = (midline + 0.5) * step, min(b[0] for b in bounds)
    frame = _Frame(work.shape, mm, ox, oy, 1.0, 0.0)
    base = tuple((b[1] - oy) * mm for b in bounds)
    half = ((ox - bounds[0][2]) * mm, (bounds[1][3] - ox) * mm)
    medial = ((ox - bounds[0][3]) * mm, (bounds[1][2] - ox) * mm)
    hila = tuple((s * (m + 15), 0.45 * b) for s, m, b in zip(_SIDES, medial, base, strict=True))
    masks = _Masks(lungs, lungs, np.zeros(work.shape, bool))  # only .lungs is read
    placer = _Placer(rng, _Outline(frame, base, half, hila), masks)
    if style == CLASSIC:
        effects = _place_findings(placer, _sample_labels(rng, normal_fraction))
    else:
        effects = place_lesions(placer, _sample_labels(rng, normal_fraction),
                                np.random.default_rng(lesion_seq))

    blurred = _smooth(work, 3 / mm)
    tissue = float(np.median(blurred[oy:max(b[1] for b in bounds), int(ox)]))
    lung_level = float(np.median(blurred[lungs[0] | lungs[1]]))
    # phantom units -> this image's
    scale = max(tissue - lung_level, 0.05) / (_LUNG_AIR if style == CLASSIC else TYPICAL_AIR)
    air_left = np.clip(tissue - blurred, 0, None)
    delta = np.zeros(work.shape, np.float32)
    for effect in effects:
        own = np.zeros(work.shape, np.float32)
        if effect.add is not None:
            own += scale * effect.add
        if effect.air is not None:
            own += effect.air * air_left
        if style == RADIOGRAPH:
            own = _sharpened(own, effect.mask, mm, rng)
        delta += own
    full = _resize(delta, (work.shape[0] * factor, work.shape[1] * factor))[:rows, :cols]
    noise = np.random.default_rng(noise_seq).standard_normal((rows, cols), dtype=np.float32)
    if style == CLASSIC:
        new = np.clip(atten + full + _NOISE * noise, 0, 1)
    else:
        sigma = _noise_level(atten, lungs, factor)
        extra = sigma * np.sqrt(np.expm1(np.clip(full / scale, 0, 6)))
        new = np.clip(atten + full + extra * noise, 0, 1)
    stored = 1 - new if source.PhotometricInterpretation == "MONOCHROME1" else new
    pixels = np.rint(stored * (2**source.BitsStored - 1)).astype(
        np.uint8 if source.BitsAllocated == 8 else np.uint16)

    def out_box(mask):  # working-grid mask -> XYXY pixels of the output
        r0, r1, c0, c1 = (factor * v for v in _bounds(mask))
        return float(c0), float(r0), float(min(c1, cols)), float(min(r1, rows))

    patient_id, origin = f"INS{seed:04d}{index:06d}", source.get("SOPInstanceUID", "")
    if style == RADIOGRAPH:
        origin = f"{RADIOGRAPH}/{origin}"

    ds = dx_dataset(pixels, study_uid=_uid(seed, index, f"{origin}/study"),
                    series_uid=_uid(seed, index, f"{origin}/series"),
                    sop_instance_uid=_uid(seed, index, f"{origin}/instance"),
                    patient_id=patient_id, patient_name=f"Synthetic^{patient_id}",
                    photometric=source.PhotometricInterpretation,
                    bits_stored=source.BitsStored, pixel_spacing_mm=round(spacing, 6),
                    view_position=source.get("ViewPosition") or "PA")
    when = datetime(2020, 1, 1, 8) + timedelta(days=(seed * 7919 + index) % 1827,
                                               seconds=index % 36000)  # as the phantom's
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = "synthetic findings inserted into a real radiograph" + (
        "" if spacing_given else "; pixel spacing assumed (43 cm field)")
    low, high = np.percentile(pixels[::4, ::4], [1, 99])
    ds.WindowCenter, ds.WindowWidth = int(round((low + high) / 2)), max(int(high - low), 2)
    boxes = tuple(Box(e.label, *out_box(e.mask)) for e in effects)
    return InsertedCase(ds, boxes, (out_box(lungs[0]), out_box(lungs[1])), found)


def write_inserted_set(source_path: Path, out_dir: Path, count: int, seed: int, *,
                       normal_fraction: float = 0.3, style: str = CLASSIC) -> Path:
    """Write ``count`` cases of :func:`insert_findings` on one source file, as
    :func:`~model.phantom.synthesis.write_synthetic_set` does. Returns labels.csv's path."""
    count = _check_int("count", count, 1, 1_000_000)
    if style not in STYLES:
        raise ValueError(f'style "{style}" is not one of {", ".join(STYLES)}')
    source = pydicom.dcmread(source_path)
    return _write_cases(out_dir, (insert_findings(source, seed, index,
                                                  normal_fraction=normal_fraction, style=style)
                                  for index in range(count)))
