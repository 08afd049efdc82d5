"""The radiograph style: what a person checks on a film, measured.

Soft lung borders, a 1/f lung texture, Poisson noise, vessels that taper, a wider heart on
AP films, devices on some films and not others, a pneumothorax without markings beyond its
pleural line, a meniscus that climbs the lateral wall, boxes that hold exactly what was
drawn, the same seed giving the same film, and the time a 512 px film takes.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import time

import numpy as np
import pydicom
import pytest

from model.phantom import (
    EFFUSION,
    INFILTRATION,
    MASS,
    NODULE,
    PNEUMOTHORAX,
    synthesize_case,
    write_synthetic_set,
)
from model.phantom.acquisition import AP, PA, detect, sample_acquisition
from model.phantom.devices import (
    DEVICE_KINDS,
    LEAD_MARKER,
    PACEMAKER,
    TEXT,
    draw_devices,
    glyphs,
    sample_devices,
)
from model.phantom.findings import _sample_labels
from model.phantom.insertion import insert_findings
from model.phantom.radiograph import STREAM, render_case
from model.phantom.raster import _bounds, _smooth
from model.phantom.render import sample_body
from model.phantom.tubes import pink_noise
from node.cli import main
from tests.model.test_phantom import attenuation, coords, inside, read_back

SEED = 21
SIZE = (320, 320)
STYLE = "radiograph"


def planned_labels(seed: int, index: int) -> list[str]:
    """The labels case (seed, index) will carry, read off its plan stream without drawing it
    (the stream layout of :func:`render_case`; a test that uses this checks the drawing)."""
    plan = np.random.SeedSequence([seed, index, STREAM]).spawn(5)[0]
    rng = np.random.default_rng(plan)
    sample_acquisition(rng, SIZE)
    return _sample_labels(rng, 0.0)


def first_with(*labels: str, seed: int = SEED) -> int:
    return next(i for i in range(200) if set(labels) <= set(planned_labels(seed, i)))


@pytest.fixture(scope="module")
def with_pneumothorax():
    """A case with an effusion on one side and a pneumothorax on the other."""
    return render_case(SEED, first_with(EFFUSION, PNEUMOTHORAX), (384, 384), 0.0)


@pytest.fixture(scope="module")
def bodies():
    """The same ten patients seen PA and AP (the view changes geometry, not the draws)."""
    pairs = []
    for k in range(10):
        state = np.random.default_rng(1000 + k).bit_generator.state
        views = {}
        for view in (PA, AP):
            rng = np.random.default_rng(0)
            rng.bit_generator.state = state
            acq = dataclasses.replace(sample_acquisition(rng, SIZE), view=view)
            views[view] = sample_body(rng, acq)
        pairs.append(views)
    return pairs


def test_same_seed_same_film_and_the_styles_do_not_collide(tmp_path):
    first = synthesize_case(3, 17, size_range=SIZE, style=STYLE)
    again = synthesize_case(3, 17, size_range=SIZE, style=STYLE)
    other = synthesize_case(3, 18, size_range=SIZE, style=STYLE)
    classic = synthesize_case(3, 17, size_range=(64, 64))

    assert first.dataset.PixelData == again.dataset.PixelData
    assert first.boxes == again.boxes
    assert first.patient_id == "SYR0003000017" and classic.patient_id == "SYN0003000017"
    assert first.dataset.SOPInstanceUID != classic.dataset.SOPInstanceUID
    assert first.dataset.StudyInstanceUID != classic.dataset.StudyInstanceUID
    assert other.dataset.PixelData != first.dataset.PixelData
    with pytest.raises(ValueError, match='style "cartoon" is not one of classic, radiograph'):
        synthesize_case(3, 17, style="cartoon")


def test_lung_border_is_soft_but_definite(with_pneumothorax):
    """Across the lateral lung border, the lung air rises from 10 % to 90 % of its depth
    over several millimetres (a chord's square root), not at one pixel as in the classic
    style, and not over centimetres."""
    r = with_pneumothorax
    frame, mm = r.body.frame, r.body.frame.mm
    widths = []
    for i, side in enumerate((-1, 1)):
        y = 0.55 * r.body.base[i]
        xs = side * np.arange(0.3 * r.body.half_width[i], r.body.half_width[i] + 15, mm / 2)
        cols, rows = frame.to_px(xs, np.full_like(xs, y))
        profile = r.air[rows.astype(int), cols.astype(int)] + 0 * xs
        top = float(np.median(profile[: len(profile) // 3]))
        inner = np.flatnonzero(profile >= 0.9 * top)[-1]
        outer = np.flatnonzero(profile > 0.1 * top)[-1]
        widths.append(abs(xs[outer] - xs[inner]))
    assert all(3 <= w <= 30 for w in widths), widths


def test_lung_texture_power_falls_as_one_over_f():
    """The parenchymal texture's power spectrum falls with frequency with the exponent it
    was drawn with, and so does the rendered lung."""
    rng = np.random.default_rng(4)
    field = pink_noise(rng, (256, 256), 0.5, exponent=2.6, shortest_mm=0.5, longest_mm=500)
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256, 0.5), np.fft.fftfreq(256, 0.5)))
    bands = np.geomspace(0.02, 0.4, 8)
    mean_power = [power[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bands, bands[1:],
                                                                      strict=False)]
    centres = np.sqrt(bands[:-1] * bands[1:])
    slope = np.polyfit(np.log(centres), np.log(mean_power), 1)[0]
    assert -3.1 < slope < -2.1, slope

    case = synthesize_case(SEED, 3, size_range=(384, 384), style=STYLE)
    image = attenuation(case.dataset)
    x1, y1, x2, y2 = case.anatomy.right_lung
    cy, cx = int((y1 + y2) / 2), int((x1 + x2) / 2)
    lung = image[cy - 24:cy + 24, cx - 24:cx + 24]
    spectrum = np.abs(np.fft.fft2(lung - lung.mean())) ** 2
    fl = np.hypot(*np.meshgrid(np.fft.fftfreq(48), np.fft.fftfreq(48)))
    assert spectrum[(fl > 0.02) & (fl < 0.08)].mean() > 5 * spectrum[fl > 0.3].mean()


def test_quantum_noise_is_poisson_on_the_exposure():
    """Behind a uniform slab the log image's noise is 1/sqrt(photons), photons falling as
    exp(-path): four times the noise behind 2.77 more units of path (16x fewer photons)."""
    acq = dataclasses.replace(sample_acquisition(np.random.default_rng(0), (256, 256)),
                              scatter=0.0, grid=None, blur_mm=0.01, rows=256, columns=256,
                              quanta_per_mm2=1e5)
    acq = dataclasses.replace(acq, collimation=dataclasses.replace(
        acq.collimation, top=0, bottom=0, left=0, right=0))
    sigmas = []
    for path in (2.0, 2.0 + math.log(16)):
        log_image, _ = detect(np.full((128, 128), path, np.float32), acq, 1.0, 0.5,
                              np.random.default_rng(1))
        assert abs(float(log_image.mean()) - path) < 0.01
        sigmas.append(float(log_image.std()))
    expected = 1 / math.sqrt(1e5 * 0.25 * math.exp(-2.0))
    assert sigmas[0] == pytest.approx(expected, rel=0.1)
    assert sigmas[1] / sigmas[0] == pytest.approx(4, rel=0.1)


def test_processing_window_and_look_vary_from_case_to_case():
    """Domain randomisation: the lungs' grey level, the LUT and the view are not fixed."""
    shades, luts, views = [], set(), set()
    for index in range(6):
        r = render_case(SEED, 60 + index, (256, 256), 0.3)
        shown = r.pixels.astype(float) / (2**r.acquisition.bits_stored - 1)
        if r.acquisition.photometric == "MONOCHROME1":
            shown = 1 - shown
        sx = shown.shape[1] / r.body.frame.shape[1]
        r0, r1, c0, c1 = (int(v * sx) for v in _bounds(r.masks.lungs[0]))
        shades.append(float(np.median(shown[r0:r1, c0:c1])))
        luts.add(r.acquisition.lut)
        views.add(r.acquisition.view)
    assert max(shades) - min(shades) > 0.1, shades
    assert len(luts) == 2


def test_vessels_branch_from_the_hila_and_taper(bodies):
    """Near the hilum the vessels are millimetres wide; 8 cm out, under a millimetre."""
    for body in (views[PA] for views in bodies[:4]):
        for tree, (hx, hy) in zip(body.vessels, body.hila, strict=True):
            points = np.vstack(tree.curves)
            radii = np.concatenate(tree.radii)
            distance = np.hypot(points[:, 0] - hx, points[:, 1] - hy)
            near, far = radii[distance < 20], radii[distance > 80]
            assert len(tree.curves) > 100 and far.size
            assert np.median(near) > 3 * np.median(far), (np.median(near), np.median(far))
            assert np.median(far) < 1.0


def test_ap_films_show_a_wider_heart_flatter_clavicles_and_the_scapulae(bodies):
    def ratio(body):
        lungs = np.vstack(body.lungs)
        return np.ptp(body.heart[:, 0]) / np.ptp(lungs[:, 0])

    def clavicle_rise(body):  # how much higher its lateral end is than its medial end
        curves = [b.curve for b in body.bones if b.radius > 5 and len(b.curve) == 9]
        return np.mean([c[0, 1] - c[-1, 1] for c in curves])

    pa = np.array([ratio(v[PA]) for v in bodies])
    ap = np.array([ratio(v[AP]) for v in bodies])
    assert (ap > pa * 1.05).all() and 0.3 < pa.mean() < 0.5
    assert all(clavicle_rise(v[AP]) < clavicle_rise(v[PA]) for v in bodies)
    for views in bodies:  # the scapula's medial border: over the lung on AP, beside it on PA
        for view, inward in ((AP, True), (PA, False)):
            body = views[view]
            for scap, half in zip(body.scapulae, body.half_width, strict=True):
                medial = np.abs(scap.borders[1][:, 0]).min()
                assert bool(medial < 0.85 * half) == inward, (view, medial / half)


def test_devices_on_some_films_and_not_others(bodies):
    """With a fixed seed some films carry devices and some none; every kind turns up;
    metal is denser than bone (a pacemaker shows whiter than any rib)."""
    kinds_per_case = [{d.kind for d in sample_devices(np.random.default_rng(s), views[view])}
                      - {LEAD_MARKER, TEXT}
                      for s in range(60) for views in bodies[:2] for view in (PA, AP)]
    assert sum(not k for k in kinds_per_case) >= 30
    assert sum(bool(k) for k in kinds_per_case) >= 30
    assert set().union(*kinds_per_case) == set(DEVICE_KINDS)
    again = [{d.kind for d in sample_devices(np.random.default_rng(s), bodies[0][PA])}
             for s in range(10)]
    assert again == [{d.kind for d in sample_devices(np.random.default_rng(s), bodies[0][PA])}
                     for s in range(10)]

    body = bodies[0][PA]
    seed = next(s for s in range(500)
                if PACEMAKER in {d.kind for d in sample_devices(np.random.default_rng(s), body)})
    devices = [d for d in sample_devices(np.random.default_rng(seed), body)
               if d.kind == PACEMAKER]
    metal = draw_devices(body, devices, np.random.default_rng(0))
    r = render_case(SEED, 0, SIZE, 0.0, with_devices=False)
    bone_max = float((r.path - _smooth(r.path, 6 / r.body.frame.mm)).max())
    assert float(metal.max()) > 3 * bone_max


def test_pneumothorax_has_a_pleural_line_and_no_markings_beyond_it(with_pneumothorax):
    r = with_pneumothorax
    effect = next(e for e in r.effects if e.label == PNEUMOTHORAX)
    i = 0 if (effect.mask & r.masks.lungs[0]).any() else 1
    rim = effect.mask & (effect.markings > 0.99)
    lung = r.masks.lungs[i] & ~effect.mask
    markings_beyond = float(np.abs(r.markings[rim]).mean())
    markings_inside = float(np.abs(r.markings[lung]).mean())
    assert rim.sum() > 20 and markings_beyond < 0.1 * markings_inside
    # The line: along the collapsed lung's edge a thin band denser than the rim beside it
    # (which is darker than the lung: no parenchyma there).
    line = effect.mask & (effect.add > 0)
    edge_length = np.count_nonzero(np.diff(effect.mask.astype(int), axis=1))
    assert 10 < line.sum() < 3 * edge_length
    assert np.median(effect.add[line]) > 0 > np.median(effect.add[rim])


def test_effusion_meniscus_climbs_the_lateral_wall(with_pneumothorax):
    r = with_pneumothorax
    effect = next(e for e in r.effects if e.label == EFFUSION)
    frame = r.body.frame
    rows, cols = np.nonzero(effect.mask)
    x, _ = frame.to_mm(cols + 0.5, rows + 0.5)
    side = 1 if np.median(x) > 0 else -1
    lateral_x = side * x
    top_of = {}
    for c in np.unique(cols):
        top_of[c] = rows[cols == c].min()
    order = np.argsort([side * frame.to_mm(c + 0.5, 0)[0] for c in top_of])
    tops = np.array(list(top_of.values()))[order] * frame.mm
    n = max(len(tops) // 5, 1)
    assert np.median(tops[-n:]) < np.median(tops[:n]) - 8, (tops[:n], tops[-n:])
    assert lateral_x.max() > 0.8 * r.body.half_width[0 if side < 0 else 1]


def test_boxes_hold_exactly_what_was_drawn():
    """Outside the boxes a case with findings and the same case without are identical
    before acquisition; inside, each box changed."""
    for index in (first_with(EFFUSION, MASS, INFILTRATION), first_with(MASS, NODULE)):
        drawn = render_case(SEED, index, SIZE, 0.0)
        plain = render_case(SEED, index, SIZE, 0.0, draw_findings=False)
        change = np.abs(drawn.path - plain.path) > 1e-6
        inside_boxes = np.zeros_like(change)
        for effect in drawn.effects:
            r0, r1, c0, c1 = _bounds(effect.mask)
            inside_boxes[r0:r1, c0:c1] = True
            assert change[r0:r1, c0:c1].any(), effect.label
        assert not (change & ~inside_boxes).any()
        assert len(drawn.effects) == len(planned_labels(SEED, index))


def test_written_films_are_valid_dx_and_say_when_text_is_burned_in(tmp_path, tool):
    dciodvfy = tool("dciodvfy")
    labels = write_synthetic_set(tmp_path / "set", 3, 4, size_range=(256, 288), style=STYLE)
    images, rows = read_back(labels)
    assert len(images) == 3 and all(r[1].startswith("SYR") for r in rows[1:])
    for path in sorted((tmp_path / "set" / "images").iterdir()):
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                check=False)
        report = result.stdout + result.stderr
        assert "DXImageForPresentation" in report
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
        ds = pydicom.dcmread(path)
        assert ds.ViewPosition in ("PA", "AP")
    texted = next(i for i in range(40) if TEXT in {d.kind for d in render_case(
        4, i, (128, 128), 0.3).devices})
    case = synthesize_case(4, texted, size_range=(128, 128), style=STYLE)
    assert case.dataset.BurnedInAnnotation == "YES"
    assert glyphs("L").shape == (7, 5) and glyphs("AP 10:30").shape == (7, 47)


def test_onto_a_real_film_with_the_new_textures(chest_cr):
    source = pydicom.dcmread(chest_cr["RG1_UNCR.dcm"])
    new = insert_findings(source, 7, 2, normal_fraction=0.0, style=STYLE)
    again = insert_findings(source, 7, 2, normal_fraction=0.0, style=STYLE)
    classic = insert_findings(source, 7, 2, normal_fraction=0.0)
    assert new.dataset.PixelData == again.dataset.PixelData and new.boxes == again.boxes
    assert new.dataset.SOPInstanceUID != classic.dataset.SOPInstanceUID
    assert new.boxes and all(any(inside(coords(b), lung) for lung in new.lungs)
                             for b in new.boxes)
    before, after = attenuation(source), attenuation(new.dataset)
    changed = np.abs(after - before) > 1.5 / (2**source.BitsStored - 1)
    allowed = np.zeros_like(changed)
    for b in new.boxes:  # the working grid is half the image: one pixel of slack
        allowed[max(int(b.y1) - 1, 0):int(b.y2) + 1, max(int(b.x1) - 1, 0):int(b.x2) + 1] = True
        assert changed[int(b.y1):int(b.y2), int(b.x1):int(b.x2)].mean() > 0.05
    assert not (changed & ~allowed).any()


def test_cli_writes_radiograph_style_sets(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path / "set"), "--count", "1", "--seed", "9",
                 "--min-size", "128", "--max-size", "128", "--style", STYLE])
    assert code == 0
    assert (tmp_path / "set" / "images" / "SYR0009000000.dcm").is_file()
    with pytest.raises(SystemExit) as refused:
        main(["synth", "--out", str(tmp_path / "x"), "--count", "1", "--seed", "9",
              "--style", "cartoon"])
    assert refused.value.code == 2 and "--style" in capsys.readouterr().err


def test_a_512_px_film_renders_in_under_three_seconds():
    timings = []
    for index in range(2):
        start = time.perf_counter()
        synthesize_case(SEED, index, size_range=(512, 512), style=STYLE)
        timings.append(time.perf_counter() - start)
    print(f"radiograph style, 512 x 512: {min(timings):.2f} s per case (best of 2)")
    assert min(timings) < 3.0
