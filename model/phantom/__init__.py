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

The package is split by concern: :mod:`.dicom` builds the DX dataset, :mod:`.raster` holds
the array helpers (frame, splines, resize, smoothing, noise, masks), :mod:`.anatomy` samples
the acquisition and the body and renders the anatomy, :mod:`.findings` samples, places and
draws the findings, and :mod:`.synthesis` puts a case together and writes data sets.

That is the ``"classic"`` style, the default: the bundled model and its golden outputs were
made with it, so it stays byte for byte as it is. ``style="radiograph"`` draws a case that
looks like a real chest film instead, every step randomised per case: :mod:`.radiograph`
puts it together from :mod:`.acquisition` (exposure, shutters, scatter, grid, detector blur,
Poisson noise, vendor processing, windowing, LUT), :mod:`.render` (PA or AP body, bones as
hollow tubes, soft tissue, breasts, bowel gas), :mod:`.lungs` (soft-bordered lung air,
1/f texture, tapering vessel trees), :mod:`.devices` (lines, tubes, leads, wires, markers,
burned-in text) and :mod:`.lesions` (the findings with their textures), all drawn as path
(line integrals) with the primitives of :mod:`.tubes`. :mod:`.insertion` draws the same
lesions into a real radiograph (``cxr-node synth --onto FILE --style radiograph``).
"""

from model.phantom.dicom import DX_FOR_PRESENTATION, dx_dataset
from model.phantom.findings import (
    ATELECTASIS,
    CARDIOMEGALY,
    EFFUSION,
    INFILTRATION,
    MASS,
    NODULE,
    PNEUMOTHORAX,
    SYNTHETIC_LABELS,
)
from model.phantom.synthesis import (
    CLASSIC,
    LABELS_HEADER,
    RADIOGRAPH,
    STYLES,
    Anatomy,
    Box,
    SyntheticCase,
    synthesize_case,
    write_synthetic_set,
)

__all__ = [
    "ATELECTASIS",
    "CARDIOMEGALY",
    "CLASSIC",
    "DX_FOR_PRESENTATION",
    "EFFUSION",
    "INFILTRATION",
    "LABELS_HEADER",
    "MASS",
    "NODULE",
    "PNEUMOTHORAX",
    "RADIOGRAPH",
    "STYLES",
    "SYNTHETIC_LABELS",
    "Anatomy",
    "Box",
    "SyntheticCase",
    "dx_dataset",
    "synthesize_case",
    "write_synthetic_set",
]
