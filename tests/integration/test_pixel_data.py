"""Pixel Data shorter than the image attributes say is refused with 0xC000 at the C-STORE.

Before, such an image was acknowledged 0x0000 and only the worker later reported it
"not analysed"; the sender, who could still resend, never heard.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from sqlalchemy import select

from node.statuses import StoreStatus
from storage.models import Instance
from tests.factories import in_syntax, write_dx
from tests.integration.conftest import audit_events, node_database


def send(port: int, ds: pydicom.Dataset):
    """One C-STORE of ``ds`` as it is, in its own transfer syntax, by pynetdicom."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    assert association.is_established
    status = association.send_c_store(ds)
    association.release()
    return status


def stored_instances(node) -> list[str]:
    db = node_database(node)
    try:
        with db.session() as session:
            return list(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        db.dispose()


def files_under(node, folder: str) -> list[Path]:
    return [p for p in (node.data_dir / folder).rglob("*") if p.is_file()]


def test_half_pixel_data_is_refused_with_the_lengths_and_a_whole_image_is_stored(
        start_node, tmp_path):
    node = start_node()
    whole = pydicom.dcmread(write_dx(tmp_path / "whole.dcm", rows=256, columns=256, seed=1))
    truncated = pydicom.dcmread(write_dx(tmp_path / "cut.dcm", rows=256, columns=256, seed=2))
    truncated.PixelData = truncated.PixelData[: 256 * 256]  # half of 256 x 256 x 16 bits

    refused = send(node.port, truncated)
    accepted = send(node.port, whole)

    assert refused.Status == StoreStatus.CANNOT_UNDERSTAND == 0xC000
    assert refused.ErrorComment == "Pixel Data is 65536 bytes; attributes require 131072"
    [event] = audit_events(node, "instance-refused")
    assert "0xC000" in event.message and "65536" in event.message and "131072" in event.message
    assert "Rows 256 x Columns 256" in event.message
    assert event.calling_ae_title == "PYSCU"
    assert accepted.Status == StoreStatus.SUCCESS
    assert stored_instances(node) == [whole.SOPInstanceUID]
    assert [p.name for p in files_under(node, "dicom")] == [f"{whole.SOPInstanceUID}.dcm"]
    assert files_under(node, "incoming") == []


def test_compressed_pixel_data_with_a_cut_fragment_is_refused(start_node, tmp_path):
    node = start_node()
    source = write_dx(tmp_path / "plain.dcm", rows=256, columns=256, seed=3)
    whole = pydicom.dcmread(in_syntax(source, tmp_path / "j2k.dcm", "jpeg2000"))
    broken = pydicom.dcmread(tmp_path / "j2k.dcm")
    broken.SOPInstanceUID = pydicom.uid.generate_uid()
    # The fragment item still declares its full length; half of its bytes are gone.
    encapsulated = bytes(broken.PixelData)
    broken.PixelData = encapsulated[: len(encapsulated) // 2]
    assert broken.file_meta.TransferSyntaxUID == JPEG2000Lossless

    refused = send(node.port, broken)
    accepted = send(node.port, whole)

    assert refused.Status == StoreStatus.CANNOT_UNDERSTAND
    assert refused.ErrorComment.startswith("Pixel Data fragments cut:")
    [event] = audit_events(node, "instance-refused")
    assert "encapsulated fragment" in event.message
    assert accepted.Status == StoreStatus.SUCCESS
    assert stored_instances(node) == [whole.SOPInstanceUID]
    assert files_under(node, "incoming") == []
