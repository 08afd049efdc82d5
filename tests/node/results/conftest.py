"""Sources, findings and a validating writer shared by the result-object tests."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from model.phantom import synthesize_case
from model.vocabulary import DEFAULT_FINDINGS
from node.results import Algorithm, ImageFinding, ProducingDevice

DEVICE = ProducingDevice(uid="1.2.826.0.1.3680043.8.498.20240101", name="cxr-node",
                         manufacturer="cxr-node project", software_version="0.1.0")
ALGORITHM = Algorithm(name="cxr-detector-nih7", version="2024.1")
FINDINGS = {finding.label: finding for finding in DEFAULT_FINDINGS}
SEED = 11
SMALL = (256, 320)


def findings_of(case) -> list[ImageFinding]:
    """The phantom's drawn boxes as detections, with distinct scores (0.873, 0.764, ...)."""
    return [ImageFinding(case.dataset.SOPInstanceUID, FINDINGS[box.label],
                         round(0.873 - 0.109 * i, 3), (box.x1, box.y1, box.x2, box.y2))
            for i, box in enumerate(case.boxes)]


@pytest.fixture(scope="session")
def phantom_cases() -> dict[str, object]:
    """The first synthetic case with findings of each polarity."""
    cases: dict[str, object] = {}
    for index in range(200):
        case = synthesize_case(SEED, index, size_range=SMALL)
        if case.boxes:
            cases.setdefault(case.dataset.PhotometricInterpretation, case)
        if len(cases) == 2:
            return cases
    raise AssertionError("no MONOCHROME1 and MONOCHROME2 cases with findings in 200 tries")


@pytest.fixture(params=["MONOCHROME1", "MONOCHROME2"])
def phantom(request, phantom_cases) -> tuple[Dataset, list[ImageFinding]]:
    """(source, its findings) for each polarity; a fresh copy that a test may change."""
    case = phantom_cases[request.param]
    return copy.deepcopy(case.dataset), findings_of(case)


@pytest.fixture
def rg1(chest_cr) -> tuple[Dataset, list[ImageFinding]]:
    """The real MONOCHROME1 chest CR (1955 x 1841) with a nodule and an enlarged heart."""
    ds = pydicom.dcmread(chest_cr["RG1_UNCR.dcm"])
    return ds, [
        ImageFinding(ds.SOPInstanceUID, FINDINGS["Nodule"], 0.634, (1000.5, 500.0, 1200.0, 700.25)),
        ImageFinding(ds.SOPInstanceUID, FINDINGS["Cardiomegaly"], 0.91,
                     (600.0, 1000.0, 1400.0, 1600.0)),
    ]


def second_image(ds: Dataset, uid: str) -> Dataset:
    """Another image of the same series (a lateral, say): same pixels, its own SOP Instance."""
    other = copy.deepcopy(ds)
    other.SOPInstanceUID = uid
    other.file_meta.MediaStorageSOPInstanceUID = uid
    other.InstanceNumber = 2
    return other


@pytest.fixture
def write_verified(tmp_path: Path, tool) -> Callable[[Dataset, str], Dataset]:
    """``write_verified(ds, name)``: save as a DICOM file, check it with dciodvfy (no line
    may start with "Error"), and return what pydicom reads back."""
    dciodvfy = tool("dciodvfy")

    def write(ds: Dataset, name: str) -> Dataset:
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                timeout=120, check=False)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy found errors in {name}:\n{report}"
        return pydicom.dcmread(path)

    return write
