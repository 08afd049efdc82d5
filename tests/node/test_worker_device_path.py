"""The worker on the GPU's path (torch preprocessing, run on the CPU device), and its
``worker.compile`` setting.

A small untrained model with thresholds near its prior (about 0.01) stands in for the
bundled one, so that findings are stored and the study takes seconds.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from model.detector import Detector, Preprocessing
from model.vocabulary import DEFAULT_FINDINGS
from node.worker import Worker
from storage.models import FindingRecord, ImageAnalysis, Job, JobState
from tests.factories import write_chest
from tests.model.conftest import write_model
from tests.node.test_worker import Site, node_settings

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
THRESHOLDS = dict(zip([f.label for f in DEFAULT_FINDINGS],
                      (0.009, 0.0105, 0.01, 0.0095, 0.011, 0.0098, 0.0102), strict=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("device-path") / "model"
    write_model(directory, thresholds=THRESHOLDS)
    return directory


@SQLITE_ONLY
def test_a_study_read_on_the_device_path_stores_what_the_numpy_path_finds(
        tmp_path, database, database_url, model_dir):
    detector = Detector.load(model_dir, device="cpu", preprocessing=Preprocessing.TORCH)
    site = Site(node_settings(tmp_path, database_url), database, detector)
    path = write_chest(tmp_path / "in", 3, 1)
    source = pydicom.dcmread(path)
    flat = pydicom.dcmread(path)  # a blank plate in the same series: no contrast
    flat.SOPInstanceUID = flat.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    flat.PixelData = np.full((flat.Rows, flat.Columns), 700, np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in flat:
            delattr(flat, keyword)
    flat.save_as(tmp_path / "in" / "flat.dcm", enforce_file_format=True)
    site.receive(path, tmp_path / "in" / "flat.dcm")

    assert site.worker.run_once() == 1

    [job] = site.rows(Job)
    assert job.state == JobState.DONE
    analyses = {a.instance_id: a for a in site.rows(ImageAnalysis)}
    read, blank = sorted(analyses.values(), key=lambda a: a.instance_id)
    assert read.analysed and not blank.analysed
    assert blank.skip_reason.startswith("pixel data not usable: PixelData has no contrast")
    expected = Detector.load(model_dir, device="cpu").predict([source])[0]
    assert expected, "thresholds near the prior let findings through"
    stored = site.rows(FindingRecord)
    assert [(f.label, round(f.score, 5)) for f in stored] == \
        [(d.label, round(d.score, 5)) for d in expected]
    assert {f.instance_id for f in stored} == {read.instance_id}


@pytest.mark.parametrize(("device", "setting", "compiled"),
                         [("cpu", None, False), ("cpu", True, True), ("cpu", False, False)])
def test_compile_setting_defaults_to_off_on_the_cpu_and_builds_one_and_a_full_batch(
        tmp_path, model_dir, monkeypatch, device, setting, compiled):
    detector = Detector.load(model_dir, device=device)
    calls = []
    monkeypatch.setattr(detector, "compile", lambda sizes: calls.append(sizes) or True)
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'node.sqlite3'}",
                             worker={"device": device, "compile": setting,
                                     "images_per_batch": 12})
    worker = Worker(settings, db=None, store=None, detector=detector)

    worker.warm_up()

    assert worker.compile_network is compiled
    assert calls == ([[1, 12]] if compiled else [])


def test_compile_defaults_to_on_for_cuda(tmp_path, model_dir, monkeypatch):
    detector = Detector.load(model_dir, device="cpu")
    monkeypatch.setattr(detector, "device", detector.device.__class__("cuda"))
    settings = node_settings(tmp_path, "sqlite://", worker={"device": "cpu"})
    assert Worker(settings, db=None, store=None, detector=detector).compile_network
