"""Studies as sites send them: several images per series that differ in size or polarity, views
the gate skips beside views it reads, and jobs that fail for good.

Each study goes through the node's own Ingest and the bundled model on the CPU, as in
test_worker.py; what is checked is what reaches the outbox, i.e. what the PACS will get:
one SR for the study, one GSPS per group of images that one presentation state can hold,
one SC per analysed image, each valid for dciodvfy; and, when the analysis fails for good,
an SR that says "Not analysed" and why.
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from model import BUNDLED_MODEL
from model.detector import Detector
from model.phantom import synthesize_case
from node import reporting
from storage.jobs import claim_jobs
from storage.models import (
    AuditEvent,
    ImageAnalysis,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Transfer,
    utcnow,
)
from tests.node.test_worker import Site, node_settings, text_values

SEED = 23
GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
# Which objects a study gets does not depend on the database (test_worker.py runs the same
# worker on both); the studies that run the model run on SQLite alone, to keep the suite short.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(BUNDLED_MODEL, device="cpu")


def make_site(tmp_path, database, database_url, detector, **worker) -> Site:  # noqa: ANN001
    settings = node_settings(tmp_path, database_url, worker={"device": "cpu", **worker})
    return Site(settings, database, detector)


@pytest.fixture
def site(tmp_path, database, database_url, detector) -> Site:
    return make_site(tmp_path, database, database_url, detector)


class Study:
    """One patient's study, written image by image as a modality would send it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.uid = generate_uid()
        self.count = 0
        self.first: pydicom.Dataset | None = None

    def image(self, series_uid: str, *, size: int, photometric: str = "MONOCHROME2",
              view: str = "PA") -> Path:
        """A synthetic chest image of ``size`` x ``size`` px in series ``series_uid``."""
        self.count += 1
        ds = synthesize_case(SEED, self.count, size_range=(size, size)).dataset
        if ds.PhotometricInterpretation != photometric:  # same anatomy, other polarity
            top = 2 ** int(ds.BitsStored) - 1
            ds.PixelData = (top - ds.pixel_array).astype(np.uint16).tobytes()
            ds.PhotometricInterpretation = photometric
            ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
            ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        if self.first is None:
            self.first = ds
        for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                        "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
            setattr(ds, keyword, self.first.get(keyword))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = self.count
        ds.ViewPosition = view
        ds.SeriesDescription = f"CHEST {view}"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"image-{self.count}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path


@pytest.fixture
def dciodvfy(tool):
    """``dciodvfy(path)``: fail the test on any line of dciodvfy's report starting "Error"."""
    program = tool("dciodvfy")

    def verify(path: Path) -> pydicom.Dataset:
        result = subprocess.run([program, str(path)], capture_output=True, text=True,
                                timeout=120, check=False)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy found errors in {path.name}:\n{report}"
        return pydicom.dcmread(path)

    return verify


def outbox(site: Site, dciodvfy) -> dict[ResultKind, list[pydicom.Dataset]]:
    """What is queued for the PACS, read back from the files the sender will send."""
    queued: dict[ResultKind, list[pydicom.Dataset]] = {}
    for transfer in site.rows(Transfer):
        [result] = site.rows(ResultObject, ResultObject.id == transfer.result_id)
        ds = dciodvfy(site.store.absolute(result.path))
        assert ds.SOPInstanceUID == result.sop_instance_uid
        queued.setdefault(result.kind, []).append(ds)
    return queued


def referenced(ds: pydicom.Dataset) -> set[str]:
    """The source images a GSPS presents or an SR cites as evidence."""
    if ds.SOPClassUID == GSPS_STORAGE:
        return {image.ReferencedSOPInstanceUID for series in ds.ReferencedSeriesSequence
                for image in series.ReferencedImageSequence}
    return {item.ReferencedSOPInstanceUID
            for study in ds.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence}


def analyse(site: Site) -> Job:
    """One worker pass; the study's job, which must be done after it."""
    assert site.worker.run_once() == 1
    [job] = site.rows(Job)
    assert (job.state, job.attempts, job.error) == (JobState.DONE, 1, None)
    return job


def uids(*paths: Path) -> set[str]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}


@SQLITE_ONLY
def test_images_of_different_sizes_in_one_series_get_every_result(site, tmp_path, dciodvfy):
    """A repeat exposure with other collimation: same series, 320 px then 384 px."""
    study = Study(tmp_path / "in")
    series = generate_uid()
    first, repeat = study.image(series, size=320), study.image(series, size=384)
    site.receive(first, repeat)

    analyse(site)

    queued = outbox(site, dciodvfy)
    assert sorted(queued) == [ResultKind.GSPS, ResultKind.SC, ResultKind.SR]
    [report] = queued[ResultKind.SR]
    assert referenced(report) == uids(first, repeat)
    gsps = queued[ResultKind.GSPS]
    assert sorted(map(referenced, gsps), key=sorted) == sorted(
        [uids(first), uids(repeat)], key=sorted)  # one presentation state per image size
    assert sorted(sc.SourceImageSequence[0].ReferencedSOPInstanceUID
                  for sc in queued[ResultKind.SC]) == sorted(uids(first, repeat))


@SQLITE_ONLY
def test_monochrome1_and_monochrome2_in_one_series_get_every_result(site, tmp_path, dciodvfy):
    study = Study(tmp_path / "in")
    series = generate_uid()
    inverse = study.image(series, size=320, photometric="MONOCHROME1")
    identity = study.image(series, size=320, photometric="MONOCHROME2")
    site.receive(inverse, identity)

    analyse(site)

    queued = outbox(site, dciodvfy)
    assert [len(queued[kind]) for kind in (ResultKind.SR, ResultKind.GSPS, ResultKind.SC)] \
        == [1, 2, 2]
    shapes = {frozenset(referenced(gsps)): gsps.PresentationLUTShape
              for gsps in queued[ResultKind.GSPS]}
    assert shapes == {frozenset(uids(inverse)): "INVERSE", frozenset(uids(identity)): "IDENTITY"}
    assert referenced(queued[ResultKind.SR][0]) == uids(inverse, identity)


@SQLITE_ONLY
def test_pa_lateral_and_ap_in_one_study(site, tmp_path, dciodvfy):
    """PA, lateral and an AP on a CR plate of another size, in one series: the lateral is
    not read (the gate says why), the two frontal views are, each with its own GSPS."""
    study = Study(tmp_path / "in")
    series = generate_uid()
    pa = study.image(series, size=384)
    lateral = study.image(series, size=384, view="LL")
    ap = study.image(series, size=352, photometric="MONOCHROME1", view="AP")
    site.receive(pa, lateral, ap)

    analyse(site)

    analyses = {a.instance_id: a for a in site.rows(ImageAnalysis)}
    assert sorted(a.analysed for a in analyses.values()) == [False, True, True]
    assert "lateral" in next(a.skip_reason for a in analyses.values() if not a.analysed)
    queued = outbox(site, dciodvfy)
    assert [len(queued[kind]) for kind in (ResultKind.SR, ResultKind.GSPS, ResultKind.SC)] \
        == [1, 2, 2]
    assert referenced(queued[ResultKind.SR][0]) == uids(pa, ap)
    assert sorted(map(referenced, queued[ResultKind.GSPS]), key=sorted) == sorted(
        [uids(pa), uids(ap)], key=sorted)
    assert {sc.SourceImageSequence[0].ReferencedSOPInstanceUID
            for sc in queued[ResultKind.SC]} == uids(pa, ap)


@SQLITE_ONLY
def test_objects_that_cannot_be_built_withhold_none_of_the_others(site, tmp_path, dciodvfy,
                                                                  monkeypatch):
    """The GSPS and the findings SR fail to build: the SC still goes out, and the study
    still gets a report, one that says it holds no findings report and why."""
    def broken(name: str):
        def build(*args, **kwargs):
            raise ValueError(f"forced {name} failure")
        return build

    monkeypatch.setattr(reporting, "build_presentation_state", broken("GSPS"))
    monkeypatch.setattr(reporting, "build_measurement_report", broken("SR"))
    study = Study(tmp_path / "in")
    source = study.image(generate_uid(), size=320)
    site.receive(source)

    analyse(site)  # done at the first attempt: building again would fail again

    queued = outbox(site, dciodvfy)
    assert {kind: len(objects) for kind, objects in queued.items()} == {
        ResultKind.NOT_ANALYSED_SR: 1, ResultKind.SC: 1}
    [report] = queued[ResultKind.NOT_ANALYSED_SR]
    assert referenced(report) == uids(source)
    assert "Not analysed: the findings report could not be built: forced SR failure" \
        in text_values(report)
    events = site.rows(AuditEvent, AuditEvent.event_type == "result-not-built")
    assert sorted(event.message.split(" not built: ")[1] for event in events) == [
        "forced GSPS failure", "forced SR failure"]
    assert {event.study_uid for event in events} == {study.uid}
    assert any("GSPS of 1 image of series" in event.message for event in events)


def test_a_job_that_fails_for_good_sends_a_not_analysed_report(tmp_path, database,
                                                               database_url, detector,
                                                               dciodvfy, monkeypatch):
    site = make_site(tmp_path, database, database_url, detector, max_attempts=2)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(site.worker.detector, "predict_prepared", out_of_memory)
    study = Study(tmp_path / "in")
    source = study.image(generate_uid(), size=320)
    site.receive(source)

    assert site.worker.run_once() == 0
    assert site.rows(Transfer) == []  # queued again: nothing is said before the last attempt
    assert site.worker.run_once() == 0

    [job] = site.rows(Job)
    assert job.state == JobState.FAILED
    queued = outbox(site, dciodvfy)
    assert list(queued) == [ResultKind.NOT_ANALYSED_SR]
    [report] = queued[ResultKind.NOT_ANALYSED_SR]
    assert report.StudyInstanceUID == study.uid
    assert referenced(report) == uids(source)
    [text] = [t for t in text_values(report) if t.startswith("Not analysed: ")]
    assert "CUDA error: out of memory" in text and "2 attempts" in text


def test_a_job_whose_workers_died_sends_a_not_analysed_report(tmp_path, database, database_url,
                                                              detector, dciodvfy):
    """A worker killed mid-job (out of memory, say) on the last attempt."""
    site = make_site(tmp_path, database, database_url, detector, max_attempts=1)
    study = Study(tmp_path / "in")
    site.receive(study.image(generate_uid(), size=320))
    assert claim_jobs(site.db, "killed-worker", 60, 1, 1)
    with site.db.session() as session:
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    assert site.worker.prepare() == []

    [job] = site.rows(Job)
    assert job.state == JobState.FAILED
    [report] = outbox(site, dciodvfy)[ResultKind.NOT_ANALYSED_SR]
    [text] = [t for t in text_values(report) if t.startswith("Not analysed: ")]
    assert "killed-worker" in text
