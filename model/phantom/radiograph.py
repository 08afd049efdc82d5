"""A case of the radiograph style: sampled, drawn as path, exposed, processed, stored.

``synthesize_case(..., style="radiograph")`` lands here. The classic style's code is not
touched by this one (its images, the bundled model and its golden outputs depend on every
byte of it); the two share the findings' placer, the masks and the dataset writer.

Random streams, from ``numpy.random.SeedSequence([seed, index, 2])``: the plan (acquisition,
body, findings, devices), the anatomy's textures, the findings' textures and the quantum
noise, each its own, so that ``draw_findings=False`` draws the very same case without its
findings (same texture, same noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.phantom.acquisition import RadiographAcquisition, detect, process, sample_acquisition
from model.phantom.acquisition import store as store_pixels
from model.phantom.anatomy import _Masks, _masks
from model.phantom.devices import Device, burn_in, draw_devices, sample_devices
from model.phantom.findings import CARDIOMEGALY, _Effect, _Placer, _sample_labels
from model.phantom.lesions import place_lesions
from model.phantom.render import RadiographBody, render_body, sample_body

STREAM = 2  # the third number of the seed sequence: the radiograph style's own streams


@dataclass
class Rendered:
    """Everything a case was made of, for :func:`model.phantom.synthesis.synthesize_case`
    and for tests that check a step (the path map before acquisition, the devices drawn)."""

    acquisition: RadiographAcquisition
    body: RadiographBody
    masks: _Masks
    effects: list[_Effect]
    devices: list[Device]
    path: np.ndarray  # working grid, line integrals
    air: np.ndarray  # the lung air's share of it, as drawn (findings' air loss applied)
    markings: np.ndarray  # the lung markings (vessels, texture) as drawn
    pixels: np.ndarray  # stored values
    burned_in: bool


def render_case(seed: int, index: int, size_range: tuple[int, int], normal_fraction: float,
                draw_findings: bool = True, with_devices: bool = True) -> Rendered:
    """Draw case (seed, index); arguments already checked by ``synthesize_case``."""
    plan_seq, texture_seq, lesion_seq, device_seq, noise_seq = np.random.SeedSequence(
        [seed, index, STREAM]).spawn(5)
    rng = np.random.default_rng(plan_seq)
    acq = sample_acquisition(rng, tuple(size_range))
    labels = _sample_labels(rng, normal_fraction)
    body = sample_body(rng, acq)
    enlarged = CARDIOMEGALY in labels
    masks = _masks(body, body.big_heart if enlarged else body.heart)
    effects = place_lesions(_Placer(rng, body, masks), labels,
                            np.random.default_rng(lesion_seq))
    devices = sample_devices(rng, body) if with_devices else []
    if enlarged and not draw_findings:
        masks = _masks(body, body.heart)
    drawn = effects if draw_findings else []

    tissue, air, markings = render_body(body, masks, np.random.default_rng(texture_seq))
    keep_air = np.ones(body.frame.shape, np.float32)
    keep_markings = np.ones(body.frame.shape, np.float32)
    added = np.zeros(body.frame.shape, np.float32)
    for effect in drawn:
        if effect.air is not None:
            keep_air *= 1 - effect.air
        if effect.markings is not None:
            keep_markings *= 1 - effect.markings
        if effect.add is not None:
            added += effect.add
    air, markings = air * keep_air, markings * keep_markings
    path = tissue - air + markings + added
    path += draw_devices(body, devices, np.random.default_rng(device_seq))
    noise_rng = np.random.default_rng(noise_seq)
    log_image, field = detect(path, acq, body.frame.mm, body.spacing_mm, noise_rng)
    shown = process(log_image, field, acq, body.spacing_mm)
    burned = burn_in(shown, body, acq, devices) if with_devices else False
    return Rendered(acq, body, masks, effects, devices, path, air, markings,
                    store_pixels(shown, acq), burned)
