"""Acquisition of the radiograph style: from a path map (line integrals) to stored pixels.

A detector records photons, not attenuation, and what a radiologist sees has been through a
vendor's processing. A model trained on one fixed rendering learns that rendering; so every
step below is drawn at random per case, over the range real equipment covers:

1. exposure: the primary beam ``exp(-path)``, shutters (collimation) that stop it at the
   field's edges, a scatter veil (a broad blur of the primary, larger without a grid), an
   anti-scatter grid's faint lines when there is one, and the detector's own blur;
2. quantum noise: photon counts are Poisson, so the noise is largest where fewest photons
   arrive (mediastinum, abdomen) and the log image's noise is ``1/sqrt(counts)``;
3. processing as vendors do it: the log, dynamic-range compression (the image's low
   frequencies damped, so lungs and mediastinum both fit the display), multi-scale contrast
   equalisation (frequency bands amplified, small details more than large ones), windowing
   between two percentiles of the collimated field, and a gamma or S-shaped look-up table;
4. storage: bit depth and polarity (MONOCHROME1 stores bone dark and is shown inverted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantom.raster import _resize, _smooth

PA, AP = "PA", "AP"


@dataclass(frozen=True)
class Collimation:
    """Shutter edges as shares of the image (0 = no shutter on that side), and tilt."""

    top: float
    bottom: float
    left: float
    right: float
    tilt: float  # radians
    edge_mm: float  # penumbra


@dataclass(frozen=True)
class RadiographAcquisition:
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    view: str  # "PA" (erect, film behind the chest) or "AP" (bedside, supine or sitting)
    quanta_per_mm2: float  # detected photons per mm^2 of unattenuated beam (DQE included)
    scatter: float  # scatter-to-primary ratio behind an average lung
    scatter_mm: float  # how far scatter spreads
    grid: tuple[float, float, float] | None  # period (output px), depth, phase
    grid_vertical: bool
    blur_mm: float  # detector and focal-spot blur (Gaussian sigma)
    drc: float  # dynamic-range compression: share of the low frequencies removed
    drc_mm: float
    band_gains: tuple[float, ...]  # contrast gain of each frequency band, fine to coarse
    band_power: float  # < 1: small details amplified more than large (equalisation)
    window: tuple[float, float]  # percentiles of the body shown as ``floor`` and white
    floor: float  # display value of the darkest lung (vendors rarely show it black)
    lut: str  # "gamma" or "s-curve"
    lut_shape: float
    low: float  # share of the stored range for the darkest shown value
    high: float
    collimation: Collimation


BAND_MM = (0.6, 1.6, 4.0, 10.0)  # the bands' upper blur widths; the coarsest band ends at 10


def sample_acquisition(rng: np.random.Generator, size_range: tuple[int, int]
                       ) -> RadiographAcquisition:
    """One case's acquisition, every setting drawn at random within realistic limits.

    A bedside AP is a quarter of the cases: lower dose, no grid more often (more scatter),
    more collimation (a cassette placed by hand).
    """
    lo, hi = size_range
    columns = int(rng.integers(lo, hi + 1))
    rows = int(np.clip(round(columns * rng.uniform(0.95, 1.25)), lo, hi))
    view = AP if rng.random() < 0.25 else PA
    gridded = rng.random() < (0.85 if view == PA else 0.35)
    grid = None
    if gridded and rng.random() < 0.35:  # grid lines visible (a stationary grid): aliased
        grid = (float(rng.uniform(2.1, 7.0)), float(rng.uniform(0.004, 0.02)),
                float(rng.uniform(0, 2 * math.pi)))
    shutters = [float(rng.uniform(0.01, 0.08)) if rng.random() < (0.3 if view == PA else 0.55)
                else 0.0 for _ in range(4)]
    collimation = Collimation(*shutters, tilt=math.radians(rng.uniform(-2.5, 2.5)),
                              edge_mm=float(rng.uniform(0.8, 3)))
    s_curve = rng.random() < 0.5
    return RadiographAcquisition(
        rows=rows, columns=columns, bits_stored=int(rng.integers(10, 17)),
        photometric="MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2", view=view,
        quanta_per_mm2=float(math.exp(rng.uniform(math.log(5e4), math.log(4e5)))
                             * (0.6 if view == AP else 1.0)),
        scatter=float(rng.uniform(0.2, 0.6) if gridded else rng.uniform(0.6, 1.6)),
        scatter_mm=float(rng.uniform(25, 70)), grid=grid,
        grid_vertical=bool(rng.random() < 0.5), blur_mm=float(rng.uniform(0.12, 0.5)),
        drc=float(rng.uniform(0.55, 0.85)), drc_mm=float(rng.uniform(20, 60)),
        band_gains=tuple(float(g) for g in (rng.uniform(1.0, 1.8), rng.uniform(1.1, 2.1),
                                            rng.uniform(1.0, 1.8), rng.uniform(1.0, 1.4))),
        band_power=float(rng.uniform(0.75, 1.0)),
        window=(float(rng.uniform(0.1, 2)), float(rng.uniform(98.5, 99.95))),
        floor=float(rng.uniform(0.0, 0.25)), lut="s-curve" if s_curve else "gamma",
        lut_shape=float(rng.uniform(2.5, 5.5) if s_curve else rng.uniform(0.8, 1.5)),
        low=float(rng.uniform(0.0, 0.08)), high=float(rng.uniform(0.75, 1.0)),
        collimation=collimation)


def shutter_mask(shape: tuple[int, int], c: Collimation, mm: float) -> np.ndarray:
    """1 inside the collimated field, 0 under the shutters, a soft penumbra between."""
    rows, cols = shape
    y, x = (np.arange(n, dtype=np.float32) + 0.5 for n in shape)
    y, x = y[:, None] / rows - 0.5, x[None, :] / cols - 0.5
    u = x * math.cos(c.tilt) + y * math.sin(c.tilt) * rows / cols
    v = y * math.cos(c.tilt) - x * math.sin(c.tilt) * cols / rows
    soft_x, soft_y = c.edge_mm / mm / cols, c.edge_mm / mm / rows

    def ramp(d, soft):  # d > 0 inside
        return np.clip(0.5 + d / max(soft, 1e-6), 0, 1)

    field = np.ones(shape, np.float32)
    if c.left:
        field *= ramp(u - (c.left - 0.5), soft_x)
    if c.right:
        field *= ramp((0.5 - c.right) - u, soft_x)
    if c.top:
        field *= ramp(v - (c.top - 0.5), soft_y)
    if c.bottom:
        field *= ramp((0.5 - c.bottom) - v, soft_y)
    return field


def detect(path: np.ndarray, acq: RadiographAcquisition, mm: float, spacing_mm: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(log image in path units at the output size, collimated field there).

    ``path`` is on the working grid (``mm`` per pixel); the output has ``spacing_mm``.
    """
    field = shutter_mask(path.shape, acq.collimation, mm)
    primary = np.exp(-np.clip(path, 0, 30)) * (0.015 + 0.985 * field)
    # Scatter: photons deflected in the body, a broad veil from everywhere the beam
    # interacted (1 - exp(-path)), itself attenuated on its way out (about half the path);
    # behind a lung about ``acq.scatter`` of the primary, behind the mediastinum and the
    # abdomen several times the primary. None from air beside the body or under a shutter.
    source = np.exp(-0.5 * path) * -np.expm1(-np.clip(path, 0, 30)) * field
    scatter = acq.scatter / 2.7 * _smooth(source, acq.scatter_mm / mm)
    signal = _resize(primary + scatter, (acq.rows, acq.columns))
    out_field = _resize(field, (acq.rows, acq.columns))
    if acq.grid is not None:
        period, depth, phase = acq.grid
        axis = np.arange(acq.columns if acq.grid_vertical else acq.rows, dtype=np.float32)
        lines = 1 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * axis / period + phase))
        signal = signal * (lines[None, :] if acq.grid_vertical else lines[:, None])
    quanta = acq.quanta_per_mm2 * spacing_mm * spacing_mm
    counts = quanta * signal
    counts = counts + np.sqrt(counts + 4.0) * rng.standard_normal(counts.shape,
                                                                   dtype=np.float32)
    # The detector blurs signal and quantum noise alike (light spreading in the
    # scintillator), so the noise is a little correlated, as it is on real images.
    counts = _smooth(counts, acq.blur_mm / spacing_mm)
    log_image = -np.log(np.clip(counts, 0.5, None) / quanta)
    return log_image.astype(np.float32), out_field


def process(log_image: np.ndarray, field: np.ndarray, acq: RadiographAcquisition,
            spacing_mm: float) -> np.ndarray:
    """A vendor's processing of the log image, to display values 0..1 (1 = white)."""
    inside = field > 0.5
    reference = float(np.median(log_image[inside])) if inside.any() else 0.0
    low = _smooth(log_image, acq.drc_mm / spacing_mm)
    image = log_image - acq.drc * (low - reference)
    # Multi-scale contrast equalisation: split into frequency bands, raise each band's
    # details to a power below 1 (small ones gain more), weight it, and put them back.
    previous, out = image, None
    bands = []
    for sigma_mm in BAND_MM:
        blurred = _smooth(image, sigma_mm / spacing_mm)
        bands.append(previous - blurred)
        previous = blurred
    out = previous
    for band, gain in zip(bands, acq.band_gains, strict=True):
        scale = float(np.mean(np.abs(band[inside]))) + 1e-6 if inside.any() else 1.0
        shaped = np.sign(band) * scale * (np.abs(band) / scale) ** acq.band_power
        out = out + gain * shaped
    # The window comes from the body: vendors find and leave out the direct exposure (air
    # beside the patient) and the shutters before taking their percentiles.
    body = inside & (log_image > 0.4 * reference)
    lo, hi = np.percentile(out[body] if body.sum() > 100 else out, acq.window)
    shown = np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1)
    if acq.lut == "gamma":
        shown = shown ** acq.lut_shape
    else:
        k = acq.lut_shape
        curve = 1 / (1 + np.exp(-k * (shown - 0.5)))
        ends = 1 / (1 + np.exp(k * 0.5))
        shown = (curve - ends) / (1 - 2 * ends)
    shown = acq.floor + (1 - acq.floor) * shown
    # Under the shutters nothing was exposed: vendors show it blank (white).
    shown = shown * field + (1 - field) * np.maximum(shown, 0.97)
    return np.clip(shown, 0, 1).astype(np.float32)


def store(shown: np.ndarray, acq: RadiographAcquisition) -> np.ndarray:
    """Display values 0..1 -> stored integers in the case's bit depth and polarity."""
    top = 2**acq.bits_stored - 1
    stored = np.rint((acq.low + (acq.high - acq.low) * shown) * top).astype(np.uint16)
    return top - stored if acq.photometric == "MONOCHROME1" else stored
