"""The DX For Presentation dataset that holds a synthetic (or any test) radiograph."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
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
