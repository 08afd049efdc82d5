"""Receiving with dcmtk and pynetdicom as the senders: what a modality or PACS would see."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from sqlalchemy import select

from storage.audit import AuditEventId
from storage.models import Instance, Job
from tests.factories import SYNTAXES, dataset_bytes, study_files
from tests.integration.conftest import audit_events, node_database, wait_until
from tests.peers import REPO, echoscu, storescu


def content(path: Path) -> bytes:
    """The data set's encoded bytes; inflated for deflate, which dcmtk re-compresses on send."""
    data = dataset_bytes(path)
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax == "1.2.840.10008.1.2.1.99":
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    return data


def stored_instances(node) -> dict[str, Instance]:
    db = node_database(node)
    try:
        with db.session() as session:
            return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    finally:
        db.dispose()


def test_echo_succeeds_and_unknown_calling_ae_is_rejected_and_audited(start_node):
    node = start_node()

    assert echoscu(node.port).returncode == 0
    refused = echoscu(node.port, aet="INTRUDER")

    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    rejected = audit_events(node, "association-rejected")
    assert [(e.calling_ae_title, e.event_id) for e in rejected] == [
        ("INTRUDER", AuditEventId.SECURITY_ALERT)]
    assert "calling AE title not recognised" in rejected[0].message


def test_cli_echo_reports_the_status(start_node):
    node = start_node()
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "echo", "127.0.0.1", str(node.port),
         "--aet", "ECHOSCU", "--aec", "CXRNODE"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status 0x0000" in result.stdout


def test_known_ae_title_from_another_address_is_rejected(start_node):
    node = start_node(peers=[{"ae_title": "PYSCU", "hosts": ["127.0.0.2"]},
                             {"ae_title": "ECHOSCU", "hosts": ["127.0.0.1"]}])
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)

    from_wrong_host = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE",
                                   bind_address=("127.0.0.1", 0))
    from_allowed_host = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE",
                                     bind_address=("127.0.0.2", 0))

    assert from_wrong_host.is_rejected
    assert from_wrong_host.acceptor.primitive.diagnostic == 3  # calling AE not recognised
    assert from_allowed_host.is_established
    assert from_allowed_host.send_c_echo().Status == 0
    from_allowed_host.release()
    [rejection] = audit_events(node, "association-rejected")
    assert "PYSCU is not allowed from 127.0.0.1" in rejection.message


def test_wrong_called_ae_title_is_rejected(start_node):
    node = start_node()
    refused = echoscu(node.port, aec="NOTCXR")
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr


def test_twenty_instances_in_seven_transfer_syntaxes_arrive_unchanged(start_node, tmp_path):
    node = start_node()
    counts = {"explicit": 3, "implicit": 3, "deflated": 3, "jpeg-lossless": 3, "rle": 3,
              "jpeg-ls": 3, "jpeg2000": 2}
    sent: dict[str, Path] = {}
    for seed, (syntax, count) in enumerate(counts.items()):
        files = study_files(tmp_path / syntax, count, syntax=syntax, seed=seed)
        result = storescu(node.port, files, extra=SYNTAXES[syntax][2])
        assert result.returncode == 0, result.stderr
        for path in files:
            sent[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path

    rows = stored_instances(node)
    assert len(sent) == 20
    assert set(rows) == set(sent)
    for uid, source in sent.items():
        row = rows[uid]
        stored = node.data_dir / row.path
        source_syntax = pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert row.transfer_syntax_uid == source_syntax
        assert content(stored) == content(source), f"{source.name} changed in transit"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row.sha256
        assert row.size_bytes == stored.stat().st_size
    assert not list((node.data_dir / "incoming").iterdir())


def test_real_chest_radiograph_uncompressed_and_jpeg2000_are_stored(start_node, chest_cr):
    node = start_node()
    uncompressed, j2k = chest_cr["RG1_UNCR.dcm"], chest_cr["RG1_J2KR.dcm"]

    assert storescu(node.port, [uncompressed]).returncode == 0
    assert storescu(node.port, [j2k], extra=["-R", "-xv"]).returncode == 0

    rows = {row.transfer_syntax_uid: row for row in stored_instances(node).values()}
    assert set(rows) == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"}
    stored_plain = pydicom.dcmread(node.data_dir / rows["1.2.840.10008.1.2.1"].path)
    stored_j2k = pydicom.dcmread(node.data_dir / rows["1.2.840.10008.1.2.4.90"].path)
    assert stored_plain.Modality == "CR" and stored_plain.BodyPartExamined == "CHEST"
    assert np.array_equal(stored_plain.pixel_array, pydicom.dcmread(uncompressed).pixel_array)
    assert np.array_equal(stored_j2k.pixel_array, stored_plain.pixel_array)


def test_associations_over_the_limit_are_rejected_as_transient(start_node):
    node = start_node(dicom={"max_associations": 1})
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)

    first = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")
    second = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")

    assert first.is_established
    assert second.is_rejected
    assert second.acceptor.primitive.result == 2  # rejected-transient: retry later
    first.release()
    third = wait_until(lambda: _associate_if_accepted(ae, node.port))
    third.release()


def _associate_if_accepted(ae: AE, port: int):
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    return assoc if assoc.is_established else None


def test_low_disk_space_rejects_associations_as_transient(start_node):
    node = start_node(dicom={"min_free_disk_bytes": 10**18})
    result = echoscu(node.port)
    assert result.returncode != 0
    assert "Rejected Transient" in result.stdout + result.stderr
    [rejection] = audit_events(node, "association-rejected")
    assert "below min_free_disk_bytes" in rejection.message


def test_studies_command_lists_instances_and_job_state(start_node, tmp_path):
    node = start_node()
    files = study_files(tmp_path / "study", 3)
    assert storescu(node.port, files).returncode == 0
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    db = node_database(node)
    wait_until(lambda: _job_count(db) == 1)
    db.dispose()
    result = subprocess.run([sys.executable, "-m", "node.cli", "--config", str(node.config_path),
                             "studies"], cwd=REPO, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    [line] = [row for row in result.stdout.splitlines() if row.startswith(study_uid)]
    assert line.split()[2:5] == ["3", "complete", "1"]
    assert line.split()[-2:] == ["queued", "-"]  # the job, and no findings counted yet


def _job_count(db) -> int:
    with db.session() as session:
        return len(list(session.scalars(select(Job))))


@pytest.mark.parametrize("syntax", ["explicit"])
def test_a_sender_pausing_inside_an_association_keeps_the_study_open(start_node, tmp_path, syntax):
    """A study is not complete while an association is still sending to it."""
    node = start_node()
    files = study_files(tmp_path / "slow", 2, syntax=syntax)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")
    assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0
    db = node_database(node)
    time.sleep(2.5)  # longer than the quiet period (1 s), association still open
    assert _job_count(db) == 0
    assert assoc.send_c_store(pydicom.dcmread(files[1])).Status == 0
    assoc.release()
    wait_until(lambda: _job_count(db) == 1)
    db.dispose()


def test_an_idle_association_is_aborted_after_the_network_timeout(start_node):
    node = start_node(dicom={"network_timeout_seconds": 1})
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRNODE")
    assert assoc.is_established

    wait_until(lambda: assoc.is_aborted, timeout=10)
    [aborted] = wait_until(lambda: audit_events(node, "association-aborted"))
    assert aborted.calling_ae_title == "PYSCU"
    assert echoscu(node.port).returncode == 0
