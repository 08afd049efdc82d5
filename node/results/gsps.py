"""The findings as a Grayscale Softcopy Presentation State over the original images.

A GSPS (PS3.3 A.33.1) draws the boxes and labels on the untouched source pixels, in a graphic
layer the reader can switch off, with the source's own window. It also replaces the
image's grey-scale pipeline: the GSPS pipeline has no MONOCHROME1 step, so Presentation LUT
Shape INVERSE restates that inversion for MONOCHROME1 sources and IDENTITY leaves
MONOCHROME2 as it is (PS3.3 C.11.6.1, PS3.4 N.2.1.1). One presentation LUT serves the
whole object, hence one series of one polarity per GSPS. highdicom adds that every image
of one GSPS has the same Rows and Columns (the displayed area is stated once) and the same
rescale (one Modality LUT); :func:`presentation_groups` splits a study's images along all
of these lines, so a series with a repeat exposure of another size still gets its overlay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from highdicom import PresentationLUTShapeValues, PresentationLUTTransformation
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    TextJustificationValues,
    TextObject,
)
from pydicom.dataset import Dataset

from model.preprocess import Photometric
from node.results.common import (
    LONG_STRING_MAX,
    Algorithm,
    ImageFinding,
    ProducingDevice,
    SeriesDescription,
    check_findings,
    check_producer,
    check_sources,
    closed_box,
    copy_body_part,
    stamp_device,
)
from node.results.layout import Tag
from node.results.overlay import BOX_COLOUR, label_layout

LAYER_NAME = "AI FINDINGS"  # Graphic Layer (0070,0002) is a CS: capitals, digits, space, _
LAYER_DESCRIPTION = "Boxes and probabilities of the AI detector"
CONTENT_LABEL = "AI_FINDINGS"  # Content Label (0070,0080), CS
LUT_SHAPES = {
    Photometric.MONOCHROME1: PresentationLUTShapeValues.INVERSE,
    Photometric.MONOCHROME2: PresentationLUTShapeValues.IDENTITY,
}


def presentation_key(ds: Dataset) -> tuple[Any, ...]:
    """What images presented by one GSPS must share: series, Rows and Columns, polarity and
    rescale (presence and value of Rescale Slope, Intercept and Type). A multi-frame image
    is presented alone, as highdicom requires."""
    rescale = tuple(_number(ds.get(keyword)) for keyword in ("RescaleSlope", "RescaleIntercept"))
    frames = int(ds.get("NumberOfFrames") or 1)
    return (str(ds.get("SeriesInstanceUID")), ds.get("Rows"), ds.get("Columns"),
            str(ds.get("PhotometricInterpretation")), rescale, ds.get("RescaleType"),
            str(ds.get("SOPInstanceUID")) if frames > 1 else "")


def _number(value: object) -> object:
    """A DS value compared as highdicom compares it (by number); kept as text if not one."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return str(value)


def presentation_groups(sources: Sequence[Dataset]) -> list[list[Dataset]]:
    """``sources`` split into the groups that one GSPS each can present, in order of first
    appearance (images keep their order within a group)."""
    groups: dict[tuple[Any, ...], list[Dataset]] = {}
    for ds in sources:
        groups.setdefault(presentation_key(ds), []).append(ds)
    return list(groups.values())


def build_presentation_state(
    sources: Sequence[Dataset],
    findings: Sequence[ImageFinding],
    device: ProducingDevice,
    algorithm: Algorithm,
    *,
    series_number: int = 9002,
) -> Dataset:
    """A GSPS referencing every image of one source series, with a closed POLYLINE box and a
    text label per finding in the layer "AI FINDINGS"; the VOI window comes from the images.
    Labels, numbered tags and legend lines lie where the burned-in Secondary Capture draws
    them (:func:`node.results.overlay.label_layout`), outside every box.

    Raises
    ------
    ValueError
        When the sources cannot share one GSPS (see :func:`presentation_groups`: several
        series, sizes, polarities or rescales), or a finding does not lie on one of them.
    """
    sources = check_sources(sources)
    check_producer(device, algorithm)
    findings = check_findings(sources, findings)
    series = sorted({str(ds.SeriesInstanceUID) for ds in sources})
    if len(series) != 1:
        raise ValueError(f"a presentation state covers one series; sources span SeriesInstanceUIDs "
                         f"{series}: build one per series")
    photometrics = sorted({str(ds.get("PhotometricInterpretation")) for ds in sources})
    if len(photometrics) != 1 or photometrics[0] not in LUT_SHAPES:
        raise ValueError(f"sources must all be MONOCHROME1 or all MONOCHROME2, got "
                         f"PhotometricInterpretation {photometrics}: build one per group "
                         f"of presentation_groups()")
    sizes = sorted({f"{ds.Columns} x {ds.Rows}" for ds in sources})
    if len(sizes) != 1:
        raise ValueError(f"a presentation state covers images of one size; sources are "
                         f"{sizes} (columns x rows): build one per group of "
                         f"presentation_groups()")
    if len(presentation_groups(sources)) != 1:
        raise ValueError("sources differ in Rescale Slope, Intercept or Type, or include a "
                         "multi-frame image beside others: build one per group of "
                         "presentation_groups()")
    layer = GraphicLayer(LAYER_NAME, order=1, description=LAYER_DESCRIPTION,
                         display_color=CIELabColor.from_rgb(*BOX_COLOUR))
    mine = {str(ds.SOPInstanceUID): [item for item in findings
                                     if item.source_sop_instance_uid == ds.SOPInstanceUID]
            for ds in sources}
    layouts = {str(ds.SOPInstanceUID): label_layout(
        ds.Columns, ds.Rows, [item.box for item in mine[str(ds.SOPInstanceUID)]],
        [item.label for item in mine[str(ds.SOPInstanceUID)]]) for ds in sources}
    # One displayed area serves every image: wide enough for the widest legend strip.
    canvas = tuple(max(math.ceil(layout.canvas[axis]) for layout in layouts.values())
                   for axis in (0, 1))
    annotations = [
        GraphicAnnotation(
            referenced_images=[ds],
            graphic_layer=layer,
            graphic_objects=[GraphicObject(GraphicTypeValues.POLYLINE, closed_box(item.box),
                                           AnnotationUnitsValues.PIXEL)
                             for item in mine[str(ds.SOPInstanceUID)]],
            text_objects=[_text(tag, ds, canvas) for tag in layouts[str(ds.SOPInstanceUID)].tags])
        for ds in sources if mine[str(ds.SOPInstanceUID)]]
    description = f"AI findings of {algorithm.name} {algorithm.version}"
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=sources,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=device.manufacturer,
        manufacturer_model_name=device.name,
        software_versions=device.software_version,
        device_serial_number=None,
        content_label=CONTENT_LABEL,
        content_description=(description if len(description) <= LONG_STRING_MAX
                             else "AI findings"),
        graphic_annotations=annotations or None,
        graphic_layers=[layer] if annotations else None,
        presentation_lut_transformation=PresentationLUTTransformation(
            presentation_lut_shape=LUT_SHAPES[Photometric(photometrics[0])]),
        series_description=str(SeriesDescription.PRESENTATION_STATE),
    )
    if canvas != (sources[0].Columns, sources[0].Rows):
        # PS3.3 C.10.4: the legend strip beside the image, as the Secondary Capture has it.
        gsps.DisplayedAreaSelectionSequence[0].DisplayedAreaBottomRightHandCorner = list(canvas)
    copy_body_part(gsps, sources[0])
    stamp_device(gsps, device)
    return gsps


def _text(tag: Tag, image: Dataset, canvas: tuple[int, int]) -> TextObject:
    """A label, numbered tag or legend line in the bounding box :func:`label_layout` gave it,
    in PIXEL units, without an anchor point (the box itself points at the finding).

    PIXEL coordinates must lie on the image (PS3.3 C.10.5; highdicom refuses others), so a
    line of a legend strip beside it is in DISPLAY units: a fraction of the displayed area,
    which then spans the image and the strip."""
    x1, y1, x2, y2 = tag.rect
    if x2 <= image.Columns and y2 <= image.Rows:
        units, box = AnnotationUnitsValues.PIXEL, (x1, y1, x2, y2)
    else:
        width, height = canvas
        units, box = AnnotationUnitsValues.DISPLAY, (x1 / width, y1 / height,
                                                     x2 / width, y2 / height)
    return TextObject(text_value=tag.text, units=units, bounding_box=box,
                      text_justification=TextJustificationValues.LEFT)
