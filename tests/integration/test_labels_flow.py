"""Radiologist SRs over C-STORE become labels; other SRs do not; none re-starts analysis."""

from __future__ import annotations

import subprocess
from io import BytesIO

import pydicom
from pynetdicom import AE
from sqlalchemy import select

from model.phantom import synthesize_case
from model.vocabulary import DEFAULT_FINDINGS
from node.results import Algorithm, ImageFinding, ProducingDevice, build_measurement_report
from storage.models import Job, JobState, Label, LabelBatch, LabelIntakeJob
from tests.integration.conftest import audit_events, node_database, wait_until
from tests.peers import CXR_NODE, REPO, storescu
from tests.training.test_labels import group, normal_group, radiologist_report

PNEUMOTHORAX = ("SCT", "36118008", "Pneumothorax")
PNEUMONIA = ("SCT", "233604007", "Pneumonia")


def send(port: int, ds: pydicom.Dataset, calling: str) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    assert association.is_established
    status = association.send_c_store(ds)
    association.release()
    return int(status.Status)


def rows(node, statement) -> list:
    db = node_database(node)
    try:
        with db.session() as session:
            return list(session.execute(statement).all())
    finally:
        db.dispose()


def test_radiologist_sr_sent_over_c_store_becomes_labels(start_node, tmp_path):
    node = start_node(peers=[{"ae_title": t, "hosts": ["127.0.0.1"]}
                             for t in ("STORESCU", "VIEWER", "OTHERAI")],
                      labels={"labeller_ae_titles": ["VIEWER"]})
    source = synthesize_case(1, 0, size_range=(256, 320)).dataset
    image = tmp_path / "image.dcm"
    source.save_as(image, enforce_file_format=True)
    assert storescu(node.port, [image]).returncode == 0
    wait_until(lambda: rows(node, select(Job.id)), timeout=30)

    report = radiologist_report(source, [
        group(source, "PTX", PNEUMOTHORAX, "POLYLINE",
              [[10, 20], [110, 20], [110, 90], [10, 90], [10, 20]]),
        group(source, "Pneumonia", PNEUMONIA, "POLYLINE",
              [[30, 40], [60, 40], [60, 70], [30, 70], [30, 40]])])
    assert send(node.port, report, "VIEWER") == 0

    event = wait_until(lambda: audit_events(node, "labels-received"), timeout=30)[0]
    labels = rows(node, select(Label.label, Label.code_value, Label.x1, Label.y1, Label.x2,
                               Label.y2, LabelBatch.labeller, LabelBatch.source)
                  .join(LabelBatch).order_by(Label.id))
    assert [tuple(r) for r in labels] == [
        ("Pneumothorax", "36118008", 10.0, 20.0, 110.0, 90.0, "Doe^Jane", "sr"),
        (None, "233604007", 30.0, 40.0, 60.0, 70.0, "Doe^Jane", "sr")]
    assert "233604007" in event.message and "outside the vocabulary" in event.message
    assert len(rows(node, select(Job.id))) == 1  # the report did not re-open the study

    # A labeller's later "normal" reading supersedes the first, which stays as history.
    assert send(node.port, radiologist_report(source, [normal_group(source)]), "VIEWER") == 0
    wait_until(lambda: len(audit_events(node, "labels-received")) == 2, timeout=30)
    batches = rows(node, select(LabelBatch.id, LabelBatch.superseded_at)
                   .order_by(LabelBatch.id))
    assert batches[0][1] is not None and batches[1][1] is None
    current = rows(node, select(Label.normal).where(Label.batch_id == batches[1][0]))
    assert [tuple(r) for r in current] == [(True,)]


def test_another_systems_sr_is_stored_but_not_taken_as_labels(start_node, tmp_path):
    node = start_node(peers=[{"ae_title": t, "hosts": ["127.0.0.1"]}
                             for t in ("STORESCU", "OTHERAI")])
    source = synthesize_case(1, 1, size_range=(256, 320)).dataset
    other_ai = build_measurement_report(
        [source], [ImageFinding(str(source.SOPInstanceUID), DEFAULT_FINDINGS[0], 0.9,
                                (10.0, 10.0, 50.0, 50.0))],
        ProducingDevice("1.2.3.4.5", "other-ai", "Other vendor", "1.0"), Algorithm("x", "1"))
    other_ai = pydicom.dcmread(BytesIO(_encode(other_ai)))

    assert send(node.port, other_ai, "OTHERAI") == 0

    wait_until(lambda: audit_events(node, "instance-received"), timeout=30)
    # The intake read it (after the C-STORE answer) and took nothing from it.
    wait_until(lambda: rows(node, select(LabelIntakeJob.state)) == [(JobState.DONE,)],
               timeout=30)
    assert audit_events(node, "labels-received") == []
    assert rows(node, select(Label.id)) == []
    assert rows(node, select(Job.id)) == []  # an SR alone never queues an analysis


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def test_nih_box_list_import_matches_by_image_index_and_is_all_or_nothing(start_node,
                                                                            tmp_path):
    node = start_node(labels={"match_attribute": "ImageComments"})
    source = synthesize_case(1, 2, size_range=(256, 320)).dataset
    source.ImageComments = "00000013_005.png"  # the NIH image a site converted to DICOM
    image = tmp_path / "image.dcm"
    source.save_as(image, enforce_file_format=True)
    assert storescu(node.port, [image]).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(NIH_HEADER + "00000013_005.png,Effusion,10,20,30,40\n"
                   "00000013_005.png,Nodule,5,5,-3,4\n"
                   "00000013_005.png,Mass,x,5,3,4\n")
    good = tmp_path / "BBox_List_2017.csv"
    good.write_text(NIH_HEADER + "00000013_005.png,Effusion,10,20,30,40\n"
                    "00000099_000.png,Nodule,5,5,3,4\n")

    def import_labels(path):
        return subprocess.run([*CXR_NODE, "--config", str(node.config_path), "labels",
                               "import", str(path), "--format", "nih"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    refused = import_labels(bad)
    assert refused.returncode == 1
    assert "line 3" in refused.stderr and "line 4" in refused.stderr
    assert "nothing imported" in refused.stderr
    assert rows(node, select(Label.id)) == []

    accepted = import_labels(good)
    assert accepted.returncode == 0, accepted.stderr
    assert "1 labels on 1 studies" in accepted.stdout
    assert "00000099_000.png" in accepted.stdout  # reported: the node holds no such image
    labels = rows(node, select(Label.label, Label.x1, Label.y1, Label.x2, Label.y2))
    assert [tuple(r) for r in labels] == [("Pleural effusion", 10.0, 20.0, 40.0, 60.0)]
    [event] = audit_events(node, "labels-imported")
    assert event.user_name.startswith("cli:")  # the person who ran the command
    assert event.message.startswith("nih file BBox_List_2017.csv (sha256 ")
