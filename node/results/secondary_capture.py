"""The findings burned into a Secondary Capture, for viewers that show neither SR nor GSPS.

The pixels are the displayed source (window applied, MONOCHROME1 inverted) with the boxes and
labels of :func:`node.results.overlay.render_overlay`, in 8-bit RGB so the amber boxes stand
apart from every grey level; where the boxes leave no room for the legend, the image is
widened by a strip that holds it. Sources longer than 2048 px on a side are shrunk to 2048 px:
enough to see where a finding is, which is all this image is for; it says so in its Series
Description and Burned In Annotation YES (PS3.3 C.7.6.1.1.4) tells any de-identifier
that text is in the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.results.common import (
    Algorithm,
    ImageFinding,
    ProducingDevice,
    SeriesDescription,
    check_findings,
    check_producer,
    check_sources,
    copy_body_part,
    stamp_device,
)
from node.results.overlay import MAX_SIDE, output_shape, render_overlay

# highdicom requires an orientation for a PATIENT image before it copies the source's own.
_PLACEHOLDER_ORIENTATION = ("L", "F")


def build_secondary_capture(
    source: Dataset,
    findings_on_this_image: Sequence[ImageFinding],
    device: ProducingDevice,
    algorithm: Algorithm,
    *,
    series_number: int = 9003,
    instance_number: int = 1,
) -> Dataset:
    """An RGB Secondary Capture of ``source`` with its findings burned in.

    Kept from the source where the SC Image IOD has room (PS3.3 A.8.1): patient and study,
    Patient Orientation (the rendering neither flips nor rotates), Pixel Spacing scaled by the
    downsampling when the source has a calibrated one (Imager Pixel Spacing, at the detector,
    has no place in this IOD), and a Source Image Sequence reference to the source.
    """
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a Dataset, got {type(source).__name__}")
    (source,) = check_sources([source])
    check_producer(device, algorithm)
    findings = check_findings([source], findings_on_this_image)
    pixels = render_overlay(source, findings, max_side=MAX_SIDE)
    rows, columns = output_shape(source.Rows, source.Columns)  # the image, less any strip
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        pixel_spacing=_scaled_pixel_spacing(source, rows, columns),
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=str(SeriesDescription.SECONDARY_CAPTURE),
        manufacturer_model_name=device.name,
        software_versions=device.software_version,
    )
    # Type 2 (PS3.3 C.7.6.1): the source's own value, or empty when it has none.
    sc.PatientOrientation = source.get("PatientOrientation") or ""
    sc.copy_patient_and_study_information(source)
    sc.ConversionType = "WSD"  # workstation rendering (PS3.3 C.8.6.1), not a digitised image
    sc.BurnedInAnnotation = "YES"
    shrunk = (rows, columns) != (source.Rows, source.Columns)
    sc.DerivationDescription = (
        f"Displayed source pixels (VOI window applied, MONOCHROME1 inverted) with the boxes "
        f"and probabilities of {algorithm.name} {algorithm.version} burned in"
        + (f"; downsampled from {source.Columns} x {source.Rows}" if shrunk else "")
        + ("; legend in a strip on the right" if pixels.shape[1] > columns else "")
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    copy_body_part(sc, source)
    stamp_device(sc, device)
    return sc


def _scaled_pixel_spacing(source: Dataset, rows: int,
                          columns: int) -> tuple[float, float] | None:
    """Pixel Spacing (row, column, mm) of the rendering, or None when the source has no
    usable one (absent, or zero as some CR plates write)."""
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or not all(float(v) > 0 for v in spacing):
        return None
    return (float(spacing[0]) * source.Rows / rows, float(spacing[1]) * source.Columns / columns)
