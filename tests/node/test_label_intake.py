"""A labeller's SR is acknowledged after store + commit; its labels are read afterwards.

The node's listener runs in this process on a real socket, with the label intake loop
not started, so the test sees the state between the C-STORE answer and the intake; then
one step of the loop reads the queued report. Both database backends.
"""

from __future__ import annotations

import struct
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import select, update

from config.settings import Settings
from model.phantom import synthesize_case
from node.server import Node
from storage.intake_queue import claim_label_intakes
from storage.models import (
    AuditEvent,
    Instance,
    JobState,
    Label,
    LabelIntakeJob,
    utcnow,
)
from tests.factories import dataset_bytes
from tests.ports import free_port
from tests.training.test_labels import group, radiologist_report

PNEUMOTHORAX = ("SCT", "36118008", "Pneumothorax")
BOX = [[10, 20], [110, 20], [110, 90], [10, 90], [10, 20]]


@pytest.fixture
def node(tmp_path, database_url):
    settings = Settings.model_validate({
        "dicom": {"ae_title": "CXRNODE", "bind_address": "127.0.0.1", "port": free_port(),
                  "min_free_disk_bytes": 0,
                  "peers": [{"ae_title": t, "hosts": ["127.0.0.1"]} for t in ("MODALITY",
                                                                               "VIEWER")]},
        "storage": {"data_dir": str(tmp_path / "data"), "database_url": database_url},
        "labels": {"labeller_ae_titles": ["VIEWER"]},
    })
    node = Node(settings, receive=True, analyse=False)
    node.listener.start()  # the intake loop stays stopped: the test steps it
    yield node
    node.listener.stop()
    node.db.dispose()


def send(node: Node, calling: str, ds_or_path: pydicom.Dataset | Path, sop_class: str,
         syntax: str) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, syntax)
    association = ae.associate("127.0.0.1", node.listener.port, ae_title="CXRNODE")
    assert association.is_established
    status = association.send_c_store(ds_or_path)
    association.release()
    return int(status.Status)


def rows(node: Node, statement) -> list:
    with node.db.session() as session:
        return [tuple(row) for row in session.execute(statement).all()]


def stored_source(node: Node, tmp_path: Path) -> pydicom.Dataset:
    source = synthesize_case(1, 0, size_range=(256, 320)).dataset
    assert send(node, "MODALITY", source, source.SOPClassUID,
                source.file_meta.TransferSyntaxUID) == 0
    return source


def test_labeller_sr_is_acknowledged_queued_and_read_by_the_loop(node, tmp_path):
    source = stored_source(node, tmp_path)
    report = radiologist_report(source, [group(source, "PTX", PNEUMOTHORAX, "POLYLINE", BOX)])

    status = send(node, "VIEWER", report, report.SOPClassUID, report.file_meta.TransferSyntaxUID)

    # Answered with the report stored and queued, nothing read from it yet.
    assert status == 0
    assert rows(node, select(LabelIntakeJob.state, LabelIntakeJob.calling_ae_title,
                             Instance.sop_instance_uid).join(Instance)) == [
        (JobState.QUEUED, "VIEWER", report.SOPInstanceUID)]
    assert rows(node, select(Label.id)) == []

    assert node.label_intake.step() == 1

    assert rows(node, select(Label.label, Label.x1, Label.y1, Label.x2, Label.y2)) == [
        ("Pneumothorax", 10.0, 20.0, 110.0, 90.0)]
    assert rows(node, select(LabelIntakeJob.state)) == [(JobState.DONE,)]
    assert rows(node, select(AuditEvent.event_type).where(
        AuditEvent.event_type.like("labels-%"))) == [("labels-received",)]
    assert node.label_intake.step() == 0  # nothing left


def broken_report(report: pydicom.Dataset, path: Path) -> Path:
    """The report as a buggy writer might save it: a nested sequence that never ends.

    The first content item's Concept Name Code Sequence declares an undefined length with
    no delimiter, so the header reads fine and the content tree does not.
    """
    report.save_as(path, enforce_file_format=True)
    raw = bytearray(path.read_bytes())
    content = raw.find(b"\x40\x00\x30\xa7SQ")  # (0040,A730) Content Sequence
    concept_name = raw.find(b"\x40\x00\x43\xa0SQ", content)  # (0040,A043), inside it
    raw[concept_name + 8:concept_name + 12] = struct.pack("<L", 0xFFFFFFFF)
    path.write_bytes(raw)
    return path


def test_unreadable_labeller_sr_is_stored_acknowledged_and_audited(node, tmp_path):
    source = stored_source(node, tmp_path)
    report = radiologist_report(source, [group(source, "PTX", PNEUMOTHORAX, "POLYLINE", BOX)])
    broken = broken_report(report, tmp_path / "broken.dcm")

    status = send(node, "VIEWER", broken, report.SOPClassUID, report.file_meta.TransferSyntaxUID)

    assert status == 0
    [(path,)] = rows(node, select(Instance.path).where(
        Instance.sop_instance_uid == report.SOPInstanceUID))
    assert dataset_bytes(node.store.absolute(path)) == dataset_bytes(broken)  # as sent

    assert node.label_intake.step() == 1

    [(state, error)] = rows(node, select(LabelIntakeJob.state, LabelIntakeJob.error))
    assert state == JobState.FAILED and error
    [(message, calling, sop)] = rows(node, select(
        AuditEvent.message, AuditEvent.calling_ae_title, AuditEvent.sop_instance_uid)
        .where(AuditEvent.event_type == "labels-unreadable"))
    assert message.startswith("stored, but no labels taken:")
    assert (calling, sop) == ("VIEWER", report.SOPInstanceUID)
    assert rows(node, select(Label.id)) == []
    assert node.label_intake.step() == 0  # not retried: the report itself is broken


def test_a_report_whose_reader_died_is_read_again_then_given_up_and_audited(node, tmp_path):
    source = stored_source(node, tmp_path)
    report = radiologist_report(source, [group(source, "PTX", PNEUMOTHORAX, "POLYLINE", BOX)])
    assert send(node, "VIEWER", report, report.SOPClassUID,
                report.file_meta.TransferSyntaxUID) == 0
    max_attempts = node.settings.worker.max_attempts

    def die_while_reading() -> None:
        """Another process claims the report and is killed: its lease runs out."""
        assert claim_label_intakes(node.db, "elsewhere:1:label-intake:x", 60, 1, max_attempts)
        with node.db.session() as session:
            session.execute(update(LabelIntakeJob).values(
                lease_expires_at=utcnow() - timedelta(seconds=1)))

    die_while_reading()
    assert node.label_intake.step() == 1  # taken over
    assert rows(node, select(LabelIntakeJob.state, LabelIntakeJob.attempts)) == [
        (JobState.DONE, 2)]
    assert len(rows(node, select(Label.id))) == 1

    with node.db.session() as session:  # the same report queued again, then readers die
        session.execute(update(LabelIntakeJob).values(state=JobState.QUEUED, attempts=0))
    for _ in range(max_attempts):
        die_while_reading()
    node.label_intake.step()

    assert rows(node, select(LabelIntakeJob.state)) == [(JobState.FAILED,)]
    [(message,)] = rows(node, select(AuditEvent.message).where(
        AuditEvent.event_type == "labels-unreadable"))
    assert f"expired after {max_attempts} attempts" in message
