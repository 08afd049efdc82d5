"""The console's Studies pages, read as a person reads them (a real uvicorn, urllib).

Rows are put in the test's own SQLite database; what the page shows is checked against
them, and what "Analyse again" did against the job queue and the audit trail.
"""

from __future__ import annotations

import re
import urllib.parse

from sqlalchemy import func, select

from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.models import (
    FindingRecord,
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Series,
    Study,
    StudyState,
    Transfer,
    TransferState,
)
from tests.integration.console import Browser, Console, text_of

ROOT = "1.2.826.0.1.3680043.10.9999"
SKIP_REASON = "view position LL is not PA or AP"



def _add_study(db: Database, n: int, patient_id: str, *, accession: str = "",
               study_date: str = "20260115", patient_name: str | None = None) -> str:
    """A complete study of two images, one read (one finding) and one skipped by the gate."""
    uid = f"{ROOT}.{n}"
    with db.session() as session:
        study = Study(study_uid=uid, patient_id=patient_id, accession_number=accession or None,
                      patient_name=patient_name, study_date=study_date,
                      state=StudyState.COMPLETE)
        series = Series(study=study, series_uid=f"{uid}.1", modality="DX", series_number=1)
        read, skipped = (Instance(series=series, sop_instance_uid=f"{uid}.1.{i}",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                                  transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}/{i}",
                                  size_bytes=1000 + i, sha256="0" * 64) for i in (1, 2))
        session.add_all([study, read, skipped])
        session.flush()
        job = Job(study_id=study.id, study_generation=1, state=JobState.DONE)
        session.add(job)
        session.flush()
        session.add_all([
            ImageAnalysis(job_id=job.id, instance_id=read.id, analysed=True),
            ImageAnalysis(job_id=job.id, instance_id=skipped.id, analysed=False,
                          skip_reason=SKIP_REASON),
            FindingRecord(job_id=job.id, instance_id=read.id, label="nodule",
                          code_scheme="SCT", code_value="27925004", code_meaning="Nodule",
                          score=0.87, x1=10, y1=20, x2=110, y2=140, model_name="cxr-det",
                          model_version="1.0"),
        ])
        result = ResultObject(job_id=job.id, study_id=study.id, kind=ResultKind.SR,
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                              sop_instance_uid=f"{uid}.99", series_instance_uid=f"{uid}.98",
                              path="r")
        session.add(result)
        session.add(Transfer(result=result, destination="pacs", state=TransferState.DEAD,
                             last_error="association rejected"))
        record(session, AuditEventId.INSTANCES_ACCESSED, "instances-analysed", Outcome.SUCCESS,
               "2 images read by the detector", study_uid=uid)
    return uid


def _jobs(db: Database, uid: str) -> int:
    with db.session() as session:
        return session.scalar(select(func.count(Job.id)).join(Study)
                              .where(Study.study_uid == uid))


def test_search_by_patient_id_finds_one_study_and_not_the_other(console: Console):
    console.add_user("vera", "viewer")
    _add_study(console.db, 1, "PAT-1001", accession="ACC1")
    _add_study(console.db, 2, "PAT-2002", accession="ACC2")
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    found = browser.get("/console/studies?patient_id=1001&state=").body
    listed = text_of(found, "study-list")
    by_state = browser.get("/console/studies?state=analysed").body
    none = browser.get("/console/studies?state=failed").body
    bad_date = browser.get("/console/studies?date_from=15.01.2026")

    assert "PAT-1001" in listed and "ACC1" in listed and "2026-01-15" in listed
    assert "PAT-2002" not in found
    assert f'href="/console/studies/{ROOT}.1"' in found
    assert re.search(r"<td>2</td>\s*<td>analysed</td>\s*<td>1</td>", found)  # images, findings
    assert "PAT-1001" in by_state and "PAT-2002" in by_state
    assert text_of(none, "no-studies") == "No study matches."
    assert bad_date.status == 400 and "date_from" in bad_date.body


def test_search_by_name_matches_every_word_typed_in_any_order(console: Console):
    console.add_user("vera", "viewer")
    _add_study(console.db, 1, "PAT-1", patient_name="DOE^JOHN^PAUL")
    _add_study(console.db, 2, "PAT-2", patient_name="DOE^JANE")
    _add_study(console.db, 3, "PAT-3", patient_name="JOHNSON^ANN")
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    def found(name: str) -> str:
        page = browser.get(f"/console/studies?patient_name={urllib.parse.quote(name)}").body
        return text_of(page, "study-list") if 'id="study-list"' in page else ""

    assert "DOE, JOHN PAUL" in found("doe") and "DOE, JANE" in found("doe")
    assert "JOHNSON" not in found("doe")
    both_words = found("john doe")
    assert "PAT-1" in both_words and "PAT-2" not in both_words and "PAT-3" not in both_words
    assert "PAT-1" in found("Doe, John") and "PAT-3" in found("john")
    assert found("100%") == ""  # % is a character to match, not a wildcard
    page = browser.get(f"/console/studies/{ROOT}.1").body
    assert text_of(page, "patient-name") == "DOE, JOHN PAUL"


def test_study_page_shows_its_finding_and_the_gates_skip_reason(console: Console):
    console.add_user("vera", "viewer")
    uid = _add_study(console.db, 1, "PAT-1001")
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    page = browser.get(f"/console/studies/{uid}")
    unknown = browser.get(f"/console/studies/{ROOT}.404")

    assert page.status == 200
    instances = text_of(page.body, "instances")
    assert f"{uid}.1.1" in instances and f"skipped : {SKIP_REASON}" in instances
    findings = text_of(page.body, "findings")
    assert "nodule (Nodule) 0.870 10.0, 20.0, 110.0, 140.0" in findings
    assert "pacs: dead" in text_of(page.body, "results")
    assert "110103 instances-analysed" in text_of(page.body, "audit")
    assert "Analyse again" not in page.body  # a viewer has no such button
    assert unknown.status == 404 and "No such study" in unknown.body


def test_viewer_may_not_analyse_again_and_operator_queues_one_job(console: Console):
    console.add_user("vera", "viewer")
    console.add_user("olga", "operator")
    uid = _add_study(console.db, 1, "PAT-1001")
    viewer, operator = Browser(console.base), Browser(console.base)
    viewer_csrf = viewer.logged_in_as("vera", "viewer")
    operator.logged_in_as("olga", "operator")
    csrf = operator.csrf(f"/console/studies/{uid}")

    refused = viewer.post(f"/console/studies/{uid}/analyse", {"csrf_token": viewer_csrf})
    after_refusal = _jobs(console.db, uid)
    no_token = operator.post(f"/console/studies/{uid}/analyse", {})
    queued = operator.post(f"/console/studies/{uid}/analyse", {"csrf_token": csrf})
    again = operator.post(f"/console/studies/{uid}/analyse", {"csrf_token": csrf})

    assert refused.status == 403 and "needs the operator role" in refused.body
    assert after_refusal == 1
    assert no_token.status == 403
    assert queued.status == 303 and queued.location.startswith(f"/console/studies/{uid}")
    assert again.status == 409  # the new job is still queued: not a second one
    with console.db.session() as session:
        jobs = session.execute(select(Job.study_generation, Job.state).join(Study)
                               .where(Study.study_uid == uid).order_by(Job.id)).all()
        generation = session.scalar(select(Study.generation).where(Study.study_uid == uid))
    assert jobs == [(1, JobState.DONE), (2, JobState.QUEUED)] and generation == 2
    [audited] = console.audit("study-requeued")
    assert (audited.event_id, audited.user_name, audited.study_uid, audited.peer_address) == (
        "110100", "olga", uid, "127.0.0.1")
    assert "queued" in text_of(operator.get(f"/console/studies/{uid}").body, "state")


def test_a_patient_id_with_markup_is_shown_escaped(console: Console):
    console.add_user("vera", "viewer")
    uid = _add_study(console.db, 1, "<script>alert(1)</script>")
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    listed = browser.get("/console/studies").body
    page = browser.get(f"/console/studies/{uid}").body

    for body in (listed, page):
        assert "<script>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_preview_serves_only_this_studys_secondary_capture(console: Console):
    """The SR of a study is no picture (404), an SC whose file is gone says so (410), and
    without a login nothing is served; the browser test sees a real one drawn."""
    console.add_user("vera", "viewer")
    uid = _add_study(console.db, 1, "PAT-1")
    with console.db.session() as session:
        job_id = session.scalar(select(Job.id).join(Study).where(Study.study_uid == uid))
        study_id = session.scalar(select(Study.id).where(Study.study_uid == uid))
        session.add(ResultObject(job_id=job_id, study_id=study_id, kind=ResultKind.SC,
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                                 sop_instance_uid=f"{uid}.97", series_instance_uid=f"{uid}.96",
                                 path="results/gone.dcm"))
    anonymous = Browser(console.base).get(f"/console/studies/{uid}/preview/{uid}.97.png")
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    sr = browser.get(f"/console/studies/{uid}/preview/{uid}.99.png")
    gone = browser.get(f"/console/studies/{uid}/preview/{uid}.97.png")
    other_study = browser.get(f"/console/studies/{ROOT}.2/preview/{uid}.97.png")
    page = browser.get(f"/console/studies/{uid}").body

    assert anonymous.status == 303 and anonymous.location.startswith("/login")
    assert sr.status == 404 and other_study.status == 404
    assert gone.status == 410 and "gone.dcm: the file is no longer on disk" in gone.body
    assert f'src="/console/studies/{uid}/preview/{uid}.97.png"' in page
