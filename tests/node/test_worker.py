"""The worker in-process: gate, detector, findings rows, result objects and outbox rows.

Images are registered through the node's own Ingest (as the listener does) and the
bundled model runs on the CPU, so what is checked here is what a site would see in its
database after a study was analysed.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select, update

from config.settings import Settings
from model import BUNDLED_MODEL
from model.detector import Detector
from node.completion import complete_quiet_studies
from node.ingest import ActiveStudies, Ingest, StoreRequest
from node.reporting import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR
from node.worker import Worker
from storage.files import DicomFileStore
from storage.jobs import claim_jobs
from storage.models import (
    AuditEvent,
    FindingRecord,
    ImageAnalysis,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Transfer,
    utcnow,
)
from tests.factories import write_chest

SEED = 7


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(BUNDLED_MODEL, device="cpu")


def node_settings(tmp_path, database_url, **sections) -> Settings:
    config = {"storage": {"data_dir": str(tmp_path / "data"), "database_url": database_url},
              "worker": {"device": "cpu"},
              "destinations": [{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                                "port": 11113}]}
    config.update(sections)
    return Settings.model_validate(config)


class Site:
    """The node's storage and a worker, fed files the way the listener feeds them."""

    def __init__(self, settings: Settings, database, detector: Detector) -> None:
        self.db = database
        self.store = DicomFileStore(settings.storage.data_dir)
        self.ingest = Ingest(settings, database, self.store, ActiveStudies())
        self.worker = Worker(settings, database, self.store, detector)

    def receive(self, *paths) -> None:
        for path in paths:
            ds = pydicom.dcmread(path)
            incoming = self.store.new_incoming(max_bytes=1 << 30)
            incoming.write(path.read_bytes())  # the listener writes a whole Part 10 file
            result = self.ingest.store_instance(incoming, StoreRequest(
                str(ds.SOPClassUID), str(ds.SOPInstanceUID), "STORESCU", "CXRNODE",
                "127.0.0.1"), set())
            assert result.status == 0, result.message
        complete_quiet_studies(self.db, 0, frozenset())

    def rows(self, model, *where):
        with self.db.session() as session:
            return list(session.scalars(select(model).where(*where).order_by(model.id)))


def text_values(node) -> list[str]:
    """Every TEXT content item of an SR tree, as a viewer would show them."""
    found = []
    for item in node.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found += text_values(item)
    return found


@pytest.fixture
def site(tmp_path, database, database_url, detector) -> Site:
    return Site(node_settings(tmp_path, database_url), database, detector)


def test_analysed_study_stores_findings_and_queues_every_result(site, tmp_path, detector):
    path = write_chest(tmp_path / "in", SEED, 1)
    site.receive(path)

    assert site.worker.run_once() == 1
    [job] = site.rows(Job)
    assert job.state == JobState.DONE
    [analysis] = site.rows(ImageAnalysis)
    assert analysis.analysed and analysis.model_version == detector.card.version

    expected = detector.predict([pydicom.dcmread(path)])[0]
    findings = site.rows(FindingRecord)
    assert [(f.label, round(f.score, 4)) for f in findings] == \
        [(d.label, round(d.score, 4)) for d in expected]
    for finding, detection in zip(findings, expected, strict=True):
        assert (finding.x1, finding.y1, finding.x2, finding.y2) == pytest.approx(detection.box)
        assert finding.code_value == detection.finding.code

    results = site.rows(ResultObject)
    assert sorted(r.kind for r in results) == [ResultKind.GSPS, ResultKind.SC, ResultKind.SR]
    source = pydicom.dcmread(path)
    for result in results:
        written = pydicom.dcmread(site.store.absolute(result.path))
        assert written.SOPInstanceUID == result.sop_instance_uid
        assert written.StudyInstanceUID == source.StudyInstanceUID
        assert written.DeviceUID == site.ingest.settings.device_uid
    sr = next(r for r in results if r.kind == ResultKind.SR)
    assert sr.sop_class_uid == COMPREHENSIVE_3D_SR
    assert {t.destination for t in site.rows(Transfer)} == {"PACS"}
    assert len(site.rows(Transfer)) == 3

    assert site.worker.run_once() == 0  # nothing is analysed twice


def test_late_image_reruns_and_new_report_supersedes_the_old(site, tmp_path):
    first = write_chest(tmp_path / "in", SEED, 2)
    site.receive(first)
    site.worker.run_once()
    source = pydicom.dcmread(first)
    late = write_chest(tmp_path / "late", SEED, 2, SOPInstanceUID=pydicom.uid.generate_uid(),
                       InstanceNumber=2)
    site.receive(late)

    assert site.worker.run_once() == 1
    reports = site.rows(ResultObject, ResultObject.kind == ResultKind.SR)
    assert len(reports) == 2
    newer = pydicom.dcmread(site.store.absolute(reports[1].path))
    [predecessor] = newer.PredecessorDocumentsSequence
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == reports[0].sop_instance_uid
    assert newer.StudyInstanceUID == source.StudyInstanceUID
    assert len(site.rows(ImageAnalysis)) == 3  # one image, then both


def test_gate_skips_with_reasons_and_reports_not_analysed(site, tmp_path):
    """The CT and extremity CR of pydicom-data, a lateral, a FOR PROCESSING image."""
    real = [get_testdata_file(name, download=False) for name in ("693_UNCR.dcm", "RG3_UNCR.dcm")]
    assert all(real), "pydicom-data (a test dependency) provides 693_UNCR.dcm and RG3_UNCR.dcm"
    lateral = write_chest(tmp_path / "in", SEED, 3, ViewPosition="LL")
    for_processing = write_chest(tmp_path / "in", SEED, 6,
                                 SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1.1",
                                 PresentationIntentType="FOR PROCESSING")
    site.receive(lateral, for_processing, *map(Path, real))

    assert site.worker.run_once() + site.worker.run_once() + site.worker.run_once() \
        + site.worker.run_once() == 4
    analyses = site.rows(ImageAnalysis)
    assert len(analyses) == 4 and not any(a.analysed for a in analyses)
    reasons = " | ".join(sorted(a.skip_reason for a in analyses))
    assert "view LL is lateral" in reasons
    assert "FOR PROCESSING" in reasons
    assert "CT, SOP class 1.2.840.10008.5.1.4.1.1.2 is not a CR or DX" in reasons
    assert "is not the chest" in reasons  # the extremity CR
    assert site.rows(FindingRecord) == []
    reports = site.rows(ResultObject)
    assert [r.kind for r in reports] == [ResultKind.NOT_ANALYSED_SR] * 4
    for report in reports:
        texts = text_values(pydicom.dcmread(site.store.absolute(report.path)))
        assert any(text.startswith("Not analysed: ") for text in texts), texts


def test_destination_kinds_and_comprehensive_sr_fallback(tmp_path, database, database_url,
                                                         detector):
    settings = node_settings(tmp_path, database_url, destinations=[
        {"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": 11113,
         "send_gsps": False, "send_secondary_capture": False, "sr_storage": "comprehensive"},
        {"name": "VIEWER", "ae_title": "VIEWER", "host": "127.0.0.1", "port": 11114,
         "send_sr": False, "send_gsps": True, "send_secondary_capture": False}])
    site = Site(settings, database, detector)
    site.receive(write_chest(tmp_path / "in", SEED, 4))

    site.worker.run_once()

    with database.session() as session:
        sent = session.execute(select(Transfer.destination, ResultObject.kind,
                                      ResultObject.sop_class_uid)
                               .join(ResultObject).order_by(Transfer.destination)).all()
    assert sent == [("PACS", ResultKind.SR, COMPREHENSIVE_SR),
                    ("VIEWER", ResultKind.GSPS, "1.2.840.10008.5.1.4.1.1.11.1")]


def test_job_taken_over_after_lease_expiry_is_published_once(site, tmp_path):
    site.receive(write_chest(tmp_path / "in", SEED, 5))
    [prepared] = site.worker.prepare()
    with site.db.session() as session:  # our worker stalls past its lease ...
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert claim_jobs(site.db, "other-worker", 60, 1, 3) == [prepared.job_id]

    assert site.worker.run_once([prepared]) == 0  # ... and must not publish

    assert site.rows(ResultObject) == []
    assert site.rows(FindingRecord) == []
    assert not list((site.store.data_dir / "results").rglob("*.dcm"))
    with site.db.session() as session:
        assert session.scalar(select(func.count(Transfer.id))) == 0


def test_an_active_model_that_cannot_load_is_reported_and_the_old_one_kept(site, tmp_path,
                                                                           detector):
    from training.registry import ensure_active, promote, register

    with site.db.session() as session:
        bundled = ensure_active(session, BUNDLED_MODEL)
        broken_dir = tmp_path / "broken"
        shutil.copytree(BUNDLED_MODEL, broken_dir)
        card = json.loads((broken_dir / "card.json").read_text())
        card["version"] = "9.9.9-broken"
        (broken_dir / "card.json").write_text(json.dumps(card))
        broken = register(session, broken_dir)
        promote(session, broken.id, "test", override_reason="a test of a damaged model")
    (broken_dir / "weights.pt").write_bytes(b"not weights")  # damaged after registration
    site.worker.model_version_id = bundled.id

    assert not site.worker.follow_active_model()

    assert site.worker.detector.card.version == detector.card.version
    with site.db.session() as session:
        [event] = session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "model-load-failed")).all()
    assert "cannot be loaded" in event.message and detector.card.version in event.message
