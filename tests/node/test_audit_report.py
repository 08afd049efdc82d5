"""The audit report on a small, known history: the figures an admin would check, and a page
that opens with no network."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from node.audit_report import REPORT_HTML, REPORT_JSON, write_audit_report
from storage.models import AuditEvent, ModelState, ResultObject, Study, Transfer
from tests.training.test_tracking import NOW, History

PTX = "Pneumothorax"
LABELS = ("Pneumothorax", "Nodule")
SINCE, UNTIL = NOW - timedelta(days=14), NOW + timedelta(days=1)
SKIP = "BodyPartExamined is HAND, not CHEST"
DEAD_ERROR = "association rejected <b>0x0003</b>"


def sr_transfer(session, study: Study, job_id: int, destination: str, *,  # noqa: ANN001
                state: str, attempts: int, sent_at: datetime | None = None,
                error: str | None = None) -> Transfer:
    result = session.scalar(select(ResultObject).where(ResultObject.job_id == job_id))
    if result is None:
        result = ResultObject(job_id=job_id, study_id=study.id, kind="sr",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                              sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                              series_instance_uid=f"2.25.{uuid.uuid4().int}", path="results/x")
    transfer = Transfer(result=result, destination=destination, state=state, attempts=attempts,
                        queued_at=study.completed_at, sent_at=sent_at, last_error=error,
                        last_attempt_at=sent_at or study.completed_at)
    session.add(transfer)
    session.flush()
    return transfer


def audit_row(session, at: datetime, event_id: str, event_type: str,  # noqa: ANN001
              message: str, calling: str | None = None) -> None:
    session.add(AuditEvent(occurred_at=at, event_id=event_id, event_type=event_type, outcome=4,
                           calling_ae_title=calling, message=message))


@pytest.fixture
def history(database):
    """Four studies in the period (one skipped entirely), one before it, two model versions."""
    with database.session() as session:
        h = History(session)
        ptx = {PTX: {"sensitivity": 0.9, "specificity": 0.8}}
        h.version("1.0.0", activated_at=NOW - timedelta(days=100),
                  retired_at=NOW - timedelta(days=7),
                  test_metrics={"gate_passed": True, "candidate": {"per_finding": ptx}})
        h.version("1.1.0", state=ModelState.ACTIVE, activated_at=NOW - timedelta(days=7),
                  test_metrics={"gate_passed": True, "candidate": {"per_finding": {
                      PTX: {"sensitivity": 0.95, "specificity": 0.85}}}})
        h.version("1.2.0", state=ModelState.CANDIDATE, created_at=NOW - timedelta(days=2),
                  test_metrics={"gate_passed": False, "candidate": {"per_finding": ptx}},
                  gate_report="promotion gate refused:\n- Pneumothorax sensitivity: 0.700 vs "
                              "active 0.950 (lower by more than 0.05)")
        audit_row(session, NOW - timedelta(days=7), "110100", "model-promoted",
                  "cxr-effdet 1.1.0 active (was cxr-effdet 1.0.0): passed the promotion gate")

        start = NOW - timedelta(days=10)
        s1 = h.study(2, received_at=start, completed_at=start + timedelta(seconds=60))
        job1 = h.job(s1, version="1.0.0", called=[PTX], skip_reasons=[SKIP],
                     finished_at=s1.completed_at + timedelta(seconds=30))
        h.labels(s1, [PTX], at=NOW - timedelta(days=9))
        sr_transfer(session, s1, job1.id, "PACS", state="sent", attempts=2,
                    sent_at=s1.completed_at + timedelta(seconds=90))
        sr_transfer(session, s1, job1.id, "VIEWER", state="dead", attempts=5, error=DEAD_ERROR)

        start = NOW - timedelta(days=3)
        s2 = h.study(received_at=start, completed_at=start + timedelta(seconds=60))
        job2 = h.job(s2, version="1.1.0", finished_at=s2.completed_at + timedelta(seconds=120))
        h.labels(s2, [], at=NOW - timedelta(days=2))  # normal, and not called: specificity 1
        sr_transfer(session, s2, job2.id, "PACS", state="sent", attempts=1,
                    sent_at=s2.completed_at + timedelta(seconds=300))

        s3 = h.study(received_at=NOW - timedelta(days=2))
        h.job(s3, version="1.1.0", finished_at=NOW - timedelta(days=2))
        h.labels(s3, [PTX], at=NOW - timedelta(days=1))  # missed: sensitivity 0

        s4 = h.study(received_at=NOW - timedelta(days=1))
        h.job(s4, skip_reasons=[SKIP], finished_at=NOW - timedelta(days=1))

        old = h.study(received_at=NOW - timedelta(days=30))
        h.job(old, version="1.0.0", called=[PTX, "Nodule"], finished_at=NOW - timedelta(days=30))

        audit_row(session, NOW - timedelta(days=1), "110113", "association-rejected",
                  "association rejected (calling AE title not recognised)", "EVIL<script>")
        audit_row(session, NOW - timedelta(days=1), "110100", "association-rejected",
                  "association rejected (local limit exceeded)", "MODALITY2")
        audit_row(session, NOW - timedelta(hours=5), "110113", "tls-handshake-failed",
                  "TLS handshake failed")
        audit_row(session, NOW - timedelta(days=40), "110113", "association-rejected",
                  "before the period", "OLD")
    return database


def test_report_figures(history, tmp_path):
    report = write_audit_report(history, SINCE, UNTIL, tmp_path, LABELS)

    assert json.loads((tmp_path / REPORT_JSON).read_text()) == report
    assert report["period"] == {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    studies = report["studies"]
    assert (studies["received"], studies["analysed"], studies["skipped"]) == (4, 3, 1)
    assert studies["skip_reasons"] == {SKIP: 2}

    assert report["latency_s"]["completion_to_sr_sent"] == {
        "count": 2, "p50": 195.0, "p95": pytest.approx(289.5), "max": 300.0}
    assert report["latency_s"]["completion_to_job_finished"]["max"] == 120.0

    transfers = report["transfers"]
    assert (transfers["sent"], transfers["pending"], transfers["dead"]) == (2, 0, 1)
    assert transfers["failed_attempts"] == 6  # 1 before the PACS took it, 5 to the viewer
    [dead] = transfers["dead_letters"]
    assert (dead["destination"], dead["last_error"], dead["kind"]) == ("VIEWER", DEAD_ERROR, "sr")

    findings = report["findings"]
    assert findings["analysed_studies"] == 3
    assert findings["per_finding"][PTX] == {"studies": 1, "share": pytest.approx(1 / 3)}
    assert findings["per_finding"]["Nodule"]["studies"] == 0  # only before the period

    security = report["security"]
    assert security["events"] == 3
    assert security["by_event_type"] == {"association-rejected": 2, "tls-handshake-failed": 1}
    assert security["by_calling_ae_title"] == {"EVIL<script>": 1, "MODALITY2": 1, "(none)": 1}
    assert security["last"][0]["event_type"] == "tls-handshake-failed"  # newest first

    models = report["models"]
    assert sorted(v["version"] for v in models["active"]) == ["1.0.0", "1.1.0"]
    assert len(models["promotions"]) == 1 and models["rollbacks"] == []
    assert [v["version"] for v in models["refused_candidates"]] == ["1.2.0"]

    performance = {row["version"]: row for row in report["performance"]}
    assert set(performance) == {"1.0.0", "1.1.0"}
    old, new = performance["1.0.0"]["per_finding"][PTX], performance["1.1.0"]["per_finding"][PTX]
    assert (old["positives"], old["sensitivity"]) == (1, 1.0)
    assert (new["positives"], new["sensitivity"], new["specificity"]) == (1, 0.0, 1.0)
    assert performance["1.1.0"]["test_set"][PTX] == {"sensitivity": 0.95, "specificity": 0.85}
    weekly = performance["1.1.0"]["weekly"]
    assert len(weekly) == 3 and sum(week["studies"] for week in weekly) == 2


def test_html_is_self_contained_and_shows_the_figures(history, tmp_path):
    write_audit_report(history, SINCE, UNTIL, tmp_path, LABELS)

    page = (tmp_path / REPORT_HTML).read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    for text in (SKIP, "VIEWER", "&lt;b&gt;0x0003&lt;/b&gt;", "EVIL&lt;script&gt;", "1.1.0",
                 "1.2.0", "promotion gate refused", "0.333", "195.0", PTX):
        assert text in page, text
    assert "<script>" not in page and "<b>0x0003" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert {"prevalence.png", "skip-reasons.png", "performance-pneumothorax.png"} <= set(sources)
    for source in sources:  # files beside the page, nothing to fetch
        assert re.fullmatch(r"[\w.-]+\.png", source), source
        assert (tmp_path / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_period_gives_zeros_and_no_charts(database, tmp_path):
    report = write_audit_report(database, SINCE, UNTIL, tmp_path / "empty", LABELS)

    assert report["studies"]["received"] == 0
    assert report["latency_s"]["completion_to_sr_sent"]["p50"] is None
    assert report["findings"]["per_finding"][PTX]["share"] is None
    assert report["performance"] == []
    assert "<img" not in (tmp_path / "empty" / REPORT_HTML).read_text()
    assert list((tmp_path / "empty").glob("*.png")) == []


def test_bad_period_is_refused(database, tmp_path):
    with pytest.raises(ValueError, match="before"):
        write_audit_report(database, UNTIL, SINCE, tmp_path, LABELS)
    with pytest.raises(TypeError, match="since"):
        write_audit_report(database, "2030-01-01", UNTIL, tmp_path, LABELS)
