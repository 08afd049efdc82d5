"""The eligibility gate: frontal chest radiographs in, everything else out with a reason."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from model.phantom import dx_dataset
from node.gate import DX_FOR_PROCESSING, check_eligibility


def real(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} from the PyPI package pydicom-data is not installed")
    return pydicom.dcmread(path)


def chest(**changes) -> pydicom.Dataset:
    ds = dx_dataset(np.full((64, 64), 1000, dtype=np.uint16) + np.arange(64, dtype=np.uint16))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_real_chest_cr_and_a_generated_pa_chest_are_eligible():
    assert check_eligibility(real("RG1_UNCR.dcm")).eligible
    assert check_eligibility(real("RG1_J2KR.dcm")).eligible
    assert check_eligibility(chest()) == check_eligibility(chest(ViewPosition="AP"))
    assert check_eligibility(chest()).eligible


@pytest.mark.parametrize(("dataset", "reason"), [
    (lambda: real("693_UNCR.dcm"), "CT"),
    (lambda: real("eCT_Supplemental.dcm"), "is not a CR or DX radiograph"),
    (lambda: real("RG3_UNCR.dcm"), "body part EXTREMITY is not the chest"),
    (lambda: chest(ViewPosition="LL"), "view LL is lateral"),
    (lambda: chest(ViewPosition=None, SeriesDescription="CHEST LAT"), "lateral"),
    (lambda: chest(PresentationIntentType="FOR PROCESSING"), "FOR PROCESSING"),
    (lambda: chest(SOPClassUID=DX_FOR_PROCESSING), "FOR PROCESSING"),
    (lambda: chest(BodyPartExamined=None, AnatomicRegionSequence=None, StudyDescription="XR",
                   SeriesDescription="KNEE"), "no chest-like study or series description"),
    (lambda: chest(SamplesPerPixel=3), "SamplesPerPixel"),
])
def test_ineligible_images_are_skipped_with_their_reason(dataset, reason):
    result = check_eligibility(dataset())
    assert not result.eligible
    assert reason in result.reason


def test_absent_body_part_with_a_chest_description_is_eligible():
    ds = chest(BodyPartExamined=None, AnatomicRegionSequence=None, StudyDescription="XR THORAX")
    assert check_eligibility(ds).eligible
