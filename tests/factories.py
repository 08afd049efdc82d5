"""Test DICOM files: small synthetic radiographs in every transfer syntax a sender might use.

Compressed variants are made with dcmtk's own converters (and pydicom's JPEG 2000
encoder), so what the tests send is what a real modality or PACS would send.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless, generate_uid

from model.phantom import dx_dataset
from tests.peers import require_tool

# name -> (Transfer Syntax UID, converter command or None, storescu proposal flags)
SYNTAXES: dict[str, tuple[str, list[str] | None, list[str]]] = {
    "explicit": ("1.2.840.10008.1.2.1", None, []),
    "implicit": ("1.2.840.10008.1.2", ["dcmconv", "+ti"], ["-R", "-xi"]),
    "deflated": ("1.2.840.10008.1.2.1.99", ["dcmconv", "+td"], ["-R", "-xd"]),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "+e1"], ["-R", "-xs"]),
    "rle": ("1.2.840.10008.1.2.5", ["dcmcrle"], ["-R", "-xr"]),
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", ["dcmcjpls", "+el"], ["-R", "-xt"]),
    "jpeg2000": (JPEG2000Lossless, None, ["-R", "-xv"]),
}


def write_dx(path: Path, *, rows: int = 128, columns: int = 128, seed: int = 0,
             study_uid: str | None = None, series_uid: str | None = None,
             sop_instance_uid: str | None = None, device_uid: str | None = None,
             instance_number: int = 1) -> Path:
    """A small DX For Presentation file with smooth, seeded pixels (compresses well)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    pixels = (2000 + 800 * np.sin(x / 9.0 + seed) * np.cos(y / 13.0)
              + rng.integers(0, 50, size=(rows, columns))).astype(np.uint16)
    ds = dx_dataset(pixels, study_uid=study_uid, series_uid=series_uid,
                    sop_instance_uid=sop_instance_uid, instance_number=instance_number)
    if device_uid:
        ds.DeviceUID = device_uid
    ds.save_as(path, enforce_file_format=True)
    return path


def in_syntax(source: Path, target: Path, syntax: str) -> Path:
    """Write ``source`` re-encoded in the named transfer syntax (see SYNTAXES)."""
    uid, converter, _ = SYNTAXES[syntax]
    if syntax == "jpeg2000":
        ds = pydicom.dcmread(source)
        ds.compress(uid, encoding_plugin="pylibjpeg")
        ds.save_as(target, enforce_file_format=True)
    elif converter is None:
        target.write_bytes(source.read_bytes())
    else:
        command = [require_tool(converter[0]), *converter[1:], str(source), str(target)]
        subprocess.run(command, check=True, capture_output=True)
    written = pydicom.dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert written == uid, f"{syntax}: wrote {written}, expected {uid}"
    return target


def study_files(directory: Path, count: int, *, syntax: str = "explicit", seed: int = 0,
                study_uid: str | None = None, device_uid: str | None = None) -> list[Path]:
    """``count`` instances of one study and series, in one transfer syntax."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    files = []
    for index in range(count):
        plain = write_dx(directory / f"plain-{seed}-{index}.dcm", seed=seed * 1000 + index,
                         study_uid=study_uid, series_uid=series_uid, device_uid=device_uid,
                         instance_number=index + 1)
        if syntax == "explicit":
            files.append(plain)
        else:
            files.append(in_syntax(plain, directory / f"{syntax}-{seed}-{index}.dcm", syntax))
            plain.unlink()
    return files


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file, after preamble and File Meta Information.

    Reads the (0002,0000) group length that PS3.10 7.1 requires, so two files with the
    same data set compare equal whatever their File Meta Information says.
    """
    data = path.read_bytes()
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path} does not start with a File Meta Information group length")
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def write_chest(directory: Path, seed: int, index: int, *, size: tuple[int, int] = (320, 384),
                **attributes: object) -> Path:
    """A synthetic chest radiograph (its own study) as a file; ``attributes`` override tags."""
    from model.phantom import synthesize_case

    ds = synthesize_case(seed, index, size_range=size).dataset
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if "file_meta" in ds.__dict__ or hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"chest-{seed}-{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
