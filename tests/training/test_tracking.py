"""Production sensitivity/specificity per model version, on hand-made rows with known answers."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from model import BUNDLED_MODEL
from storage.models import (
    AuditEvent,
    FindingRecord,
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    Label,
    LabelBatch,
    ModelState,
    ModelVersion,
    Series,
    Study,
)
from training.metrics import wilson_interval
from training.tracking import (
    ALERT_EVENT_TYPE,
    check_performance,
    held_out_figures,
    production_figures,
)

NOW = datetime(2030, 6, 30, 12, 0, 0)
PTX = "Pneumothorax"
LABELS = ("Pneumothorax", "Nodule", "Mass")


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


class History:
    """Rows as the node writes them: studies, jobs, image analyses, findings, labels."""

    def __init__(self, session) -> None:  # noqa: ANN001 - Session
        self.session = session
        self.images: dict[int, list[Instance]] = {}

    def study(self, images: int = 1, *, received_at: datetime = NOW,
              completed_at: datetime | None = None, calling: str = "MODALITY") -> Study:
        study = Study(study_uid=_uid(), patient_id=f"P{uuid.uuid4().hex[:8]}",
                      state="complete", first_received_at=received_at,
                      last_instance_at=received_at, completed_at=completed_at)
        series = Series(study=study, series_uid=_uid(), modality="DX")
        instances = [Instance(series=series, sop_instance_uid=_uid(),
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                              transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{_uid()}.dcm",
                              size_bytes=1000, sha256="0" * 64, calling_ae_title=calling,
                              received_at=received_at) for _ in range(images)]
        self.session.add_all([study, series, *instances])
        self.session.flush()
        self.images[study.id] = instances
        return study

    def job(self, study: Study, *, version: str = "1.0.0", called: Iterable[str] = (),
            finished_at: datetime = NOW, state: JobState = JobState.DONE,
            skip_reasons: Iterable[str | None] = ()) -> Job:
        """A job that read the study's first image (and skipped the next ones, one reason each)."""
        generation = 1 + len(self.session.scalars(
            select(Job.id).where(Job.study_id == study.id)).all())
        job = Job(study_id=study.id, study_generation=generation, state=state,
                  created_at=finished_at, finished_at=finished_at)
        self.session.add(job)
        self.session.flush()
        images = self.images[study.id]
        reasons = list(skip_reasons)
        analysed = images[:len(images) - len(reasons)]
        for image in analysed:
            self.session.add(ImageAnalysis(job_id=job.id, instance_id=image.id, analysed=True,
                                           model_version=version))
        for image, reason in zip(images[len(analysed):], reasons, strict=True):
            self.session.add(ImageAnalysis(job_id=job.id, instance_id=image.id, analysed=False,
                                           skip_reason=reason))
        for label in called:
            self.session.add(FindingRecord(
                job_id=job.id, instance_id=analysed[0].id, label=label, code_scheme="SCT",
                code_value="0", code_meaning=label, score=0.9, x1=1, y1=1, x2=9, y2=9,
                model_name="cxr-effdet", model_version=version, created_at=finished_at))
        self.session.flush()
        return job

    def labels(self, study: Study, truth: Iterable[str], *, at: datetime,
               superseded_at: datetime | None = None) -> LabelBatch:
        """A radiologist's labelling; no finding given means "reviewed normal"."""
        batch = LabelBatch(study_id=study.id, source="sr", labeller="Dr Reader",
                           source_reference=_uid(), created_at=at, superseded_at=superseded_at)
        image = self.images[study.id][0]
        rows = [Label(batch=batch, instance_id=image.id, label=label) for label in truth]
        self.session.add_all([batch, *(rows or [Label(batch=batch, instance_id=image.id,
                                                      normal=True)])])
        self.session.flush()
        return batch

    def case(self, truth: Iterable[str] | None, called: Iterable[str] = (), *,
             labelled_at: datetime = NOW - timedelta(days=5), version: str = "1.0.0") -> Study:
        """A study read by ``version`` and (unless ``truth`` is None) labelled."""
        study = self.study()
        self.job(study, version=version, called=called, finished_at=labelled_at
                 - timedelta(hours=1))
        if truth is not None:
            self.labels(study, truth, at=labelled_at)
        return study

    def version(self, version: str, *, test_metrics: dict | None = None,
                path: str = "/nonexistent/model", state: ModelState = ModelState.RETIRED,
                activated_at: datetime | None = None,
                retired_at: datetime | None = None, gate_report: str | None = None,
                created_at: datetime = NOW - timedelta(days=100)) -> ModelVersion:
        row = ModelVersion(name="cxr-effdet", version=version, state=state, path=path,
                           weights_sha256="0" * 64,
                           test_metrics=json.dumps(test_metrics) if test_metrics else None,
                           activated_at=activated_at, retired_at=retired_at,
                           gate_report=gate_report, created_at=created_at)
        self.session.add(row)
        self.session.flush()
        return row


def registry_metrics(per_finding: dict) -> dict:
    return {"test_images": 50, "gate_passed": True, "candidate": {"per_finding": per_finding}}


def by_window(figures: list[dict], version: str = "1.0.0") -> dict:
    return {row["window_days"]: row for row in figures if row["version"] == version}


def test_known_answers_over_rolling_windows(database):
    with database.session() as session:
        history = History(session)
        history.version("1.0.0")
        for called in (True, True, True, False):
            history.case([PTX], [PTX] if called else [])
        history.case([], [PTX])  # normal study, false call
        history.case([], [])
        history.case(None, [PTX])  # unlabelled: does not count
        history.case([PTX], [], labelled_at=NOW - timedelta(days=40))  # outside 30 days
        # Superseded "Pneumothorax"; the current labelling says Nodule, which was called.
        changed = history.case(["Nodule"], ["Nodule"])
        history.labels(changed, [PTX], at=NOW - timedelta(days=6),
                       superseded_at=NOW - timedelta(days=5))
        failed = history.study()  # a failed job reads nothing
        history.job(failed, called=[PTX], state=JobState.FAILED)
        history.labels(failed, [], at=NOW - timedelta(days=1))

    with database.session() as session:
        figures = by_window(production_figures(session, LABELS, (30, 90, None), now=NOW))

    month = figures[30]
    assert (month["studies"], month["name"]) == (7, "cxr-effdet")
    ptx = month["per_finding"][PTX]
    assert (ptx["positives"], ptx["tp"], ptx["negatives"], ptx["tn"]) == (4, 3, 3, 2)
    assert ptx["sensitivity"] == 0.75
    assert ptx["specificity"] == pytest.approx(2 / 3)
    assert ptx["sensitivity_ci"] == pytest.approx(list(wilson_interval(3, 4)))
    assert ptx["specificity_ci"] == pytest.approx(list(wilson_interval(2, 3)))
    nodule = month["per_finding"]["Nodule"]
    assert (nodule["positives"], nodule["tp"], nodule["negatives"], nodule["fp"]) == (1, 1, 6, 0)
    mass = month["per_finding"]["Mass"]
    assert mass["sensitivity"] is None and mass["sensitivity_ci"] is None
    assert mass["specificity"] == 1.0

    quarter = figures[90]["per_finding"][PTX]
    assert (quarter["positives"], quarter["tp"], quarter["sensitivity"]) == (5, 3, 0.6)
    assert figures[None]["studies"] == 8


def test_normal_studies_alone_give_specificity_half(database):
    with database.session() as session:
        history = History(session)
        history.case([], [PTX])
        history.case([], [])

    with database.session() as session:
        [row] = production_figures(session, [PTX], (None,), now=NOW)
    figures = row["per_finding"][PTX]
    assert (figures["specificity"], figures["negatives"], figures["fp"]) == (0.5, 2, 1)
    assert figures["sensitivity"] is None
    assert row["name"] is None and row["model_version_ids"] == []  # not in the registry


def test_latest_done_job_per_study_and_version_counts(database):
    with database.session() as session:
        history = History(session)
        study = history.study()
        history.job(study, version="1.0.0", called=[PTX], finished_at=NOW - timedelta(days=3))
        history.job(study, version="1.0.0", called=[], finished_at=NOW - timedelta(days=2))
        history.job(study, version="1.1.0", called=[PTX], finished_at=NOW - timedelta(days=1))
        history.labels(study, [PTX], at=NOW - timedelta(hours=1))

    with database.session() as session:
        figures = production_figures(session, [PTX], (30,), now=NOW)

    tps = {row["version"]: (row["per_finding"][PTX]["tp"], row["per_finding"][PTX]["positives"])
           for row in figures}
    assert tps == {"1.0.0": (0, 1), "1.1.0": (1, 1)}


def test_bad_arguments_are_refused(database):
    with database.session() as session:
        with pytest.raises(ValueError, match="window"):
            production_figures(session, [PTX], (0,), now=NOW)
        with pytest.raises(TypeError, match="labels"):
            production_figures(session, PTX, now=NOW)
    with pytest.raises(ValueError, match="margin"):
        check_performance(database, [PTX], margin=-1)


def _drifted_history(session, metrics: dict | None) -> None:  # noqa: ANN001 - Session
    history = History(session)
    history.version("2.0.0", test_metrics=metrics)
    for index in range(10):  # sensitivity 0.6 on 10 positive studies
        history.case([PTX], [PTX] if index < 6 else [], version="2.0.0")
    for index in range(10):  # specificity 0.9 on 10 normal studies
        history.case([], [PTX] if index == 0 else [], version="2.0.0")


def alerts(database) -> list[AuditEvent]:  # noqa: ANN001 - the fixture
    with database.session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == ALERT_EVENT_TYPE).order_by(AuditEvent.id)))


def test_drop_below_test_set_is_alerted_once_a_day(database):
    with database.session() as session:
        _drifted_history(session, registry_metrics({PTX: {"sensitivity": 0.95,
                                                          "specificity": 0.92}}))

    messages = check_performance(database, [PTX], margin=0.1, min_cases=10, now=NOW)

    assert len(messages) == 1  # specificity 0.9 is within 0.1 of 0.92
    [message] = messages
    for text in ("cxr-effdet 2.0.0", PTX, "sensitivity", "0.600", "0.950", "last 30 days",
                 "10 studies", "95% CI"):
        assert text in message
    [event] = alerts(database)
    assert (event.event_id, event.outcome, event.message) == ("110100", 8, message)

    assert check_performance(database, [PTX], now=NOW + timedelta(hours=3)) == []
    assert len(alerts(database)) == 1
    assert len(check_performance(database, [PTX], now=NOW + timedelta(days=1))) == 1
    assert len(alerts(database)) == 2


def test_too_few_cases_or_no_test_figures_raise_no_alert(database):
    with database.session() as session:
        _drifted_history(session, registry_metrics({PTX: {"sensitivity": 0.95}}))
        History(session).version("3.0.0")  # neither test_metrics nor a readable card

    assert check_performance(database, [PTX], min_cases=11, now=NOW) == []
    assert alerts(database) == []


def test_card_metrics_are_the_fallback_test_set_figures(database):
    card = json.loads((BUNDLED_MODEL / "card.json").read_text())
    expected = card["metrics"]["held_out_synthetic"]["values"]["per_finding"][PTX]
    with database.session() as session:
        history = History(session)
        bundled = history.version("0.9.0", path=str(BUNDLED_MODEL))
        missing = history.version("0.9.1")
        broken = history.version("0.9.2",
                                 test_metrics=registry_metrics({PTX: {"sensitivity": 0.7}}))
        figures = held_out_figures(bundled), held_out_figures(missing), held_out_figures(broken)

    assert figures[0][PTX] == {"sensitivity": expected["sensitivity"],
                               "specificity": expected["specificity"]}
    assert figures[1] == {}
    assert figures[2] == {PTX: {"sensitivity": 0.7}}
    assert all(not math.isnan(v) for row in figures[0].values() for v in row.values())
